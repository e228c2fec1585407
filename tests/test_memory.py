"""ReplayTable and MemoryProxy: bookkeeping, exact sample contents, ejection, uniformity, errors.

Synthetic episodes encode (agent a, episode e, step t) in every value, so each sampled row can be
checked exactly: obs_t = [a, e, t], grid = t, action_t = [code, -code], reward_t = code + 0.5 with
code = a*10000 + e*100 + t.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator

import jax
import numpy as np
import pytest

from emote_jax.memory import AgentObservation, EpisodeState, MemoryProxy, ReplayTable

SPEC = {"obs": ((3,), np.float32), "grid": ((2, 2), np.int16)}
ACTION_SHAPE = (2,)
INITIAL, RUNNING, TERMINAL, INTERRUPTED = (
    EpisodeState.INITIAL,
    EpisodeState.RUNNING,
    EpisodeState.TERMINAL,
    EpisodeState.INTERRUPTED,
)


def code(a: int, e: int, t: int) -> int:
    return a * 10000 + e * 100 + t


def obs_of(a: int, e: int, t: int) -> dict[str, np.ndarray]:
    return {"obs": np.array([a, e, t], np.float32), "grid": np.full((2, 2), t, np.int16)}


def action_of(a: int, e: int, t: int) -> np.ndarray:
    return np.array([code(a, e, t), -code(a, e, t)], np.float32)


def reward_of(a: int, e: int, t: int) -> float:
    return code(a, e, t) + 0.5


def episode_stream(a: int, e: int, length: int, end: EpisodeState = TERMINAL) -> Iterator[tuple]:
    """The (AgentObservation, action or None) of each call of one synthetic L-step episode."""
    yield AgentObservation(INITIAL, obs_of(a, e, 0), None), action_of(a, e, 0)
    for t in range(1, length):
        yield AgentObservation(RUNNING, obs_of(a, e, t), reward_of(a, e, t - 1)), action_of(a, e, t)
    yield AgentObservation(end, obs_of(a, e, length), reward_of(a, e, length - 1)), None


def drive(proxy: MemoryProxy, streams: dict[int, Iterator[tuple]]) -> None:
    """Feed several agents' streams to the proxy round-robin, one proxy.add per round."""
    live = dict(streams)
    while live:
        observations, actions = {}, {}
        for agent, stream in list(live.items()):
            item = next(stream, None)
            if item is None:
                del live[agent]
                continue
            observations[agent], action = item
            if action is not None:
                actions[agent] = action
        if observations:
            proxy.add(observations, actions)


def episodes(a: int, spec: list[tuple[int, EpisodeState]]) -> Iterator[tuple]:
    """Consecutive episodes e = 0, 1, ... of agent a with the given (length, end)."""
    return itertools.chain.from_iterable(episode_stream(a, e, n, end) for e, (n, end) in enumerate(spec))


def make(capacity: int = 1000, seed: int = 0) -> tuple[ReplayTable, MemoryProxy]:
    table = ReplayTable(capacity, SPEC, ACTION_SHAPE, seed=seed)
    return table, MemoryProxy(table)


