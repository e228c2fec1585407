"""SAC with collection and replay inside the compiled step (``--env jax:Pendulum-v1``): every stored
transition re-simulates, time limits are truncations, the host sees the episodes, resume is exact, and
the settings the device path does not have are refused before anything compiles."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.checkpoint import checkpoint_steps
from emote_jax.collectors.device import DeviceCollector, DeviceCollectorMonitor
from emote_jax.envs.jax_env import make_jax_env
from emote_jax.errors import ConfigError
from emote_jax.recipes.common import build_run
from emote_jax.recipes.device import run_jax_episodes
from emote_jax.recipes.sac import SAC, SACConfig

SMALL = dict(env_id="jax:Pendulum-v1", num_envs=4, hidden_dims=(8, 8), batch_size=32, warmup_steps=400,
             seed=1, log_metrics=False, eval_episodes=0, checkpoint_interval=0, env_steps=10**6)


def flat(state: dict) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.fixture(scope="module")
def trained():
    """250 vector steps of 4 envs (100 of warm-up), memory for all of them."""
    run = build_run(SAC, SACConfig(**SMALL, memory_size=4000, steps_per_call=5), out=None)
    ctx = run.trainer.train(lambda: run.trainer.bp_step > 150)
    return run, ctx


def test_every_stored_transition_resimulates_and_time_limits_are_truncations(trained):
    run, ctx = trained
    env = make_jax_env("jax:Pendulum-v1")
    buf = {k: np.asarray(v) for k, v in ctx.state["collector"]["replay"].items()}
    rows = int(buf["size"])
    assert rows == 250 and run.collector.env_steps == 1000 and run.collector.vector_steps == 250
    obs, nxt = buf["obs"][:rows].reshape(-1, 3), buf["next_obs"][:rows].reshape(-1, 3)
    actions = buf["actions"][:rows].reshape(-1, 1)
    assert np.abs(actions).max() <= 1.0 and np.abs(actions).max() > 0.9
    states = jnp.stack([jnp.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]], axis=1)  # the state behind an observation
    _, sim_next, sim_r, _ = jax.vmap(env.step)(states, jnp.asarray(actions * 2.0), jax.random.split(jax.random.key(0), len(obs)))
    np.testing.assert_allclose(np.asarray(sim_next), nxt, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sim_r), buf["rewards"][:rows].reshape(-1), atol=1e-3)
    # a Pendulum episode is 200 steps and never terminates: each env truncated once, at its step index 199
    ep_step, trunc = buf["ep_step"][:rows], buf["truncated"][:rows]
    assert not buf["terminated"].any()
    np.testing.assert_array_equal(trunc, ep_step == 199)
    assert trunc[199].all() and trunc.sum() == 4
    np.testing.assert_array_equal(ep_step[:, 0], np.r_[np.arange(200), np.arange(50)])
    # after the truncation the env was reset: the next stored obs is not the final one
    assert not np.allclose(buf["obs"][200], buf["next_obs"][199], atol=1e-3)
    np.testing.assert_allclose(buf["obs"][1:199], buf["next_obs"][:198])
    # the host monitor saw the 4 episodes with the returns the buffer holds
    assert run.collector.episodes_completed == 4
    np.testing.assert_allclose(list(run.collector.episode_returns), buf["rewards"][:200].sum(axis=0), rtol=1e-5)
    assert list(run.collector.episode_lengths) == [200] * 4


def test_the_batch_comes_from_the_device_buffer(trained):
    _, ctx = trained
    batch = ctx.batch
    assert batch is None or batch == {}  # the host context has no batch: it never left the device
    assert ctx.metrics["q1/loss"].shape == (5,) and np.isfinite(ctx.metrics["q1/loss"]).all()


def test_the_monitor_takes_the_counters_from_the_calls_metrics(trained):
    run, ctx = trained
    # the counts after each of the last call's 5 steps, in the call's one metrics fetch
    assert ctx.metrics["counter:collector/vector_steps"].tolist() == [246, 247, 248, 249, 250]
    assert ctx.metrics["counter:collector/episodes"].tolist() == [4] * 5
    monitor = DeviceCollectorMonitor(next(cb for cb in run.trainer.callbacks if isinstance(cb, DeviceCollector)))
    monitor.begin_training(ctx)  # reads the state: 250 vector steps, 4 episodes
    assert (monitor.vector_steps, monitor.episodes_completed, len(monitor.episode_returns)) == (250, 4, 4)
    # after a call, the counts come from the metrics, not from the state (which is not read for them)
    slot = dict(ctx.state["collector"], vector_steps=jnp.asarray(250, jnp.int32))
    later = ctx.replace(state={**ctx.state, "collector": slot},
                        metrics={"counter:collector/vector_steps": np.array([251, 252], np.int32),
                                 "counter:collector/episodes": np.array([4, 4], np.int32)})
    monitor.end_cycle(later)
    assert (monitor.vector_steps, monitor.env_steps, monitor.episodes_completed) == (252, 1008, 4)


def test_a_resumed_device_run_equals_the_straight_run_bitwise(tmp_path):
    cfg = SACConfig(**{**SMALL, "memory_size": 2000, "steps_per_call": 4})
    straight = build_run(SAC, cfg, out=None)
    expected = flat(straight.trainer.train(lambda: straight.trainer.bp_step > 80).state)

    saved = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"), checkpoint_interval=40)
    first = build_run(SAC, saved, out=None)
    first.trainer.train(lambda: first.trainer.bp_step > 40)
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [40]
    resumed = build_run(SAC, saved, out=None, resume=True)
    got = flat(resumed.trainer.train(lambda: resumed.trainer.bp_step > 80).state)
    assert got.keys() == expected.keys()
    for k in expected:  # networks, optimizers, the envs mid-episode, the replay buffer, the keys
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    assert resumed.collector.env_steps == straight.collector.env_steps == 4 * (100 + 80)


@pytest.mark.parametrize("change,option", [
    (dict(threaded=True), "--threaded"), (dict(prefetch=True), "--prefetch"), (dict(replay="prioritized"), "--replay"),
    (dict(rollout_targets="one-step"), "--rollout-targets"), (dict(bp_steps_per_env_step=0.3), "--bp-steps-per-env-step"),
    (dict(bp_steps_per_env_step=1.5), "--bp-steps-per-env-step"), (dict(rollout_length=201, batch_size=201),
                                                                    "--rollout-length"),
    (dict(env_id="jax:Nope-v0"), "--env"), (dict(env_kwargs={"g": 9.8}), "--env-kwargs"),
    (dict(env_id="jax:CartPole-v1"), "--env"),  # discrete actions: not for SAC on the device
])
def test_settings_the_device_path_does_not_have_are_refused_naming_the_option(change, option):
    with pytest.raises(ConfigError) as e:
        build_run(SAC, SACConfig(**{**SMALL, **change}), out=None)
    assert e.value.option == option and option in str(e.value)


def test_dqn_on_the_device_stores_indices_that_resimulate_and_sac_needs_box_actions():
    from emote_jax.recipes.dqn import DQN, DQNConfig

    cfg = DQNConfig(env_id="jax:CartPole-v1", num_envs=2, hidden_dims=(8,), batch_size=32, warmup_steps=64,
                    memory_size=2000, steps_per_call=4, log_metrics=False, eval_episodes=0, checkpoint_interval=0,
                    env_steps=10**6, seed=2)
    run = build_run(DQN, cfg, out=None)
    ctx = run.trainer.train(lambda: run.trainer.bp_step > 40, handle_signals=False)
    buf = {k: np.asarray(v) for k, v in ctx.state["collector"]["replay"].items()}
    rows = int(buf["size"])
    assert rows == 32 + 40 * 2  # the default one update per two env steps: two vector steps per bp step
    actions = buf["actions"][:rows].reshape(-1)
    assert buf["actions"].dtype == np.int32 and set(actions) == {0, 1}
    env = make_jax_env("jax:CartPole-v1")
    _, sim_next, _, sim_term = jax.vmap(env.step)(jnp.asarray(buf["obs"][:rows].reshape(-1, 4)), jnp.asarray(actions),
                                                  jax.random.split(jax.random.key(0), len(actions)))
    np.testing.assert_allclose(np.asarray(sim_next), buf["next_obs"][:rows].reshape(-1, 4), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(sim_term), buf["terminated"][:rows].reshape(-1))
    assert buf["terminated"][:rows].any() and not buf["truncated"].any()  # random actions drop the pole early
    assert run.collector.episodes_completed == int(buf["terminated"][:rows].sum())
    with pytest.raises(ConfigError) as e:  # Box actions are SAC's
        build_run(DQN, dataclasses.replace(cfg, env_id="jax:Pendulum-v1"), out=None)
    assert e.value.option == "--env"


@pytest.mark.parametrize("epsilon,env_steps,expected", [(0.3, 0, 0.15), ("schedule", 50, 0.25), ("schedule", 500, 0.0)])
def test_discrete_acting_explores_with_epsilon_of_the_env_steps(epsilon, env_steps, expected):
    import optax

    eps = optax.linear_schedule(1.0, 0.0, 100) if epsilon == "schedule" else epsilon
    n = 40_000
    device = DeviceCollector(make_jax_env("jax:CartPole-v1"), lambda p, obs, k: jnp.zeros(obs.shape[0], jnp.int32),
                             num_envs=n, capacity=1, batch_count=1, num_discrete=2, epsilon=eps)
    actions = np.asarray(device._discrete_actions(None, jnp.zeros((n, 4)), jax.random.key(0), False,
                                                  jnp.asarray(env_steps)))
    assert actions.shape == (n, 1)
    # greedy is 0; an exploring env draws 1 half the time
    assert actions.mean() == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("ratio,per_bp,per_vector", [(0.25, 4, 1), (3.0, 1, 3)])
def test_env_steps_per_backprop_step_follow_the_ratio(ratio, per_bp, per_vector):
    run = build_run(SAC, SACConfig(**{**SMALL, "bp_steps_per_env_step": ratio, "memory_size": 4000}), out=None)
    device = next(cb for cb in run.trainer.callbacks if isinstance(cb, DeviceCollector))
    assert (device.vector_steps_per_bp_step, device.bp_steps_per_vector_step) == (per_bp, per_vector)
    assert isinstance(run.collector, DeviceCollectorMonitor)
    run.trainer.train(lambda: run.trainer.bp_step > 12)
    assert run.collector.vector_steps == 100 + (12 * per_bp if per_bp > 1 else 12 // per_vector)


def test_device_evaluation_runs_the_episodes_a_host_loop_runs():
    env = make_jax_env("jax:Pendulum-v1")

    def act(params, obs, key):  # a fixed linear policy in [-1, 1]
        return jnp.tanh(obs @ params)

    params = jnp.array([[-0.3], [0.2], [-0.5]])
    got = run_jax_episodes(env, act, params, 3, seed=7)
    for i, ret in enumerate(got):
        state, obs = env.reset(jax.random.key(7 + i))
        total = 0.0
        for _ in range(200):
            state, obs, r, _ = env.step(state, 2.0 * act(params, obs[None], None)[0], None)
            total += float(r)
        assert ret == pytest.approx(total, rel=1e-4)
    # new parameters of the same policy: the same compiled rollout, other returns
    from emote_jax.recipes import device

    compiled = device._episodes_fn(env, act)
    other = run_jax_episodes(env, act, -params, 3, seed=7)
    assert device._episodes_fn(env, act) is compiled and compiled._cache_size() == 1 and other != got


@pytest.mark.parametrize("num_envs,rollout_length,k", [(1, 1, 1), (4, 1, 1), (4, 2, 1), (4, 2, 4)])
def test_the_compiled_step_writes_the_replay_buffer_in_place(num_envs, rollout_length, k):
    # a copy of a replay array in the step costs a pass over the whole buffer every backprop step (twice the
    # rewards of a million rows was 5% of SAC's step on a CPU): the step must write where it reads
    capacity = 3001  # a size no other array of the state has
    cfg = SACConfig(**{**SMALL, "num_envs": num_envs, "rollout_length": rollout_length, "batch_size": 32,
                       "memory_size": capacity * num_envs, "steps_per_call": k})
    t = build_run(SAC, cfg, out=None).trainer
    replay = t.ctx.state["collector"]["replay"]
    assert replay["rewards"].shape == (capacity, num_envs)
    hlo = t.compiled_text()  # the call the training loop makes at this K
    copies = [line.strip()[:120] for line in hlo.splitlines() if " copy(" in line and f"[{capacity}," in line]
    assert copies == []
    assert f"[{capacity},{num_envs}" in hlo  # the buffer is in the program (the pattern can match)
