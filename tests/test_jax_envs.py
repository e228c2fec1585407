"""JAX-native envs: jax:Pendulum-v1 is gymnasium's Pendulum-v1, step for step; ids and errors."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.envs.jax_env import is_jax_env_id, make_jax_env


def test_jax_pendulum_follows_gymnasiums_pendulum_step_for_step():
    env = make_jax_env("jax:Pendulum-v1")
    ref = gymnasium.make("Pendulum-v1").unwrapped
    rng = np.random.default_rng(0)
    step = jax.jit(env.step)
    for episode in range(3):
        state, obs = env.reset(jax.random.key(episode))
        ref.reset(seed=episode)
        ref.state = np.asarray(state, np.float64)  # the same start
        for t in range(200):
            a = rng.uniform(-2.5, 2.5, (1,)).astype(np.float32)  # beyond the torque limit too: both clip
            state, obs, r, terminated = step(state, jnp.asarray(a), jax.random.key(t))
            ref_obs, ref_r, ref_term, ref_trunc, _ = ref.step(a)
            np.testing.assert_allclose(np.asarray(obs), ref_obs, atol=2e-4, err_msg=f"episode {episode} step {t}")
            assert float(r) == pytest.approx(ref_r, abs=2e-3), (episode, t)
            assert not bool(terminated) and not ref_term
            ref.state = np.asarray(state, np.float64)  # float32 vs float64: keep the two on one trajectory


def test_jax_pendulum_resets_within_gymnasiums_bounds_and_by_key():
    env = make_jax_env("jax:Pendulum-v1")
    states, obs = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 512))
    states = np.asarray(states)
    assert np.abs(states[:, 0]).max() <= np.pi and np.abs(states[:, 1]).max() <= 1.0
    assert np.abs(states[:, 0]).max() > 3.0 and np.abs(states[:, 1]).max() > 0.95  # the whole range is used
    np.testing.assert_allclose(np.asarray(obs)[:, 0] ** 2 + np.asarray(obs)[:, 1] ** 2, 1.0, rtol=1e-5)
    again, _ = jax.vmap(env.reset)(jax.random.split(jax.random.key(0), 512))
    np.testing.assert_array_equal(np.asarray(again), states)
    assert env.max_episode_steps == 200 and env.gymnasium_id == "Pendulum-v1"
    assert env.action_space.shape == (1,) and float(env.action_space.high[0]) == 2.0


def test_env_ids():
    assert is_jax_env_id("jax:Pendulum-v1") and is_jax_env_id("gymnax:CartPole-v1")
    assert not is_jax_env_id("Pendulum-v1")
    with pytest.raises(ValueError, match=r"no JAX-native env 'Nope-v0'; expected one of \['jax:CartPole-v1', 'jax:Pendulum-v1'\]"):
        make_jax_env("jax:Nope-v0")


def test_jax_cartpole_follows_gymnasiums_cartpole_step_for_step():
    env = make_jax_env("jax:CartPole-v1")
    ref = gymnasium.make("CartPole-v1").unwrapped
    rng = np.random.default_rng(1)
    step = jax.jit(env.step)
    ends = 0
    for episode in range(20):
        state, obs = env.reset(jax.random.key(episode))
        ref.reset(seed=episode)
        ref.state = np.asarray(state, np.float64)
        for t in range(500):
            a = int(rng.integers(0, 2))
            state, obs, r, terminated = step(state, jnp.asarray(a, jnp.int32), jax.random.key(t))
            ref_obs, ref_r, ref_term, _, _ = ref.step(a)
            np.testing.assert_allclose(np.asarray(obs), ref_obs, atol=1e-4, err_msg=f"episode {episode} step {t}")
            assert float(r) == ref_r == 1.0
            assert bool(terminated) == ref_term, (episode, t)
            if ref_term:
                ends += 1
                break
            ref.state = np.asarray(state, np.float64)
    assert ends == 20  # random actions drop the pole well before the time limit: every termination was compared
    assert env.max_episode_steps == 500 and env.action_space.n == 2