def draw(table: ReplayTable, n: int, t_len: int = 1) -> dict:
    """``n`` rollouts, drawn as K batches of at most size // T (one batch may not exceed the table)."""
    chunk = min(n, table.size() // t_len)
    k = -(-n // chunk)
    s = table.sample(chunk, t_len, num_batches=k)

    def flat(x: np.ndarray, per_rollout: int) -> np.ndarray:
        return x.reshape(k * x.shape[1], *x.shape[2:])[: n * per_rollout]

    return {
        key: {sub: flat(v, 1 if key == "next_observation" else t_len) for sub, v in val.items()}
        if isinstance(val, dict)
        else flat(val, t_len if key in ("actions", "rewards") else 1)
        for key, val in s.items()
    }


def check_sample(s: dict, count: int, t_len: int, ends: dict[tuple[int, int], tuple[int, EpisodeState]]) -> np.ndarray:
    """Assert every row of a sample against the encoding; return the (count, T) codes sampled.

    ``ends[(a, e)] = (L, end_state)`` for the episodes that ended.
    """
    assert s["observation"]["obs"].shape == (count * t_len, 3)
    assert s["observation"]["grid"].shape == (count * t_len, 2, 2)
    assert s["next_observation"]["obs"].shape == (count, 3)
    assert s["actions"].shape == (count * t_len, 2)
    for k in ("rewards",):
        assert s[k].shape == (count * t_len, 1) and s[k].dtype == np.float32
    for k in ("masks", "terminated", "truncated"):
        assert s[k].shape == (count, 1) and s[k].dtype == np.float32

    obs = s["observation"]["obs"].reshape(count, t_len, 3).astype(int)
    a, e, t = obs[..., 0], obs[..., 1], obs[..., 2]
    # a rollout never crosses an episode boundary and its steps are consecutive
    assert np.all(a == a[:, :1]) and np.all(e == e[:, :1])
    assert np.all(np.diff(t, axis=1) == 1)
    codes = code(a, e, t)
    np.testing.assert_array_equal(s["observation"]["grid"].reshape(count, t_len, 4), np.repeat(t[..., None], 4, -1))
    np.testing.assert_array_equal(s["actions"].reshape(count, t_len, 2)[..., 0], codes)
    np.testing.assert_array_equal(s["actions"].reshape(count, t_len, 2)[..., 1], -codes)
    np.testing.assert_array_equal(s["rewards"].reshape(count, t_len), codes + 0.5)
    # next_observation is obs_{t+1} of the window's last step
    np.testing.assert_array_equal(s["next_observation"]["obs"], np.stack([a[:, -1], e[:, -1], t[:, -1] + 1], 1))
    np.testing.assert_array_equal(s["next_observation"]["grid"][:, 0, 0], t[:, -1] + 1)
    # masks: 0 only where the window ends the last step of a TERMINATED episode
    for i in range(count):
        length, end = ends.get((int(a[i, 0]), int(e[i, 0])), (None, None))
        last = length is not None and t[i, -1] + 1 == length
        assert s["masks"][i, 0] == (0.0 if last and end == TERMINAL else 1.0), (i, a[i], e[i], t[i])
        assert s["terminated"][i, 0] == 1.0 - s["masks"][i, 0]
        assert s["truncated"][i, 0] == (1.0 if last and end == INTERRUPTED else 0.0)
    return codes


# ---- bookkeeping ---------------------------------------------------------------------------------


def test_an_l_step_episode_stores_l_plus_1_observations_l_actions_l_rewards():
    table, proxy = make()
    drive(proxy, {7: episode_stream(7, 0, 5, TERMINAL)})
    assert table.size() == len(table) == 5
    assert table.num_episodes == 1
    (eid,) = table.episode_ids()
    ep = table.get_episode(eid)
    assert ep["agent_id"] == 7
    np.testing.assert_array_equal(ep["observations"]["obs"], [[7, 0, t] for t in range(6)])
    np.testing.assert_array_equal(ep["observations"]["grid"][:, 0, 0], np.arange(6))
    np.testing.assert_array_equal(ep["actions"], [action_of(7, 0, t) for t in range(5)])
    np.testing.assert_array_equal(ep["rewards"], [reward_of(7, 0, t) for t in range(5)])
    np.testing.assert_array_equal(ep["steps"], np.arange(5))
    assert ep["terminated"] and not ep["truncated"]
    assert proxy.pop_completed() == [(sum(reward_of(7, 0, t) for t in range(5)), 5, 7, True)]
    assert proxy.pop_completed() == [] and len(proxy.completed_episodes) == 0


def test_transitions_are_sampleable_while_the_episode_runs():
    table, proxy = make()
    stream = episode_stream(0, 0, 10, TERMINAL)
    proxy.add({0: (item := next(stream))[0]}, {0: item[1]})
    assert table.size() == 0 and table.num_episodes == 0  # INITIAL alone is no transition
    with pytest.raises(ValueError, match="asked for 1 rollouts of length 1 .* holds only 0"):
        table.sample(1)
    for _ in range(3):
        ob, act = next(stream)
        proxy.add({0: ob}, {0: act})
    assert table.size() == 3 and proxy.running_agents() == [0]
    s = draw(table, 200, 1)
    codes = check_sample(s, 200, 1, ends={})
    assert set(codes.ravel()) == {0, 1, 2}
    assert np.all(s["masks"] == 1.0) and np.all(s["truncated"] == 0.0)
    s = draw(table, 50, 3)  # the only window of length 3: steps 0, 1, 2
    assert np.all(check_sample(s, 50, 3, ends={}) == [0, 1, 2])


def test_every_sampled_row_matches_interleaved_agents_episodes():
    table, proxy = make(capacity=1000)
    spec0 = [(4, TERMINAL), (7, INTERRUPTED), (1, TERMINAL), (5, TERMINAL)]
    spec1 = [(9, INTERRUPTED), (3, TERMINAL), (6, TERMINAL)]
    drive(proxy, {0: episodes(0, spec0), 1: episodes(1, spec1)})
    ends = {(0, e): v for e, v in enumerate(spec0)} | {(1, e): v for e, v in enumerate(spec1)}
    total = sum(n for n, _ in spec0 + spec1)
    assert table.size() == total == 35 and table.num_episodes == 7

    codes = check_sample(draw(table, 3000, 1), 3000, 1, ends)
    every = {code(a, e, t) for (a, e), (n, _) in ends.items() for t in range(n)}
    assert set(codes.ravel()) == every  # all 35 transitions appear

    codes = check_sample(draw(table, 3000, 3), 3000, 3, ends)
    starts = {code(a, e, t) for (a, e), (n, _) in ends.items() for t in range(n - 2)}
    assert set(codes[:, 0]) == starts  # every window of 3 appears, and no other
    assert table.num_windows(3) == len(starts) == 35 - 7 * 2 + 1  # the 1-step episode has none


def test_masks_are_zero_only_at_the_end_of_a_terminated_episode():
    table, proxy = make()
    drive(proxy, {0: episode_stream(0, 0, 3, TERMINAL), 1: episode_stream(1, 0, 3, INTERRUPTED)})
    s = draw(table, 400, 1)
    t = s["observation"]["obs"][:, 2].astype(int)
    a = s["observation"]["obs"][:, 0].astype(int)
    end_term, end_trunc = (a == 0) & (t == 2), (a == 1) & (t == 2)
    assert end_term.any() and end_trunc.any()
    np.testing.assert_array_equal(s["masks"][:, 0], np.where(end_term, 0.0, 1.0))
    np.testing.assert_array_equal(s["terminated"][:, 0], end_term.astype(np.float32))
    np.testing.assert_array_equal(s["truncated"][:, 0], end_trunc.astype(np.float32))
    # with T=2 the mask is about the window's last step only
    s = draw(table, 400, 2)
    last_t = s["observation"]["obs"].reshape(400, 2, 3)[:, -1, 2]
    last_a = s["observation"]["obs"].reshape(400, 2, 3)[:, -1, 0]
    np.testing.assert_array_equal(s["masks"][:, 0], np.where((last_a == 0) & (last_t == 2), 0.0, 1.0))


def test_the_one_step_layout_gives_every_row_its_own_next_observation_and_mask():
    """``n_step=False`` (the reference's default table): T transitions per window, each with obs_{t+1},
    its own mask (0 only for the last step of a TERMINATED episode) and truncation flag."""
    table, proxy = make()
    drive(proxy, {0: episode_stream(0, 0, 4, TERMINAL), 1: episode_stream(1, 0, 4, INTERRUPTED)})
    s = table.sample(2, 3, num_batches=150, n_step=False)  # 300 windows, 2 per batch (8 transitions stored)
    assert s["next_observation"]["obs"].shape == (150, 6, 3) and s["next_observation"]["grid"].shape == (150, 6, 2, 2)
    for k in ("masks", "terminated", "truncated"):
        assert s[k].shape == (150, 6, 1) and s[k].dtype == np.float32
    s = jax.tree.map(lambda x: x.reshape(900, *x.shape[2:]), s)
    obs = s["observation"]["obs"].astype(int)  # (900, 3): rows i*3 .. i*3+2 one window
    np.testing.assert_array_equal(s["next_observation"]["obs"], obs + [0, 0, 1])  # each row's obs_{t+1}
    a, t = obs[:, 0], obs[:, 2]
    end_term, end_trunc = (a == 0) & (t == 3), (a == 1) & (t == 3)
    assert end_term.any() and end_trunc.any() and (t == 0).any()
    np.testing.assert_array_equal(s["masks"][:, 0], np.where(end_term, 0.0, 1.0))
    np.testing.assert_array_equal(s["truncated"][:, 0], end_trunc.astype(np.float32))
    assert np.all(np.diff(t.reshape(300, 3), axis=1) == 1)  # still windows of consecutive steps
    one = table.sample(2, 2, n_step=False)  # no K axis
    assert one["next_observation"]["obs"].shape == (4, 3) and one["masks"].shape == (4, 1)


# ---- ejection ------------------------------------------------------------------------------------


def test_fifo_ejection_keeps_the_newest_transitions():
    table, proxy = make(capacity=10)
    spec = [(4, TERMINAL)] * 5  # 20 transitions written in order
    drive(proxy, {0: episodes(0, spec)})
    assert table.size() == 10 and table.full()
    written = [code(0, e, t) for e in range(5) for t in range(4)]
    codes = check_sample(draw(table, 2000, 1), 2000, 1, {(0, e): v for e, v in enumerate(spec)})
    assert set(codes.ravel()) == set(written[-10:])
    # episode 2 lost steps 0, 1; episodes 0 and 1 are gone entirely
    assert table.num_episodes == 3
    ep = table.get_episode(table.episode_ids()[0])
    np.testing.assert_array_equal(ep["steps"], [2, 3])
    np.testing.assert_array_equal(ep["observations"]["obs"][:, 2], [2, 3, 4])
    # windows never start in an ejected prefix: episode 2 has one window of 2 left (t = 2, 3)
    assert table.num_windows(2) == 1 + 3 + 3
    codes = check_sample(draw(table, 1000, 2), 1000, 2, {(0, e): v for e, v in enumerate(spec)})
    assert set(codes[:, 0]) == {code(0, 2, 2)} | {code(0, e, t) for e in (3, 4) for t in range(3)}


def test_a_running_episode_survives_ejection_of_its_rows_by_another_agent():
    table, proxy = make(capacity=6)
    slow = episode_stream(1, 0, 6, TERMINAL)
    for _ in range(3):  # INITIAL + 2 steps: transitions t = 0, 1
        ob, act = next(slow)
        proxy.add({1: ob}, {1: act})
    drive(proxy, {0: episodes(0, [(5, TERMINAL), (5, TERMINAL)])})  # 10 rows: agent 1's rows are gone
    assert table.size() == 6
    assert all(table.get_episode(e)["agent_id"] == 0 for e in table.episode_ids())
    drive(proxy, {1: slow})  # t = 2..5, then TERMINAL
    ends = {(1, 0): (6, TERMINAL), (0, 0): (5, TERMINAL), (0, 1): (5, TERMINAL)}
    slow_id = [e for e in table.episode_ids() if table.get_episode(e)["agent_id"] == 1][0]
    ep = table.get_episode(slow_id)
    np.testing.assert_array_equal(ep["steps"], [2, 3, 4, 5])
    np.testing.assert_array_equal(ep["observations"]["obs"][:, 2], [2, 3, 4, 5, 6])
    assert ep["terminated"]
    codes = check_sample(draw(table, 500, 3), 500, 3, ends)
    assert set(codes[:, 0]) == {code(1, 0, 2), code(1, 0, 3)}  # agent 0 has only 2 rows left


def test_samples_are_fresh_arrays():
    table, proxy = make(capacity=8)
    drive(proxy, {0: episodes(0, [(8, TERMINAL)])})
    s = table.sample(4, 2)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else {kk: vv.copy() for kk, vv in v.items()}) for k, v in s.items()}
    drive(proxy, {0: episodes(5, [(8, INTERRUPTED)])})  # overwrite every row
    assert set(draw(table, 50)["observation"]["obs"][:, 0].astype(int)) == {5}
    for k, v in s.items():
        if isinstance(v, dict):
            for kk in v:
                np.testing.assert_array_equal(v[kk], before[k][kk])
        else:
            np.testing.assert_array_equal(v, before[k])
            assert v.base is None or not np.shares_memory(v, table._actions)


