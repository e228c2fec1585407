"""Brax envs on the device path (``--env brax:<name>``): the adapter steps exactly as brax does, brax's
``done`` is stored as termination (not truncation), SAC trains, evaluates on the device and resumes
bitwise, and bad names and options stop with the option to change."""

from __future__ import annotations

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("brax")  # in the test extra (emote-jax[brax]); absent only in a bare install

from emote_jax.checkpoint import checkpoint_steps  # noqa: E402
from emote_jax.envs.brax_env import BRAX_EPISODE_STEPS  # noqa: E402
from emote_jax.envs.jax_env import has_gymnasium_twin, is_jax_env_id, make_jax_env  # noqa: E402
from emote_jax.errors import ConfigError  # noqa: E402
from emote_jax.recipes.common import build_run, evaluate  # noqa: E402
from emote_jax.recipes.sac import SAC, SACConfig  # noqa: E402

ENV = "brax:inverted_pendulum"  # the cheapest brax physics to compile (one hinge on a cart)
SMALL = SACConfig(env_id=ENV, num_envs=2, hidden_dims=(8, 8), batch_size=32, warmup_steps=64, memory_size=2000,
                  steps_per_call=4, seed=1, log_metrics=False, eval_episodes=0, checkpoint_interval=0,
                  env_steps=10**6)


def flat(state: dict) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_the_adapter_steps_as_brax_does_and_reports_its_done_as_termination():
    from brax import envs

    env = make_jax_env(ENV)
    assert is_jax_env_id(ENV) and not has_gymnasium_twin(ENV)
    assert env.observation_space.shape == (4,) and env.action_space.shape == (1,)
    assert float(env.action_space.low[0]) == -1.0 and float(env.action_space.high[0]) == 1.0
    assert env.max_episode_steps == BRAX_EPISODE_STEPS == 1000
    raw = envs.get_environment("inverted_pendulum")
    action = jnp.ones((1,), jnp.float32)  # push one way: the pole falls within the time limit

    @jax.jit
    def both(key):  # 60 steps of the adapter and of brax's own env, side by side, in one program
        state, obs0 = env.reset(key)
        ref = raw.reset(key)

        def body(carry, t):
            state, ref = carry
            state, obs, reward, terminated = env.step(state, action, jax.random.fold_in(key, t))
            ref = raw.step(ref, action)
            return (state, ref), (obs, reward, terminated, ref.obs, ref.reward, ref.done)

        return obs0, ref.obs, jax.lax.scan(body, (state, ref), jnp.arange(60))[1]

    obs0, ref_obs0, (obs, reward, terminated, ref_obs, ref_reward, ref_done) = both(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(obs0), np.asarray(ref_obs0))
    np.testing.assert_allclose(np.asarray(obs), np.asarray(ref_obs), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(reward), np.asarray(ref_reward))
    assert obs.dtype == reward.dtype == jnp.float32 and terminated.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(terminated), np.asarray(ref_done) > 0)
    assert terminated.any() and not terminated[0]  # the pole falls, not at once


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("brax")
    cfg = dataclasses.replace(SMALL, run_dir=str(run_dir), checkpoint_interval=20)
    run = build_run(SAC, cfg, out=None)
    ctx = run.trainer.train(lambda: run.trainer.bp_step > 40, handle_signals=False)
    return cfg, run, ctx


def test_sac_trains_on_brax_and_stores_its_falls_as_terminations(trained):
    cfg, run, ctx = trained
    buf = {k: np.asarray(v) for k, v in ctx.state["collector"]["replay"].items()}
    rows = int(buf["size"])
    assert rows == 32 + 40  # 64 warm-up steps over 2 envs, then one vector step per bp step
    assert buf["terminated"][:rows].any() and not buf["truncated"].any()  # the pole falls long before 1000 steps
    assert run.collector.episodes_completed == int(buf["terminated"][:rows].sum())
    params = ctx.state["policy"]["params"]
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    returns = evaluate(SAC, cfg, run.policy_net, params, 2, seed=0)  # on the device: brax has no gymnasium twin
    assert len(returns) == 2 and all(r >= 1.0 for r in returns)  # reward 1 per step until the pole falls


def test_a_resumed_brax_run_equals_the_straight_run_bitwise(trained, tmp_path):
    cfg, run, ctx = trained
    assert checkpoint_steps(f"{cfg.run_dir}/checkpoints") == [20, 40]
    copy = tmp_path / "copy"  # the run directory as it was at bp step 20 (a resume may not write among later ones)
    shutil.copytree(cfg.run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "40")
    again = build_run(SAC, dataclasses.replace(cfg, run_dir=str(copy)), out=None, resume=True)
    resumed = again.trainer.train(lambda: again.trainer.bp_step > 40, handle_signals=False)
    a, b = flat(ctx.state), flat(resumed.state)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("change,option,message", [
    ({"env_id": "brax:no_such_env"}, "--env", "brax has no env 'no_such_env'; expected one of"),
    ({"env_kwargs": {"no_such_option": 1}}, "--env-kwargs", "brax's inverted_pendulum refuses them"),
    ({"env_id": "jax:Pendulum-v1", "env_kwargs": {"g": 9.8}}, "--env-kwargs", "takes no keyword arguments"),
])
def test_bad_brax_settings_stop_naming_the_option(change, option, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_run(SAC, dataclasses.replace(SMALL, **change), out=None)
    assert e.value.option == option


def test_a_brax_failure_without_env_kwargs_is_not_blamed_on_them(monkeypatch):
    from brax import envs

    def broken(name, **kwargs):
        raise TypeError("an internal brax error")

    monkeypatch.setattr(envs, "get_environment", broken)
    with pytest.raises(RuntimeError, match="brax:inverted_pendulum: brax failed to build the env .TypeError: an "
                                           "internal brax error"):
        make_jax_env("brax:inverted_pendulum")
    with pytest.raises(ValueError, match=r"--env-kwargs \{'x': 1\}: brax's inverted_pendulum refuses them"):
        make_jax_env("brax:inverted_pendulum", x=1)
