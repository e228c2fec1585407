"""MemoryLoader (plain, stacked K, prefetching) and MemoryWarmup."""

from __future__ import annotations

import gc
import threading
import time

import jax
import numpy as np
import pytest

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.memory import MemoryLoader, MemoryNotReadyError, MemoryWarmup, ReplayTable

OBS = {"obs": ((3,), np.float32)}


def fill(table: ReplayTable, episode: int, length: int, start_step: int = 0, terminated: bool = True) -> None:
    """Write one episode of ``length`` transitions; obs_t = [episode, t, 0], action_t = [episode*100 + t]."""
    t = np.arange(start_step, start_step + length)
    table.add_transitions(
        agent_ids=np.zeros(length, int),
        episode_ids=np.full(length, episode),
        steps=t,
        observation={"obs": np.stack([np.full(length, episode), t, np.zeros(length)], 1)},
        actions=(episode * 100 + t)[:, None].astype(np.float32),
        rewards=(episode * 100 + t).astype(np.float32),
        next_observation={"obs": np.stack([np.full(length, episode), t + 1, np.zeros(length)], 1)},
        terminated=(t == start_step + length - 1) & terminated,
    )


def make_table(episodes: int = 4, length: int = 10, capacity: int = 100) -> ReplayTable:
    table = ReplayTable(capacity, OBS, (1,), seed=0)
    for e in range(episodes):
        fill(table, e, length)
    return table


def assert_consistent(data: dict, count: int, t_len: int) -> None:
    """Rollout-major rows: consecutive steps of one episode; actions/rewards/next_observation aligned."""
    obs = np.asarray(data["observation"]["obs"]).reshape(count, t_len, 3)
    ep, t = obs[..., 0], obs[..., 1]
    assert np.all(ep == ep[:, :1]) and np.all(np.diff(t, axis=1) == 1)
    np.testing.assert_array_equal(np.asarray(data["actions"]).reshape(count, t_len), ep * 100 + t)
    np.testing.assert_array_equal(np.asarray(data["rewards"]).reshape(count, t_len), ep * 100 + t)
    np.testing.assert_array_equal(np.asarray(data["next_observation"]["obs"])[:, 1], t[:, -1] + 1)
    np.testing.assert_array_equal(np.asarray(data["masks"])[:, 0], np.where(t[:, -1] == 9, 0.0, 1.0))


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "MemoryLoader-prefetch"]


def test_batch_layout():
    loader = MemoryLoader(make_table(), rollout_count=8, rollout_length=2, size_key="batch_size", data_group="default")
    assert loader.steps_per_call == 1
    batch = next(iter(loader))
    assert set(batch) == {"default", "batch_size"} and batch["batch_size"] == 16
    data = batch["default"]
    assert set(data) == {"observation", "next_observation", "actions", "rewards", "masks", "terminated", "truncated"}
    assert data["observation"]["obs"].shape == (16, 3) and data["next_observation"]["obs"].shape == (8, 3)
    assert data["actions"].shape == (16, 1) and data["rewards"].shape == (16, 1)
    assert data["masks"].shape == data["terminated"].shape == data["truncated"].shape == (8, 1)
    assert isinstance(data["actions"], np.ndarray)
    assert_consistent(data, 8, 2)


def test_steps_per_call_stacks_k_batches():
    loader = MemoryLoader(make_table(), rollout_count=5, rollout_length=3, size_key="bs", data_group="g", steps_per_call=3)
    batch = next(iter(loader))
    assert batch["bs"] == 15 and isinstance(batch["bs"], int)
    data = batch["g"]
    assert data["observation"]["obs"].shape == (3, 15, 3)
    assert data["next_observation"]["obs"].shape == (3, 5, 3)
    assert data["actions"].shape == (3, 15, 1) and data["rewards"].shape == (3, 15, 1)
    for k in ("masks", "terminated", "truncated"):
        assert data[k].shape == (3, 5, 1)
    for j in range(3):
        assert_consistent(jax.tree.map(lambda x: x[j], data), 5, 3)
    # a table of exactly one batch is ready, and K batches may be drawn from it (with replacement)
    small = make_table(episodes=1, length=15)
    assert next(iter(MemoryLoader(small, 5, 3, steps_per_call=3)))["default"]["actions"].shape == (3, 15, 1)