# ---- uniformity ----------------------------------------------------------------------------------


def test_sampling_is_uniform_over_valid_windows():
    table, proxy = make(seed=123)
    spec = [(1, TERMINAL), (3, TERMINAL), (6, INTERRUPTED), (2, TERMINAL)]
    drive(proxy, {0: episodes(0, spec)})
    windows = [code(0, e, t) for e, (n, _) in enumerate(spec) for t in range(n - 1)]
    assert table.num_windows(2) == len(windows) == 8
    n = 40_000
    s = draw(table, n, 2)
    counts = Counter(s["observation"]["obs"].reshape(n, 2, 3)[:, 0, 2].astype(int) + 100 * s["observation"]["obs"].reshape(n, 2, 3)[:, 0, 1].astype(int))
    assert set(counts) == set(windows)
    expected = n / len(windows)
    for w in windows:
        assert abs(counts[w] - expected) < 0.05 * expected, (w, counts[w], expected)


def test_sampling_is_uniform_over_the_ring_after_wraparound():
    table, proxy = make(capacity=7, seed=5)
    drive(proxy, {0: episodes(0, [(5, TERMINAL), (7, TERMINAL)])})  # 12 rows written into 7
    n = 35_000
    codes = check_sample(draw(table, n, 1), n, 1, {(0, 0): (5, TERMINAL), (0, 1): (7, TERMINAL)})
    counts = Counter(codes.ravel().tolist())
    assert sorted(counts) == [code(0, 1, t) for t in range(7)]
    assert all(abs(c - n / 7) < 0.05 * n / 7 for c in counts.values()), counts


