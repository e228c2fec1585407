"""SAC on Dict observations: uint8 images in the memory, encoders, key selection and errors, exact resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces

from emote_jax import Trainer
from emote_jax.checkpoint import checkpoint_steps
from emote_jax.errors import ConfigError, UnsupportedSpaceError
from emote_jax.networks.encoders import ImageEncoder, encoded_policy, example_obs
from emote_jax.networks.host import EncodedGaussianHostPolicy
from emote_jax.networks.sac import GaussianPolicy
from emote_jax.recipes.envs import single_env
from emote_jax.recipes.sac import SACConfig, build_sac, check_space_pair, collector_policy, make_net
from emote_jax.recipes.config import str_tuple

from test_checkpoint_resume import RESUME, RestartAt, dump

REPO = Path(__file__).resolve().parents[1]
N = 100
CFG = dict(env_id="PixelHitTheMiddle-v0", num_envs=2, hidden_dims=(8, 8), batch_size=16, memory_size=300,
           warmup_steps=40, steps_per_call=2, seed=5, env_steps=10**6, log_metrics=False, eval_episodes=0,
           checkpoint_interval=N)
BOX = spaces.Box(-1.0, 1.0, (1,), np.float32)


def test_images_are_stored_as_uint8_and_vectors_as_float32():
    run = build_sac(SACConfig(**{**CFG, "checkpoint_interval": 0}), out=None)
    try:
        assert run.table.observation_spec == {"position": ((8, 8, 1), np.dtype(np.uint8)),
                                              "velocity": ((1,), np.dtype(np.float32))}
        run.trainer.train(lambda: run.trainer.bp_step > 2)
        cols = run.table.state_dict()["columns"]
        assert cols["observation/position"].dtype == np.uint8
        assert cols["next_observation/position"].dtype == np.uint8
        assert cols["observation/velocity"].dtype == np.float32
        assert set(np.unique(cols["observation/position"])) <= {0, 255}
        assert run.collector._host_policy is None  # images: the jitted policy acts
    finally:
        run.env.close()


def test_the_image_encoder_scales_uint8_to_unit_floats_itself():
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 2), dtype=np.uint8)
    params = ImageEncoder().init(jax.random.key(0), x)
    on_uint8 = ImageEncoder().apply(params, jnp.asarray(x))
    on_floats = ImageEncoder(scale=False).apply(params, jnp.asarray(x, jnp.float32) / 255.0)
    np.testing.assert_allclose(on_uint8, on_floats, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(on_uint8).max()) > 0
    assert not np.allclose(on_uint8, ImageEncoder(scale=False).apply(params, jnp.asarray(x, jnp.float32)))


def test_the_policy_output_on_uint8_images_equals_its_output_on_float_images_over_255():
    spec = {"img": ((8, 8, 1), np.uint8), "v": ((2,), np.float32)}
    net = encoded_policy(spec, GaussianPolicy(2, (8,)))
    params = net.init(jax.random.key(1), example_obs(spec))
    img = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    v = np.ones((4, 2), np.float32)
    mean, _ = net.apply(params, {"img": jnp.asarray(img), "v": v})
    enc = params["params"]["encoder"]["image_img"]
    feats = ImageEncoder(scale=False).apply({"params": enc}, jnp.asarray(img, jnp.float32) / 255.0)
    ref, _ = GaussianPolicy(2, (8,)).apply({"params": params["params"]["head"]}, jnp.concatenate([feats, v], -1))
    np.testing.assert_allclose(mean, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sub, what", [
    (spaces.Discrete(3), "not a Box"),
    (spaces.Box(0.0, 1.0, (4, 4, 1), np.float32), "uint8 image"),
    (spaces.Box(0, 255, (4, 4), np.uint8), "uint8 image"),
])
def test_an_unsupported_key_is_named_in_the_error(sub, what):
    obs = spaces.Dict({"fine": spaces.Box(-1, 1, (2,), np.float32), "bad_key": sub})
    with pytest.raises(UnsupportedSpaceError, match=f"'bad_key'.*{what}.*--obs-keys") as e:
        check_space_pair(obs, BOX, "SomeEnv-v0")
    assert "--env SomeEnv-v0" in str(e.value)


def test_obs_keys_selects_keys_and_an_unknown_key_is_named():
    env = single_env(SACConfig(env_id="DictPendulum-v0", obs_keys=("angle",)))
    try:
        assert list(env.observation_space.spaces) == ["angle"]
        assert set(env.reset(seed=0)[0]) == {"angle"}
    finally:
        env.close()
    with pytest.raises(ConfigError, match=r"--obs-keys angle,speed.*\['speed'\]"):
        single_env(SACConfig(env_id="DictPendulum-v0", obs_keys=("angle", "speed")))
    with pytest.raises(ConfigError, match="--obs-keys.*not a Dict"):
        single_env(SACConfig(env_id="Pendulum-v1", obs_keys=("angle",)))
    assert str_tuple("angle, velocity") == ("angle", "velocity")


def test_a_vector_only_dict_acts_with_a_numpy_mirror_equal_to_the_network():
    env = gymnasium.make("DictPendulum-v0")
    spec, n_actions = check_space_pair(env.observation_space, env.action_space, "DictPendulum-v0")
    net = make_net(SACConfig(hidden_dims=(16, 16)), spec, n_actions)
    params = net.init(jax.random.key(2), example_obs(spec))
    host = collector_policy(net, on_host=True)
    assert isinstance(host, EncodedGaussianHostPolicy)
    obs = {"angle": np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32),
           "velocity": np.random.default_rng(1).normal(size=(5, 1)).astype(np.float32)}
    det = EncodedGaussianHostPolicy(net, deterministic=True)
    got = det.act(det.to_host(params), obs, np.random.default_rng(0))
    mean, _ = net.apply(params, obs)
    np.testing.assert_allclose(got, np.tanh(mean), rtol=1e-5, atol=1e-6)
    env.close()


def test_a_dict_observation_run_resumes_in_a_new_process_exactly(tmp_path):
    """200 bp steps on a vector + uint8 image env, as tests/test_checkpoint_resume.py does it for SAC."""
    straight = build_sac(SACConfig(**CFG), out=None)
    trainer = Trainer([*straight.trainer.callbacks, RestartAt(straight.collector, N, CFG["seed"])], straight.loader,
                      steps_per_call=CFG["steps_per_call"], seed=CFG["seed"])
    ctx = trainer.train(lambda: trainer.bp_step > 2 * N)
    straight.env.close()
    expected = dump(straight, ctx)

    cfg = {**CFG, "run_dir": str(tmp_path / "run")}
    first = build_sac(SACConfig(**cfg), out=None)
    first.trainer.train(lambda: first.trainer.bp_step > N)
    first.env.close()
    at_n = dump(first, first.trainer.ctx)
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [N]
    out = tmp_path / "resumed.npz"
    proc = subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), str(2 * N), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(out, allow_pickle=False))

    assert set(got) == set(expected)
    assert got["table/observation/position"].dtype == np.uint8
    assert int(got["['trainer']['bp_step']"]) == 2 * N + 1
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    encoder = [k for k in expected if k.startswith("['policy']['params']") and "encoder" in k]
    assert encoder and any(not np.array_equal(at_n[k], got[k]) for k in encoder)
