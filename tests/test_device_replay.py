"""The device replay buffer on hand-built data: only valid windows are drawn (inside one episode, still in
the ring), terminations and truncations are kept apart, and the layout is the host table's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.memory import device_replay

N = 2  # envs


def fill(capacity: int, episodes: list[list[tuple[int, str]]]) -> device_replay.Buffer:
    """Write ``len(episodes[0])`` vector steps. ``episodes[j][t] = (ep_step, end)`` for env j at step t, with
    end "" (the episode goes on), "term" or "trunc". Observation = 100 * step + env; next obs = that + 0.5."""
    buf = device_replay.init(capacity, N, obs_dim=1, action_dim=1)
    for t in range(len(episodes[0])):
        ids = np.array([100 * t + j for j in range(N)], np.float32)
        ep = np.array([episodes[j][t][0] for j in range(N)], np.int32)
        term = np.array([episodes[j][t][1] == "term" for j in range(N)])
        trunc = np.array([episodes[j][t][1] == "trunc" for j in range(N)])
        buf = device_replay.add(buf, jnp.asarray(ids[:, None]), jnp.asarray(ids[:, None]), jnp.asarray(ids),
                                jnp.asarray(ids[:, None] + 0.5), jnp.asarray(term), jnp.asarray(trunc), jnp.asarray(ep))
    return buf


# env 0: an episode of 3 that terminates, then one of 4 truncated, then 1 step of a third
# env 1: one episode of 8 steps, the last truncated
EPISODES = [
    [(0, ""), (1, ""), (2, "term"), (0, ""), (1, ""), (2, ""), (3, "trunc"), (0, "")],
    [(0, ""), (1, ""), (2, ""), (3, ""), (4, ""), (5, ""), (6, ""), (7, "trunc")],
]


def windows(batch: dict, t: int) -> list[tuple[int, ...]]:
    obs = np.asarray(batch["observation"]["obs"])[:, 0].reshape(-1, t)
    return [tuple(int(x) for x in row) for row in obs]


def test_windows_of_three_stay_inside_one_episode_and_cover_every_valid_one():
    buf = fill(16, EPISODES)
    valid = np.asarray(device_replay.valid_window_ends(buf, 3))
    # ends (step, env): env 0 at steps 2, 5, 6; env 1 at steps 2..7
    assert sorted(zip(*np.nonzero(valid[:8]), strict=True)) == [(2, 0), (2, 1), (3, 1), (4, 1), (5, 0), (5, 1),
                                                                 (6, 0), (6, 1), (7, 1)]
    assert not valid[8:].any()  # rows never written
    batch = jax.jit(device_replay.sample, static_argnums=(2, 3))(buf, jax.random.key(0), 2000, 3)
    drawn = windows(batch, 3)
    expected = {(100 * (e - 2) + j, 100 * (e - 1) + j, 100 * e + j) for e, j in zip(*np.nonzero(valid), strict=True)}
    assert set(drawn) == expected  # every valid window, and only those
    counts = np.array([drawn.count(w) for w in sorted(expected)])
    assert counts.min() > 2000 / 9 * 0.7 and counts.max() < 2000 / 9 * 1.3  # uniform over the 9
    # the window's end decides masks, terminated and truncated; next obs is the last transition's
    last = np.asarray(batch["observation"]["obs"])[2::3, 0].astype(int)
    step_of, env_of = last // 100, last % 100
    end = {(s, j): EPISODES[j][s][1] for j in range(N) for s in range(8)}
    kinds = [end[(s, j)] for s, j in zip(step_of, env_of, strict=True)]
    np.testing.assert_array_equal(np.asarray(batch["terminated"])[:, 0], [k == "term" for k in kinds])
    np.testing.assert_array_equal(np.asarray(batch["truncated"])[:, 0], [k == "trunc" for k in kinds])
    np.testing.assert_array_equal(np.asarray(batch["masks"])[:, 0], [k != "term" for k in kinds])
    np.testing.assert_array_equal(np.asarray(batch["next_observation"]["obs"])[:, 0], last + 0.5)
    np.testing.assert_array_equal(np.asarray(batch["rewards"]).reshape(-1, 3), np.asarray(
        batch["observation"]["obs"]).reshape(-1, 3))
    assert batch["actions"].shape == (6000, 1) and batch["rewards"].shape == (6000, 1)
    assert batch["masks"].shape == (2000, 1) and batch["next_observation"]["obs"].shape == (2000, 1)


def test_a_window_whose_start_was_overwritten_is_not_drawn():
    # capacity 6 after 8 steps: rows hold steps 2..7; env 1's windows of 3 ending at steps 2 and 3 lost their start
    buf = fill(6, EPISODES)
    batch = device_replay.sample(buf, jax.random.key(1), 3000, 3)
    drawn = set(windows(batch, 3))
    assert drawn == {(201, 301, 401), (301, 401, 501), (401, 501, 601), (501, 601, 701), (300, 400, 500),
                     (400, 500, 600)}
    assert int(buf["size"]) == 6 and int(buf["pos"]) == 2


@pytest.mark.parametrize("capacity", [16, 5])
def test_one_step_draws_every_written_transition_uniformly(capacity):
    buf = fill(capacity, EPISODES)
    batch = device_replay.sample(buf, jax.random.key(2), 4000, 1)
    ids = np.asarray(batch["observation"]["obs"])[:, 0].astype(int)
    kept = range(8 - min(capacity, 8), 8)
    assert set(ids) == {100 * s + j for s in kept for j in range(N)}
    counts = np.bincount(ids)[[100 * s + j for s in kept for j in range(N)]]
    mean = 4000 / (2 * len(kept))
    assert counts.min() > 0.75 * mean and counts.max() < 1.25 * mean
    np.testing.assert_array_equal(np.asarray(batch["next_observation"]["obs"])[:, 0], ids + 0.5)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="capacity >= 1"):
        device_replay.init(0, 1, 1, 1)