def test_rare_windows_are_found_by_the_fallback():
    table, proxy = make(seed=1)
    drive(proxy, {0: episodes(0, [(1, TERMINAL)] * 30 + [(6, TERMINAL)])})
    assert table.num_windows(6) == 1  # 1 valid start among 36 rows
    codes = check_sample(draw(table, 100, 6), 100, 6, {(0, e): (1, TERMINAL) for e in range(30)} | {(0, 30): (6, TERMINAL)})
    assert np.all(codes == [code(0, 30, t) for t in range(6)])


# ---- threads -------------------------------------------------------------------------------------


def test_concurrent_writer_and_sampler_see_consistent_rows():
    table, proxy = make(capacity=64)
    drive(proxy, {2: episode_stream(2, 0, 70)})  # full before the writer starts
    spec = [(7, TERMINAL), (4, INTERRUPTED), (9, TERMINAL)] * 20
    writer = threading.Thread(target=drive, args=(proxy, {0: episodes(0, spec), 1: episodes(1, spec)}))
    writer.start()
    samples = 0
    while writer.is_alive() or samples < 5:
        s = table.sample(32, 2)
        obs = s["observation"]["obs"].reshape(32, 2, 3)
        assert np.all(obs[:, 1, 2] == obs[:, 0, 2] + 1) and np.all(obs[:, 1, :2] == obs[:, 0, :2])
        codes = code(obs[..., 0].astype(int), obs[..., 1].astype(int), obs[..., 2].astype(int))
        np.testing.assert_array_equal(s["actions"].reshape(32, 2, 2)[..., 0], codes)
        np.testing.assert_array_equal(s["rewards"].reshape(32, 2), codes + 0.5)
        np.testing.assert_array_equal(s["next_observation"]["obs"][:, 2], obs[:, 1, 2] + 1)
        samples += 1
    writer.join()
    assert table.size() == 64
    assert set(draw(table, 500)["observation"]["obs"][:, 0].astype(int)) == {0, 1}


