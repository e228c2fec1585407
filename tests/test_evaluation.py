"""A policy in a run directory: saved with Orbax, restored exactly from config.json, evaluated, filmed."""

from __future__ import annotations

import builtins
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.evaluation import config_from_json, evaluate_run, load_policy, record_video, save_policy
from emote_jax.networks.sac import GaussianPolicy
from emote_jax.train import SACConfig


def make_run_dir(path, env_id="Pendulum-v1", obs_dim=3, n_actions=1, hidden=(8, 8), seed=3):
    """A run directory as train_sac leaves it: config.json and policy/ (random parameters)."""
    cfg = SACConfig(env_id=env_id, hidden_dims=hidden, seed=seed, run_dir=str(path))
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg.to_json()))
    params = GaussianPolicy(n_actions, hidden).init(jax.random.key(seed), jnp.zeros((1, obs_dim)))
    save_policy(path, params)
    return cfg, params


def test_config_round_trips_through_json_with_tuples_back():
    cfg = SACConfig(hidden_dims=(32, 16), q_hidden_dims=(8,), env_kwargs={"g": 9.0})
    back = config_from_json(json.loads(json.dumps(cfg.to_json())))
    assert back == cfg and isinstance(back.hidden_dims, tuple) and isinstance(back.q_hidden_dims, tuple)
    assert config_from_json({"env_id": "X", "a_field_from_the_future": 1}).env_id == "X"
    with pytest.raises(TypeError, match="expected config.json to hold a JSON object, got list"):
        config_from_json([1])


def test_the_saved_policy_is_restored_exactly_from_the_config(tmp_path):
    _, params = make_run_dir(tmp_path / "run")
    loaded = load_policy(tmp_path / "run")
    assert loaded.config.hidden_dims == (8, 8)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params)
    assert jax.tree.structure(loaded.params) == jax.tree.structure(params)


def test_loading_explains_what_is_missing_or_does_not_fit(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json .*written by emote-jax train"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SACConfig(env_id="Pendulum-v1").to_json()))
    with pytest.raises(FileNotFoundError, match="expected a trained policy in .*policy"):
        load_policy(tmp_path)
    make_run_dir(tmp_path / "other", hidden=(8, 8))
    cfg = json.loads((tmp_path / "other" / "config.json").read_text())
    cfg["hidden_dims"] = [16, 16]  # the config no longer describes the saved network
    (tmp_path / "other" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"does not fit the network built from .*hidden_dims=\(16, 16\)"):
        load_policy(tmp_path / "other")


def test_evaluation_is_deterministic_and_reports_mean_and_spread(tmp_path, capsys):
    make_run_dir(tmp_path / "run")
    a = evaluate_run(tmp_path / "run", episodes=3)
    b = evaluate_run(tmp_path / "run", episodes=3, out=None)
    assert a["returns"] == b["returns"] and len(a["returns"]) == 3
    assert a["seed"] == 3 + 10_000
    assert a["mean"] == pytest.approx(np.mean(a["returns"])) and a["std"] == pytest.approx(np.std(a["returns"]))
    assert all(-2000 < r < 0 for r in a["returns"])  # Pendulum: 200 steps of cost in [0, 16.3]
    out = capsys.readouterr().out
    assert f"mean return {a['mean']:.2f} (std {a['std']:.2f}" in out
    with pytest.raises(ValueError, match="expected episodes >= 1, got 0"):
        evaluate_run(tmp_path / "run", episodes=0)


def test_an_env_without_rgb_array_is_skipped_with_a_reason(tmp_path):
    make_run_dir(tmp_path / "run", env_id="HitTheMiddle-v0", obs_dim=2)
    result = evaluate_run(tmp_path / "run", episodes=1, video_dir=tmp_path / "video", out=None)
    assert result["videos"] == []
    assert result["video_skipped"] == (
        "HitTheMiddle-v0 cannot render frames (its render modes are [], expected 'rgb_array')")


def test_without_moviepy_the_video_is_skipped_with_a_reason(tmp_path, monkeypatch):
    make_run_dir(tmp_path / "run")
    real_import = builtins.__import__

    def no_moviepy(name, *args, **kwargs):
        if name == "moviepy" or name.startswith("moviepy."):
            raise ImportError("No module named 'moviepy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_moviepy)
    files, reason = record_video(load_policy(tmp_path / "run"), tmp_path / "video")
    assert files == [] and reason == "moviepy is not installed (pip install 'emote-jax[video]')"


def test_a_video_is_recorded_where_gymnasium_can(tmp_path):
    pytest.importorskip("moviepy")
    pytest.importorskip("pygame")
    make_run_dir(tmp_path / "run")
    files, reason = record_video(load_policy(tmp_path / "run"), tmp_path / "video", episodes=1)
    assert reason is None and len(files) == 1
    assert files[0].suffix == ".mp4" and files[0].stat().st_size > 1000
