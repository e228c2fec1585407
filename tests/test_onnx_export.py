"""ONNX export (the onnx extra): onnxruntime's actions equal the JAX policy's on 1000 random observations
(SAC flat and Dict observations, DQN), ``emote-jax export`` on a trained run directory, the
``OnnxExporter`` callback, and clear errors that leave earlier exports in place."""

from __future__ import annotations

import json
import sys

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import emote_jax.envs  # noqa: F401  (registers DictPendulum-v0, PixelHitTheMiddle-v0)
from emote_jax import LossCallback, Trainer
from emote_jax.networks.encoders import example_obs
from emote_jax.onnx_export import META_FILE, ONNX_FILE, OnnxExporter, OnnxExportError, export_policy
from emote_jax.recipes import get_algorithm

ort = pytest.importorskip("onnxruntime")  # the onnx extra is part of the test extra: installed in CI


def random_obs(obs_spec, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(obs_spec, dict):
        return {k: (rng.standard_normal((n, *s)) * 3).astype(d) if np.dtype(d).kind == "f"
                else rng.integers(0, 256, (n, *s)).astype(d) for k, (s, d) in obs_spec.items()}
    return (rng.standard_normal((n, obs_spec)) * 3).astype(np.float32)


def run_onnx(path, obs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, obs if isinstance(obs, dict) else {"obs": obs})[0]


@pytest.mark.parametrize("algo_name,env_id", [("sac", "Pendulum-v1"), ("sac", "DictPendulum-v0"),
                                              ("sac", "PixelHitTheMiddle-v0"), ("dqn", "CartPole-v1")])
def test_onnxruntime_actions_equal_the_jax_policys(tmp_path, algo_name, env_id):
    algo = get_algorithm(algo_name)
    cfg = algo.config_cls(env_id=env_id, **({"hidden_dims": (64, 64)} if algo_name == "sac" else {}))
    env = gymnasium.make(env_id)
    obs_spec, n_actions = algo.check_spaces(env.observation_space, env.action_space, env_id)
    net = algo.make_net(cfg, obs_spec, n_actions)
    params = net.init(jax.random.key(1), example_obs(obs_spec))
    params = jax.tree.map(lambda p: p * 3.0, params)  # larger weights: actions away from 0 and the clamps
    act = algo.eval_policy(net)
    path = export_policy(act, params, obs_spec, tmp_path, action_space=env.action_space)
    obs = random_obs(obs_spec)
    expected = np.asarray(jax.jit(act)(params, obs, jax.random.key(0)))
    got = run_onnx(path, obs)
    assert got.shape == expected.shape == ((1000, n_actions) if algo_name == "sac" else (1000,))
    if algo_name == "dqn":
        np.testing.assert_array_equal(got, expected)
        assert len(np.unique(got)) == n_actions  # both actions occur: the comparison means something
    else:
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
        assert np.std(expected) > 0.1
    meta = json.loads((tmp_path / META_FILE).read_text())
    names = sorted(obs_spec) if isinstance(obs_spec, dict) else ["obs"]
    assert [i["name"] for i in meta["inputs"]] == names and meta["output"]["name"] == "action"
    assert meta["inputs"][0]["shape"][0] == "B"
    if algo_name == "sac":
        assert meta["output"]["kind"] == "box" and meta["output"]["low"] == env.action_space.low.tolist()
    else:
        assert meta["output"]["kind"] == "discrete" and meta["output"]["n"] == n_actions


def test_an_unexportable_network_says_so_and_leaves_the_earlier_export(tmp_path):
    def act(p, o, k):
        return jax.pure_callback(np.tanh, jax.ShapeDtypeStruct(o.shape, o.dtype), o @ p["w"])

    good = export_policy(lambda p, o, k: o @ p["w"], {"w": jnp.eye(3)}, 3, tmp_path, network_name="good")
    before = good.read_bytes()
    with pytest.raises(OnnxExportError, match="cannot export callback_net to ONNX: .*pure_callback"):
        export_policy(act, {"w": jnp.eye(3)}, 3, tmp_path, network_name="callback_net")
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted([ONNX_FILE, META_FILE])


def test_a_missing_extra_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'emote-jax\[onnx\]'"):
        export_policy(lambda p, o, k: o, {}, 3, tmp_path)


def test_onnx_exporter_writes_every_interval_and_at_the_end(tmp_path):
    """A "policy" loss whose params move each step: the export holds the params of its bp step."""
    loss = LossCallback(name="policy", params={"w": jnp.ones((3, 2))}, optimizer=optax.sgd, lr=0.1,
                        loss_fn=lambda p, ctx: jnp.sum(p["w"]))
    exporter = OnnxExporter(lambda p, o, k: o @ p["w"], "policy", 3, tmp_path, interval=4)
    ctx = Trainer([loss, exporter], [{"default": {}, "batch_size": 1}] * 6, steps_per_call=1).train()
    assert exporter.exported_steps == [4, 6]
    assert json.loads((tmp_path / META_FILE).read_text())["bp_step"] == 6
    obs = random_obs(3, n=50)
    np.testing.assert_allclose(run_onnx(tmp_path / ONNX_FILE, obs), obs @ np.asarray(ctx.state["policy"]["params"]["w"]),
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="interval an int >= 0"):
        OnnxExporter(lambda p, o, k: o, "policy", 3, tmp_path, interval=-1)


def test_emote_jax_export_on_a_trained_run_directory(tmp_path, capsys):
    from emote_jax.cli import main
    from emote_jax.evaluation import _act_fn, load_policy

    run = tmp_path / "run"
    assert main(["train", "--env", "HitTheMiddle-v0", "--hidden", "16,16", "--batch-size", "32", "--warmup-steps", "64",
                 "--steps", "200", "--eval-episodes", "1", "--no-log-metrics", "--checkpoint-interval", "0",
                 "--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "onnx")]) == 0
    assert f"wrote {tmp_path / 'onnx' / ONNX_FILE}" in capsys.readouterr().out
    loaded = load_policy(run)
    obs = random_obs(2)
    expected = np.asarray(_act_fn(loaded)(loaded.params, obs, jax.random.key(0)))
    np.testing.assert_allclose(run_onnx(tmp_path / "onnx" / ONNX_FILE, obs), expected, atol=1e-5, rtol=0)
    meta = json.loads((tmp_path / "onnx" / META_FILE).read_text())
    assert (meta["algorithm"], meta["env_id"], meta["output"]["low"], meta["output"]["high"]) == \
        ("sac", "HitTheMiddle-v0", [-1.0], [1.0])
    assert main(["export", str(tmp_path / "nothing")]) == 2  # not a run directory: a usage error