# ---- proxy: stats, interruption, errors ----------------------------------------------------------


def test_interrupt_ends_running_episodes_as_truncated():
    table, proxy = make()
    stream = episode_stream(3, 0, 10)
    for _ in range(4):  # INITIAL + 3 steps: transitions 0, 1, 2
        ob, act = next(stream)
        proxy.add({3: ob}, {3: act})
    proxy.interrupt()
    assert proxy.running_agents() == []
    (eid,) = table.episode_ids()
    ep = table.get_episode(eid)
    assert ep["truncated"] and not ep["terminated"]
    np.testing.assert_array_equal(ep["steps"], [0, 1, 2])
    s = draw(table, 100, 3)
    assert np.all(s["masks"] == 1.0) and np.all(s["truncated"] == 1.0)
    assert proxy.pop_completed() == [(sum(reward_of(3, 0, t) for t in range(3)), 3, 3, False)]
    # the agent may start again
    drive(proxy, {3: episode_stream(3, 1, 2)})
    assert table.num_episodes == 2


def _obs(state, t=0, reward=1.0, **override):
    data = obs_of(0, 0, t) | override
    return AgentObservation(state, data, reward)


@pytest.mark.parametrize(
    "observations, actions, error, match",
    [
        ({0: _obs(RUNNING)}, {0: action_of(0, 0, 0)}, ValueError, "agent 0: got RUNNING but the agent has no running episode"),
        ({0: _obs(TERMINAL)}, {}, ValueError, "agent 0: got TERMINAL but the agent has no running episode"),
        ({0: _obs(INITIAL, reward=None)}, {}, ValueError, r"agent 0: expected an action .* got none"),
        ({0: _obs(INITIAL, reward=None)}, {0: action_of(0, 0, 0), 9: action_of(0, 0, 0)}, ValueError, r"actions for agents \[9\] that sent no observation"),
        ({0: _obs(INITIAL, reward=None, extra=np.zeros(1))}, {0: action_of(0, 0, 0)}, ValueError, r"expected array_data with keys \['grid', 'obs'\], got \['extra', 'grid', 'obs'\]"),
        ({0: _obs(INITIAL, reward=None, obs=np.zeros(4))}, {0: action_of(0, 0, 0)}, ValueError, r"agent 0: expected array_data\['obs'\] of shape \(3,\), got shape \(4,\)"),
        ({0: _obs(INITIAL, reward=None, grid=np.zeros((2, 2)))}, {0: action_of(0, 0, 0)}, TypeError, r"array_data\['grid'\] with a dtype castable to int16 .* got float64"),
        ({0: _obs(INITIAL, reward=None, obs=np.array([0, np.nan, 0]))}, {0: action_of(0, 0, 0)}, ValueError, r"expected finite values in array_data\['obs'\]"),
        ({0: _obs(INITIAL, reward=None)}, {0: np.zeros(3)}, ValueError, r"agent 0: expected action of shape \(2,\), got shape \(3,\)"),
        ({0: _obs(INITIAL, reward=None)}, {0: np.array([np.inf, 0])}, ValueError, "expected finite values in action"),
        ({0: "not an observation"}, {}, TypeError, "expected an AgentObservation, got str"),
    ],
)
def test_bad_input_raises_a_clear_error(observations, actions, error, match):
    table, proxy = make()
    with pytest.raises(error, match=match):
        proxy.add(observations, actions)
    assert table.size() == 0 and proxy.running_agents() == []


