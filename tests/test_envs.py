"""HitTheMiddle: dynamics, episode end, seeding, registration and the reference's reward levels."""

import gymnasium
import numpy as np
import pytest

import emote_jax.envs
from emote_jax.envs import EPISODE_STEPS, HIT_THE_MIDDLE_ID, HitTheMiddle, register_envs


def _rollout(env, policy, episodes, seed0=0):
    rewards = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed0 + ep)
        done = False
        while not done:
            obs, r, terminated, truncated, _ = env.step(policy(obs))
            rewards.append(r)
            done = terminated or truncated
    return np.asarray(rewards)


def test_spaces():
    env = HitTheMiddle()
    assert env.observation_space.shape == (2,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (1,)
    np.testing.assert_array_equal(env.action_space.low, [-1.0])
    np.testing.assert_array_equal(env.action_space.high, [1.0])
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (2,) and info == {}
    assert env.observation_space.contains(obs)


def test_dynamics_step_by_step_match_hand_computation():
    env = HitTheMiddle()
    obs, _ = env.reset(seed=3)
    pos, vel = float(env._pos), float(env._vel)
    np.testing.assert_allclose(obs, [pos, vel], rtol=1e-7)
    actions = [0.5, -1.0, 1.0, 0.25, 0.0, -0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    for t, a in enumerate(actions):
        vel = vel + a
        pos = pos + vel
        if pos > 10.0:
            pos, vel = 10.0, -vel
        elif pos < -10.0:
            pos, vel = -10.0, -vel
        obs, r, terminated, truncated, info = env.step(np.array([a], np.float32))
        np.testing.assert_allclose(obs, np.array([pos, vel], np.float32), rtol=0, atol=1e-6, err_msg=f"step {t}")
        assert r == pytest.approx(-(pos**2), abs=1e-9)
        assert not terminated and not truncated and info == {}


@pytest.mark.parametrize(
    "pos, vel, action, expected",
    [
        (9.5, 0.3, 0.5, (10.0, -0.8, -100.0)),  # 9.5 + 0.8 = 10.3 > 10: clamp, reflect
        (-9.0, -0.6, -1.0, (-10.0, 1.6, -100.0)),  # -9 - 1.6 = -10.6 < -10
        (9.0, 0.5, 0.5, (10.0, 1.0, -100.0)),  # exactly 10: no bounce
        (0.0, 0.0, 0.0, (0.0, 0.0, -0.0)),
    ],
)
def test_bounce(pos, vel, action, expected):
    env = HitTheMiddle()
    env.reset(seed=0)
    env._pos, env._vel = pos, vel
    obs, r, _, _, _ = env.step(np.array([action], np.float32))
    np.testing.assert_allclose(obs, expected[:2], atol=1e-6)
    assert r == pytest.approx(expected[2], abs=1e-6)


def test_obs_is_a_fresh_array_each_step():
    env = HitTheMiddle()
    o0, _ = env.reset(seed=0)
    keep = o0.copy()
    o1, *_ = env.step(np.array([1.0], np.float32))
    np.testing.assert_array_equal(o0, keep)
    assert o1 is not o0


def test_episode_terminates_after_31_steps_as_in_the_reference():
    assert EPISODE_STEPS == 31
    env = HitTheMiddle()
    for ep in range(3):  # the counter restarts at reset
        env.reset(seed=ep)
        for t in range(1, 32):
            _, _, terminated, truncated, _ = env.step(np.array([0.1], np.float32))
            assert truncated is False
            assert terminated is (t == 31), t


def test_no_own_end_and_time_limit_truncates():
    env = gymnasium.wrappers.TimeLimit(HitTheMiddle(episode_steps=None), max_episode_steps=7)
    env.reset(seed=0)
    ends = [env.step(np.array([0.0], np.float32))[2:4] for _ in range(7)]
    assert ends[:6] == [(False, False)] * 6
    assert ends[6] == (False, True)
    with pytest.raises(ValueError, match="episode_steps"):
        HitTheMiddle(episode_steps=0)


def test_seeding_is_deterministic_and_reset_distribution():
    def trajectory(seed):
        env = HitTheMiddle()
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for a in np.linspace(-1, 1, 10):
            out.append(env.step(np.array([a], np.float32))[0])
        return np.stack(out)

    np.testing.assert_array_equal(trajectory(7), trajectory(7))
    assert not np.allclose(trajectory(7), trajectory(8))
    env = HitTheMiddle()
    env.reset(seed=0)
    starts = np.stack([env.reset()[0] for _ in range(2000)])  # unseeded resets continue the seeded stream
    assert starts[:, 0].min() >= -10 and starts[:, 0].max() < 10
    assert starts[:, 1].min() >= -0.25 and starts[:, 1].max() < 0.25
    assert abs(starts[:, 0].mean()) < 0.5 and starts[:, 0].std() == pytest.approx(20 / np.sqrt(12), rel=0.05)
    assert len(np.unique(starts[:, 0])) == 2000


def test_registered_idempotently_and_vectorises():
    register_envs()
    register_envs()
    import importlib

    importlib.reload(emote_jax.envs)
    assert HIT_THE_MIDDLE_ID == "HitTheMiddle-v0"
    env = gymnasium.make("HitTheMiddle-v0")
    assert isinstance(env.unwrapped, HitTheMiddle)
    venv = gymnasium.make_vec("HitTheMiddle-v0", num_envs=3, vectorization_mode="sync")
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 2) and obs.dtype == np.float32
    assert venv.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    venv.close()


def test_random_policy_about_minus_37_per_step_and_pd_controller_much_better():
    env = gymnasium.make("HitTheMiddle-v0")
    rng = np.random.default_rng(0)
    random_r = _rollout(env, lambda o: rng.uniform(-1, 1, (1,)).astype(np.float32), episodes=300)
    assert len(random_r) == 300 * 31
    # reference: about -37 per step; measured here -35.6 (300 episodes)
    assert -45.0 < random_r.mean() < -28.0

    def pd(obs):
        return np.clip([-0.3 * obs[0] - 1.0 * obs[1]], -1, 1).astype(np.float32)

    pd_r = _rollout(env, pd, episodes=100)
    # reference: about -1.6 per step; measured here -1.7
    assert -2.5 < pd_r.mean() < -1.0