def test_not_ready_raises_a_clear_error():
    table = make_table(episodes=1, length=10)
    loader = MemoryLoader(table, rollout_count=4, rollout_length=3)
    assert not loader.is_ready()
    it = iter(loader)  # allowed before a warm-up; the check is at the first batch
    with pytest.raises(MemoryNotReadyError, match=r"expected at least 12 transitions .* got 10"):
        next(it)
    fill(table, 1, 2)
    assert loader.is_ready()
    assert_consistent(next(iter(loader))["default"], 4, 3)


def test_prefetch_yields_device_batches_and_close_stops_the_thread():
    loader = MemoryLoader(make_table(), rollout_count=4, rollout_length=2, steps_per_call=2, prefetch=True)
    it = iter(loader)
    for _ in range(5):
        batch = next(it)
        assert batch["batch_size"] == 8
        assert isinstance(batch["default"]["actions"], jax.Array)
        assert batch["default"]["actions"].shape == (2, 8, 1)
        for j in range(2):
            assert_consistent(jax.tree.map(lambda x: np.asarray(x[j]), batch["default"]), 4, 2)
    (thread,) = prefetch_threads()
    assert thread.daemon
    loader.close()
    assert not thread.is_alive() and prefetch_threads() == []
    with pytest.raises(RuntimeError, match="prefetch thread stopped"):
        for _ in range(10):  # batches already queued may still come out
            next(it)


def test_dropping_a_prefetching_iterator_stops_its_thread():
    loader = MemoryLoader(make_table(), rollout_count=4, prefetch=True)
    it = iter(loader)
    next(it)
    (thread,) = prefetch_threads()
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()


class FlakyTable:
    """Delegates to a table, but the n-th sample raises."""

    def __init__(self, table: ReplayTable, fail_at: int):
        self.table, self.calls, self.fail_at = table, 0, fail_at

    def size(self) -> int:
        return self.table.size()

    def sample(self, *args, **kwargs):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError(f"boom at sample {self.calls}")
        return self.table.sample(*args, **kwargs)


def test_prefetch_propagates_sampler_exceptions():
    loader = MemoryLoader(FlakyTable(make_table(), fail_at=3), rollout_count=4, prefetch=True)
    it = iter(loader)
    next(it), next(it)
    with pytest.raises(RuntimeError, match="boom at sample 3"):
        next(it)
    with pytest.raises(StopIteration):  # the generator is finished and its thread gone
        next(it)
    assert prefetch_threads() == []


def test_constructor_checks():
    table = make_table()
    with pytest.raises(ValueError, match="expected rollout_count to be an int >= 1, got 0"):
        MemoryLoader(table, 0)
    with pytest.raises(ValueError, match="expected steps_per_call to be an int >= 1, got 1.5"):
        MemoryLoader(table, 4, steps_per_call=1.5)
    with pytest.raises(ValueError, match="expected size_key and data_group to differ"):
        MemoryLoader(table, 4, size_key="x", data_group="x")


# ---- MemoryWarmup --------------------------------------------------------------------------------


def test_warmup_returns_once_a_background_thread_fills_the_table():
    table = ReplayTable(100, OBS, (1,))
    loader = MemoryLoader(table, rollout_count=20)
    warmup = MemoryWarmup(loader, poll_interval=0.01, timeout=10)
    assert isinstance(warmup, HostCallback) and warmup.order == 100

    def collector():
        for e in range(5):
            time.sleep(0.02)
            fill(table, e, 5)

    thread = threading.Thread(target=collector)
    thread.start()
    assert warmup.begin_training(None) is None
    assert loader.is_ready() and table.size() >= 20
    thread.join()


def test_warmup_raises_shutdown_when_the_signal_fires():
    loader = MemoryLoader(ReplayTable(10, OBS, (1,)), rollout_count=5)
    event = threading.Event()
    threading.Timer(0.05, event.set).start()
    with pytest.raises(TrainingShutdownException):
        MemoryWarmup(loader, poll_interval=0.01, timeout=10, shutdown_signal=event).begin_training(None)
    calls = []
    with pytest.raises(TrainingShutdownException):
        MemoryWarmup(loader, poll_interval=0.01, shutdown_signal=lambda: calls.append(1) or len(calls) > 3).begin_training(None)
    assert len(calls) == 4


def test_warmup_times_out_with_a_clear_error():
    loader = MemoryLoader(ReplayTable(10, OBS, (1,)), rollout_count=5)
    with pytest.raises(TimeoutError, match=r"not ready after .* expected 5 transitions, got 0 transitions"):
        MemoryWarmup(loader, poll_interval=0.01, timeout=0.05).begin_training(None)