def test_step_errors_for_a_running_agent_change_nothing():
    table, proxy = make()
    proxy.add({0: _obs(INITIAL, reward=None), 1: _obs(INITIAL, reward=None)}, {0: action_of(0, 0, 0), 1: action_of(0, 0, 0)})
    with pytest.raises(ValueError, match="agent 1: got INITIAL while its episode .* is still running"):
        proxy.add({0: _obs(RUNNING, t=1), 1: _obs(INITIAL, reward=None)}, {0: action_of(0, 0, 1), 1: action_of(0, 0, 0)})
    with pytest.raises(ValueError, match="agent 0: expected the reward of the previous action with RUNNING, got None"):
        proxy.add({0: _obs(RUNNING, t=1, reward=None)}, {0: action_of(0, 0, 1)})
    with pytest.raises(ValueError, match="agent 1: expected a finite reward, got nan"):
        proxy.add({0: _obs(RUNNING, t=1), 1: _obs(RUNNING, t=1, reward=float("nan"))}, {0: action_of(0, 0, 1), 1: action_of(0, 0, 1)})
    assert table.size() == 0  # agent 0's valid step in the failed calls was not written
    proxy.add({0: _obs(RUNNING, t=1, reward=reward_of(0, 0, 0))}, {0: action_of(0, 0, 1)})
    assert table.size() == 1
    ep = table.get_episode(table.episode_ids()[0])
    np.testing.assert_array_equal(ep["steps"], [0])
    np.testing.assert_array_equal(ep["observations"]["obs"][:, 2], [0, 1])


