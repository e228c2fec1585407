"""GymCollector / ThreadedGymCollector: every stored transition is a real one, episode ends are stored
as what they are, autoreset modes, validation, threading."""

import threading
import time

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from emote_jax.collectors import (
    GymCollector,
    NonFiniteObservationError,
    PolicyOutputError,
    ThreadedGymCollector,
    memory_spec,
)
from emote_jax.context import Context
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import AgentObservation, EpisodeState, MemoryProxy, ReplayTable

N_ENVS = 4


# ---- helpers ---------------------------------------------------------------------------------------


def random_policy(params, obs, key):
    return jax.random.uniform(key, (obs.shape[0], 1), minval=-1.0, maxval=1.0)


def constant_policy(params, obs, key):
    """Acts ``params["a"]`` everywhere: lets a test see which parameters the collector used."""
    return jnp.broadcast_to(params["a"], (obs.shape[0], params["a"].shape[0]))


def make_ctx(params, bp_step=1):
    return Context(state={"policy": {"params": params}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=bp_step)


RANDOM_PARAMS = {"w": jnp.zeros(())}


class Recorder:
    """Wraps a MemoryProxy: records every ``add`` call and forwards it."""

    def __init__(self, inner=None):
        self.inner = inner
        self.calls = []
        self.lock = threading.Lock()

    def add(self, observations, actions):
        with self.lock:
            self.calls.append((dict(observations), {k: np.array(v) for k, v in actions.items()}))
        if self.inner is not None:
            self.inner.add(observations, actions)

    def episodes(self):
        """agent id -> list of (state, obs dict, reward, action or None), in call order."""
        eps = {}
        for obs, acts in self.calls:
            for agent, o in obs.items():
                eps.setdefault(agent, []).append((o.episode_state, o.array_data, o.reward, acts.get(agent)))
        return eps


def htm_vector(n=N_ENVS, mode=AutoresetMode.NEXT_STEP, **kw):
    return SyncVectorEnv([lambda: HitTheMiddle(**kw) for _ in range(n)], autoreset_mode=mode)


def make_table(env, capacity=100_000):
    obs_spec, action_shape = memory_spec(env)
    return ReplayTable(capacity, observation_spec=obs_spec, action_shape=action_shape)


def simulate(obs, actions):
    """Re-simulate HitTheMiddle: (B, 2) obs, (B, 1) actions -> (B, 2) next obs, (B,) rewards."""
    pos, vel = obs[:, 0].astype(np.float64), obs[:, 1].astype(np.float64)
    vel = vel + actions[:, 0]
    pos = pos + vel
    hi, lo = pos > 10.0, pos < -10.0
    vel = np.where(hi | lo, -vel, vel)
    pos = np.clip(pos, -10.0, 10.0)
    return np.stack([pos, vel], 1), -(pos**2)


def assert_all_transitions_follow_dynamics(table):
    """Every stored transition (not a sample: all of them, via a large sample and via episodes)."""
    batch = table.sample(len(table), 1)
    sim_next, sim_reward = simulate(batch["observation"]["obs"], batch["actions"])
    np.testing.assert_allclose(batch["next_observation"]["obs"], sim_next, atol=1e-3, rtol=0)
    np.testing.assert_allclose(batch["rewards"][:, 0], sim_reward, atol=1e-3, rtol=0)
    for eid in table.episode_ids():
        ep = table.get_episode(eid)
        o = ep["observations"]["obs"]
        sim_next, sim_reward = simulate(o[:-1], ep["actions"])
        np.testing.assert_allclose(o[1:], sim_next, atol=1e-3, rtol=0, err_msg=f"episode {eid}")
        np.testing.assert_allclose(ep["rewards"], sim_reward, atol=1e-3, rtol=0, err_msg=f"episode {eid}")
    return batch


def action_log(rec):
    """The first action component of the first agent, per ``add`` call that carried actions."""
    return [round(float(next(iter(a.values()))[0]), 4) for _, a in rec.calls if a]


def run_collector(collector, params, cycles):
    ctx = make_ctx(params)
    collector.begin_training(ctx)
    for step in range(1, cycles + 1):
        collector.end_cycle(make_ctx(params, step))
    collector.end_training(ctx)


# ---- the reference's collector bar: every transition matches re-simulated dynamics -------------------


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_every_transition_matches_dynamics(mode):
    env = htm_vector(mode=mode)
    table = make_table(env)
    rec = Recorder(MemoryProxy(table))
    col = GymCollector(env, random_policy, rec, warmup_steps=60, random_warmup=True, seed=1)
    run_collector(col, RANDOM_PARAMS, cycles=40)  # 100 vector steps, 3 episode ends per sub-env
    assert col.vector_steps == 100
    # NEXT_STEP spends one vector step per episode end on the reset; the others none
    resets = 3 * N_ENVS if mode == AutoresetMode.NEXT_STEP else 0
    assert col.env_steps == N_ENVS * 100 - resets
    assert len(table) == col.env_steps  # every transition stored, none twice, none invented
    assert col.episodes_completed == 3 * N_ENVS
    assert list(col.episode_lengths) == [31] * (3 * N_ENVS)
    batch = assert_all_transitions_follow_dynamics(table)
    # HitTheMiddle ends with terminated (as in the reference): those windows are masked
    ends = batch["terminated"][:, 0] == 1
    assert ends.any() and (batch["masks"][ends] == 0).all()
    episodes = [table.get_episode(e) for e in table.episode_ids()]
    assert sorted((len(e["actions"]), e["terminated"], e["truncated"]) for e in episodes) == sorted(
        [(31, True, False)] * (3 * N_ENVS) + [(100 - 3 * 31 - resets // N_ENVS, False, True)] * N_ENVS
    )
    # running episodes were closed as INTERRUPTED at the end of training
    closes = [s for eps in rec.episodes().values() for s, *_ in eps if s == EpisodeState.INTERRUPTED]
    assert len(closes) == N_ENVS
    assert table.num_episodes == 4 * N_ENVS
    env.close()


# fork: the workers only run numpy env code, never JAX; spawn would re-import JAX in each (seconds)
@pytest.mark.filterwarnings("ignore:os.fork")
def test_async_vector_env():
    env = gymnasium.vector.AsyncVectorEnv([HitTheMiddle] * 2, context="fork")
    table = make_table(env)
    col = GymCollector(env, random_policy, MemoryProxy(table), warmup_steps=70, close_env=True)
    run_collector(col, RANDOM_PARAMS, cycles=0)
    assert col.episodes_completed == 4 and len(table) == col.env_steps == 2 * (70 - 2)
    assert_all_transitions_follow_dynamics(table)
    assert env.closed  # close_env=True asked for it


def test_episode_structure_fresh_ids_and_returns():
    env = htm_vector(n=2)
    rec = Recorder()
    col = GymCollector(env, random_policy, rec, warmup_steps=70, random_warmup=True)
    run_collector(col, RANDOM_PARAMS, cycles=0)
    eps = rec.episodes()
    assert sorted(eps) == list(range(len(eps)))  # ids 0, 1, 2, ...: a fresh id per episode
    ended = [e for e in eps.values() if e[-1][0] == EpisodeState.TERMINAL]
    assert len(ended) == 4 == col.episodes_completed
    for e in ended:
        states = [s for s, *_ in e]
        assert states == [EpisodeState.INITIAL] + [EpisodeState.RUNNING] * 30 + [EpisodeState.TERMINAL]
        assert e[0][2] is None and all(a is not None for *_, a in e[:-1]) and e[-1][3] is None
        assert all(a.shape == (1,) and a.dtype == np.float32 for *_, a in e[:-1])
        assert all(o["obs"].dtype == np.float32 and o["obs"].shape == (2,) for _, o, *_ in e)
    np.testing.assert_allclose(sorted(col.episode_returns), sorted(sum(r for _, _, r, _ in e[1:]) for e in ended))
    # the memory never gets an observation twice for one agent in one call, nor an action after a close
    for obs, acts in rec.calls:
        for agent, o in obs.items():
            if o.episode_state in (EpisodeState.TERMINAL, EpisodeState.INTERRUPTED):
                assert agent not in acts
            else:
                assert agent in acts


# ---- time limits versus true terminations ----------------------------------------------------------


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_truncation_stored_as_truncation_and_termination_as_terminal(mode):
    TL = gymnasium.wrappers.TimeLimit
    env = SyncVectorEnv(
        [
            lambda: TL(HitTheMiddle(episode_steps=5), max_episode_steps=7),  # terminates at 5
            lambda: TL(HitTheMiddle(episode_steps=None), max_episode_steps=7),  # truncated at 7
        ],
        autoreset_mode=mode,
    )
    table = make_table(env)
    rec = Recorder(MemoryProxy(table))
    col = GymCollector(env, random_policy, rec, warmup_steps=40, random_warmup=True)
    col.begin_training(make_ctx(RANDOM_PARAMS))
    by_agent = rec.episodes()
    finals = {a: e[-1] for a, e in by_agent.items() if e[-1][0] in (EpisodeState.TERMINAL, EpisodeState.INTERRUPTED)}
    lengths = {a: len(by_agent[a]) - 1 for a in finals}
    assert {lengths[a] for a, f in finals.items() if f[0] == EpisodeState.TERMINAL} == {5}
    assert {lengths[a] for a, f in finals.items() if f[0] == EpisodeState.INTERRUPTED} == {7}
    assert sum(f[0] == EpisodeState.TERMINAL for f in finals.values()) >= 5
    assert sum(f[0] == EpisodeState.INTERRUPTED for f in finals.values()) >= 4

    assert_all_transitions_follow_dynamics(table)
    ended = [table.get_episode(e) for e in table.episode_ids()]
    ended = [e for e in ended if e["terminated"] or e["truncated"]]
    for e in ended:
        assert len(e["actions"]) == (5 if e["terminated"] else 7)
    batch = table.sample(len(table), 1)
    term, trunc, masks = batch["terminated"][:, 0], batch["truncated"][:, 0], batch["masks"][:, 0]
    assert (masks[term == 1] == 0).all() and (term == 1).any()
    assert (masks[trunc == 1] == 1).all() and (trunc == 1).any()
    assert not ((term == 1) & (trunc == 1)).any()
    col.end_training(make_ctx(RANDOM_PARAMS))


def test_pendulum_time_limit_rescaled_actions():
    env = gymnasium.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync", max_episode_steps=10)
    table = make_table(env)
    col = GymCollector(env, random_policy, MemoryProxy(table), warmup_steps=25, random_warmup=True)
    run_collector(col, RANDOM_PARAMS, cycles=0)
    assert col.episodes_completed == 4 and list(col.episode_lengths) == [10] * 4
    batch = table.sample(len(table), 1)
    assert batch["terminated"].sum() == 0 and batch["truncated"].sum() > 0 and (batch["masks"] == 1).all()
    assert np.abs(batch["actions"]).max() <= 1.0  # the policy's actions, not the env's [-2, 2] torques
    env.close()


# ---- actions, params, pacing ----------------------------------------------------------------------


class EchoEnv(gymnasium.Env):
    """Observation = the last action received (to see what the env got); never ends."""

    def __init__(self, dict_obs=False):
        self.action_space = spaces.Box(np.array([0.0, -3.0], np.float32), np.array([1.0, 5.0], np.float32))
        box = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.observation_space = spaces.Dict({"a": box, "b": box}) if dict_obs else box
        self.dict_obs = dict_obs

    def _obs(self, a):
        a = np.asarray(a, np.float32)
        return {"a": a, "b": -a} if self.dict_obs else a

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._obs(np.zeros(2)), {}

    def step(self, action):
        return self._obs(action), 0.0, False, False, {}


@pytest.mark.parametrize("dict_obs", [False, True])
def test_actions_rescaled_to_bounds_and_stored_in_unit_range(dict_obs):
    env = SyncVectorEnv([lambda: EchoEnv(dict_obs) for _ in range(3)])
    obs_spec, action_shape = memory_spec(env)
    assert obs_spec == ({"a": ((2,), np.float32), "b": ((2,), np.float32)} if dict_obs else {"obs": ((2,), np.float32)})
    rec = Recorder()
    def collector() -> GymCollector:  # a fresh one each time: the warm-up (one step here) is taken once per collector
        return GymCollector(env, lambda p, o, k: constant_policy(p, jax.tree.leaves(o)[0], k), rec, warmup_steps=1)

    for a, expected in [([-1.0, 1.0], [0.0, 5.0]), ([0.0, 0.0], [0.5, 1.0]), ([1.0, -1.0], [1.0, -3.0])]:
        col = collector()
        col.begin_training(make_ctx({"a": jnp.array(a)}))
        seen = col._obs["a" if dict_obs else "obs"]
        np.testing.assert_allclose(seen, np.tile(expected, (3, 1)), atol=1e-6)
        stored = list(rec.calls[-1][1].values())
        np.testing.assert_allclose(stored, np.tile(a, (3, 1)))
    with pytest.warns(UserWarning, match="outside"):
        collector().begin_training(make_ctx({"a": jnp.array([3.0, -0.5])}))
    np.testing.assert_allclose(list(rec.calls[-1][1].values()), np.tile([1.0, -0.5], (3, 1)))


def test_uses_latest_params_from_context_and_paces_by_bp_steps():
    env = SyncVectorEnv([lambda: EchoEnv() for _ in range(2)])
    rec = Recorder()
    col = GymCollector(env, constant_policy, rec, bp_steps_per_env_step=3)
    col.begin_training(make_ctx({"a": jnp.array([0.0, 0.0])}))
    assert col.vector_steps == 0
    for step in range(1, 10):
        col.end_cycle(make_ctx({"a": jnp.array([step / 10, 0.0])}, step))
    assert col.vector_steps == 3
    # steps happened after bp steps 3, 6, 9 with the parameters of those steps
    assert action_log(rec) == [0.3, 0.6, 0.9]


@pytest.mark.parametrize("ratio, cycles, expected", [(1.0, 7, 7), (0.5, 7, 14), (0.3, 3, 10), (0.1, 1, 10), (10, 25, 2), (2.5, 10, 4)])
def test_fractional_pacing_is_exact(ratio, cycles, expected):
    env = SyncVectorEnv([lambda: EchoEnv()])
    col = GymCollector(env, constant_policy, Recorder(), bp_steps_per_env_step=ratio, warmup_steps=2)
    params = {"a": jnp.zeros(2)}
    col.begin_training(make_ctx(params))
    for step in range(1, cycles + 1):
        col.end_cycle(make_ctx(params, step))
    assert col.vector_steps == 2 + expected


def test_policy_key_is_seeded_and_advances():
    def actions(seed):
        env = htm_vector(n=2)
        rec = Recorder()
        GymCollector(env, random_policy, rec, warmup_steps=3, seed=seed).begin_training(make_ctx(RANDOM_PARAMS))
        return np.array([list(a.values()) for _, a in rec.calls])

    a0 = actions(0)
    np.testing.assert_array_equal(a0, actions(0))
    assert not np.allclose(a0, actions(1))
    assert len({tuple(np.round(x.ravel(), 6)) for x in a0}) == 3  # a fresh key every step


# ---- validation before any compiled call ----------------------------------------------------------


def test_discrete_action_space_is_rejected():
    env = gymnasium.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(TypeError, match="continuous Box action space.*Discrete"):
        GymCollector(env, random_policy, Recorder())
    with pytest.raises(TypeError, match="VectorEnv"):
        GymCollector(HitTheMiddle(), random_policy, Recorder())
    env.close()


class NaNEnv(HitTheMiddle):
    def __init__(self, nan_at_step):
        super().__init__()
        self.nan_at_step = nan_at_step

    def reset(self, **kw):
        obs, info = super().reset(**kw)
        if self.nan_at_step == 0:
            obs[1] = np.nan
        return obs, info

    def step(self, action):
        obs, *rest = super().step(action)
        if self._step == self.nan_at_step:
            obs[0] = np.inf
        return (obs, *rest)


@pytest.mark.parametrize("at, where", [(0, "reset"), (4, "env.step")])
def test_non_finite_observation_names_sub_env_and_step(at, where):
    env = SyncVectorEnv([lambda: HitTheMiddle(), lambda: HitTheMiddle(), lambda: NaNEnv(at)])
    col = GymCollector(env, random_policy, Recorder(), warmup_steps=10)
    with pytest.raises(NonFiniteObservationError, match=rf"sub-env 2 .*vector step {at} \({where}\)"):
        col.begin_training(make_ctx(RANDOM_PARAMS))


def test_failed_step_leaves_memory_consistent():
    env = SyncVectorEnv([lambda: HitTheMiddle(), lambda: NaNEnv(6)])
    table = make_table(env)
    proxy = MemoryProxy(table)
    col = GymCollector(env, random_policy, proxy, warmup_steps=10)
    with pytest.raises(NonFiniteObservationError):
        col.begin_training(make_ctx(RANDOM_PARAMS))
    col.end_training(make_ctx(RANDOM_PARAMS))  # as the trainer does after an error
    assert proxy.running_agents() == []
    # 5 transitions each are complete; the 6th (NaN) never got in, nothing bogus was made up
    assert len(table) == 10
    assert_all_transitions_follow_dynamics(table)
    assert all(table.get_episode(e)["truncated"] for e in table.episode_ids())


def test_policy_output_shape_checked_at_begin_training():
    env = htm_vector(n=3)
    bad = GymCollector(env, lambda p, o, k: jnp.zeros((o.shape[0], 2)), Recorder())
    with pytest.raises(PolicyOutputError, match=r"shape \(3, 2\), expected \(3, 1\)"):
        bad.begin_training(make_ctx(RANDOM_PARAMS))
    nan = GymCollector(env, lambda p, o, k: jnp.full((o.shape[0], 1), jnp.nan), Recorder())
    with pytest.raises(PolicyOutputError, match="non-finite"):
        nan.begin_training(make_ctx(RANDOM_PARAMS))
    missing = GymCollector(env, random_policy, Recorder(), params_slot="pi")
    with pytest.raises(KeyError, match="pi"):
        missing.begin_training(make_ctx(RANDOM_PARAMS))
    with pytest.raises(ValueError, match="bp_steps_per_env_step"):
        GymCollector(env, random_policy, Recorder(), bp_steps_per_env_step=0)


# ---- the threaded collector ------------------------------------------------------------------------


def wait_for(cond, timeout=20.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_threaded_collector_fills_memory_and_stops_cleanly():
    env = htm_vector()
    table = make_table(env)
    col = ThreadedGymCollector(env, random_policy, MemoryProxy(table), warmup_steps=10, random_warmup=True)
    params = {"w": jnp.ones(3)}
    col.begin_training(make_ctx(params))
    # the warm-up is in memory before training starts (the 10th transition waits for the next step's call)
    assert len(table) >= 9 * N_ENVS
    assert col.running
    for step in range(1, 6):
        col.end_cycle(make_ctx(params, step))
    assert col._thread_params["w"] is not params["w"]  # a copy, never the donated buffer
    wait_for(lambda: col.vector_steps >= 100)
    col.end_training(make_ctx(params))
    assert not col.running and col._thread is None
    steps = col.vector_steps
    time.sleep(0.05)
    assert col.vector_steps == steps  # really stopped
    assert len(table) == col.env_steps
    env.step(np.zeros((N_ENVS, 1), np.float32))  # not closed: the caller owns the env
    assert_all_transitions_follow_dynamics(table)
    env.close()


def test_threaded_collector_throttle_and_param_sync():
    env = SyncVectorEnv([lambda: EchoEnv() for _ in range(2)])
    rec = Recorder()
    col = ThreadedGymCollector(env, constant_policy, rec, max_env_steps_per_bp_step=2, param_sync_interval=3)
    col.begin_training(make_ctx({"a": jnp.array([0.0, 0.0])}))
    wait_for(lambda: col.vector_steps == 2)
    time.sleep(0.1)
    assert col.vector_steps == 2  # at most 2 * (0 + 1) steps before the first bp step
    for step in range(1, 4):
        col.end_cycle(make_ctx({"a": jnp.array([step / 10, 0.0])}, step))
    wait_for(lambda: col.vector_steps == 8)
    time.sleep(0.1)
    assert col.vector_steps == 8  # 2 * (3 + 1)
    col.end_training(make_ctx({"a": jnp.zeros(2)}))
    acts = action_log(rec)
    assert acts[:2] == [0.0, 0.0] and set(acts[2:]) <= {0.0, 0.3} and acts[-1] == 0.3  # synced at bp step 3 only


class BoomEnv(HitTheMiddle):
    def step(self, action):
        if self._step == 12:
            raise RuntimeError("boom in sub-env")
        return super().step(action)


def test_threaded_collector_reraises_env_error_on_training_thread():
    env = SyncVectorEnv([lambda: HitTheMiddle(), lambda: BoomEnv()])
    col = ThreadedGymCollector(env, random_policy, Recorder(), warmup_steps=2)
    col.begin_training(make_ctx(RANDOM_PARAMS))
    wait_for(lambda: col._error is not None)
    assert not col.running
    with pytest.raises(RuntimeError, match="boom in sub-env"):
        col.end_cycle(make_ctx(RANDOM_PARAMS))
    col.end_training(make_ctx(RANDOM_PARAMS))  # already raised: a clean shutdown now

    col2 = ThreadedGymCollector(SyncVectorEnv([lambda: BoomEnv()]), random_policy, Recorder())
    col2.begin_training(make_ctx(RANDOM_PARAMS))
    wait_for(lambda: col2._error is not None)
    with pytest.raises(RuntimeError, match="boom"):
        col2.end_training(make_ctx(RANDOM_PARAMS))  # not yet raised: end_training raises it


# ---- inside the trainer ----------------------------------------------------------------------------


def _trainer_parts():
    from emote_jax.callback import Callback

    class PolicyParams(Callback):
        """Owns the "policy" slot and changes the params every step (so donation would bite)."""

        def __init__(self):
            super().__init__(name="policy")

        def init_state(self, key):
            return {"params": {"a": jnp.zeros(1)}}

        def backward(self, ctx):
            p = ctx.state["policy"]["params"]
            return ctx.with_slot("policy", {"params": {"a": jnp.clip(p["a"] + 0.01, -1, 1)}})

    batches = [{"x": np.zeros((2, 1), np.float32)} for _ in range(30)]
    return PolicyParams(), batches


def test_inside_trainer_with_donated_params():
    from emote_jax.trainer import Trainer

    pp, batches = _trainer_parts()
    env = htm_vector(n=2)
    rec = Recorder()
    col = GymCollector(env, constant_policy, rec, bp_steps_per_env_step=2)
    Trainer([pp, col], batches, steps_per_call=5).train()
    assert col.vector_steps == 15
    # host hooks after a compiled call of 5 steps see the state after those 5 steps
    expected = [0.05] * 2 + [0.1] * 3 + [0.15] * 2 + [0.2] * 3 + [0.25] * 2 + [0.3] * 3
    np.testing.assert_allclose(action_log(rec), expected, atol=1e-4)


def test_threaded_error_stops_trainer():
    from emote_jax.callback import CallbackError
    from emote_jax.trainer import Trainer

    pp, _ = _trainer_parts()
    env = SyncVectorEnv([lambda: BoomEnv()])
    col = ThreadedGymCollector(env, constant_policy, Recorder())

    def slow_batches():
        while True:
            time.sleep(0.002)
            yield {"x": np.zeros((2, 1), np.float32)}

    with pytest.raises(CallbackError, match="boom") as info:
        Trainer([pp, col], slow_batches()).train()
    assert isinstance(info.value.original, RuntimeError)
    assert not col.running