def test_table_errors_name_what_was_expected():
    table = ReplayTable(4, SPEC, ACTION_SHAPE)
    good = dict(
        agent_ids=[0], episode_ids=[0], steps=[0], observation={k: v[None] for k, v in obs_of(0, 0, 0).items()},
        actions=action_of(0, 0, 0)[None], rewards=[1.0], next_observation={k: v[None] for k, v in obs_of(0, 0, 1).items()},
    )
    table.add_transitions(**good)
    with pytest.raises(ValueError, match=r"episode 0 \(index 0\): expected step 1 after step 0, got 5"):
        table.add_transitions(**(good | {"steps": [5]}))
    with pytest.raises(ValueError, match=r"expected actions of shape \(1, 2\), got shape \(2,\)"):
        table.add_transitions(**(good | {"steps": [1], "actions": action_of(0, 0, 0)}))
    with pytest.raises(ValueError, match="cannot be both terminated and truncated"):
        table.add_transitions(**(good | {"steps": [1], "terminated": np.array([True]), "truncated": np.array([True])}))
    with pytest.raises(ValueError, match="expected at most capacity=4 transitions per write, got 5"):
        table.add_transitions(**(good | {"episode_ids": [1] * 5}))
    assert table.size() == 1 and table.get_episode(0)["steps"].tolist() == [0]
    with pytest.raises(ValueError, match=r"asked for 2 rollouts of length 1 \(2 transitions\), but the table holds only 1"):
        table.sample(2)
    table.add_transitions(**(good | {"episode_ids": [1]}))  # two 1-step episodes: no window of 2
    with pytest.raises(ValueError, match="expected at least one window of rollout_length=2 consecutive transitions .* longest stored episode stretch has 1"):
        table.sample(1, 2)
    with pytest.raises(ValueError, match="expected count to be an int >= 1, got 0"):
        table.sample(0)
    with pytest.raises(ValueError, match="expected capacity to be an int >= 1, got 0"):
        ReplayTable(0, SPEC, ACTION_SHAPE)
    with pytest.raises(ValueError, match=r"observation_spec\['x'\] = \(shape, dtype\)"):
        ReplayTable(4, {"x": (3,)}, ACTION_SHAPE)


# ---- whole episodes per call (add_transitions): the per-episode bookkeeping ------------------------


def _episode_rows(table, eid, steps, end=None, offset=0.0):
    """Write one stretch of episode ``eid`` (``steps``) in one add_transitions call; obs = [eid, step]."""
    n = len(steps)
    steps = np.asarray(steps)
    obs = np.stack([np.full(n, eid), steps], 1).astype(np.float32) + offset
    term = np.zeros(n, bool)
    if end is not None:
        term[-1] = end
    return dict(agent_ids=np.zeros(n, np.int64), episode_ids=np.full(n, eid), steps=steps,
                observation={"obs": obs}, actions=np.zeros((n, 1), np.float32), rewards=np.zeros(n, np.float32),
                next_observation={"obs": obs + [0, 1]}, terminated=term, truncated=np.zeros(n, bool))


def _concat(*parts):
    return {k: ({kk: np.concatenate([p[k][kk] for p in parts]) for kk in parts[0][k]} if isinstance(parts[0][k], dict)
                else np.concatenate([p[k] for p in parts])) for k in parts[0]}


def test_whole_episodes_in_one_call_chain_within_each_episode_and_are_ejected_whole():
    table = ReplayTable(30, {"obs": ((2,), np.float32)}, (1,), seed=0)
    # one call: episode 1 (steps 0..4, terminated), episode 2 (0..2, running), interleaved with episode 3
    a, b, c = _episode_rows(table, 1, range(5), end=True), _episode_rows(table, 2, range(3)), _episode_rows(table, 3, [0, 1])
    table.add_transitions(**_concat(a, c, b))
    table.add_transitions(**_episode_rows(table, 2, range(3, 6), end=True))  # episode 2 continues from its tip
    s = table.sample(4, 3, num_batches=100)
    obs = s["observation"]["obs"].reshape(400, 3, 2)
    assert np.all(obs[:, :, 0] == obs[:, :1, 0]) and np.all(np.diff(obs[:, :, 1], axis=1) == 1)  # within episodes
    assert set(obs[:, 0, 0].astype(int)) == {1, 2}  # episode 3 (2 rows) has no window of 3
    assert {int(o) for o in obs[:, 0, 1][obs[:, 0, 0] == 2]} == {0, 1, 2, 3}  # the chain 2 -> 3 holds
    assert table.episode_ids() == [1, 2, 3]
    # rows 0-4 episode 1, 5-6 episode 3, 7-12 episode 2; 22 more wrap the ring (capacity 30) over rows 0-4
    table.add_transitions(**_episode_rows(table, 4, range(22), end=True))
    assert table.episode_ids() == [2, 3, 4] and table.size() == 30  # episode 1 went whole
    table.add_transitions(**_episode_rows(table, 5, range(4), end=True))  # rows 5-8: episode 3, two of 2's
    assert table.episode_ids() == [2, 4, 5]
    assert table.get_episode(2)["steps"].tolist() == [2, 3, 4, 5]  # its newest rows, still chained


def test_an_episode_ended_and_restarted_in_one_call_is_not_chained_across_the_end():
    table = ReplayTable(30, {"obs": ((2,), np.float32)}, (1,), seed=0)
    first, again = _episode_rows(table, 7, range(3), end=True), _episode_rows(table, 7, range(3), offset=100.0)
    table.add_transitions(**_concat(first, again))
    obs = table.sample(3, 2, num_batches=100)["observation"]["obs"].reshape(300, 2, 2)
    assert np.all((obs[:, 0, 1] < 100) == (obs[:, 1, 1] < 100))  # no window spans the end


def test_a_gap_inside_one_call_is_refused_and_nothing_is_written():
    table = ReplayTable(30, {"obs": ((2,), np.float32)}, (1,), seed=0)
    with pytest.raises(ValueError, match=r"episode 3 \(index 2\): expected step 2 after step 1, got 4"):
        table.add_transitions(**_episode_rows(table, 3, [0, 1, 4, 5]))
    assert table.size() == 0 and table.episode_ids() == []
