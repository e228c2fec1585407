"""The memory loader: an endless iterable of batches sampled from a :class:`ReplayTable`."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from emote_jax.memory import _checks
from emote_jax.memory.table import ReplayTable

Batch = dict[str, Any]


class MemoryNotReadyError(RuntimeError):
    """Raised when a loader is asked for a batch before its table holds enough transitions."""


class MemoryLoader:
    """Yields batches forever: ``{data_group: <ReplayTable.sample dict>, size_key: count * T}``.

    Args:
        table: the table to sample from.
        rollout_count: rollouts per batch (``count``).
        rollout_length: transitions per rollout (``T``).
        size_key: the key holding the per-step batch size ``count * T`` (a Python int).
        data_group: the key holding the sampled arrays.
        steps_per_call: K. With K > 1 one table call samples K batches of ``count`` windows (one
            gather, ``ReplayTable.sample(num_batches=K)``) and every array gets a leading axis K:
            ``observation[k]`` (K, count*T, *shape), ``next_observation[k]`` (K, count, *shape), ``actions`` (K, count*T, *action_shape), ``rewards`` (K, count*T, 1),
            ``masks``/``terminated``/``truncated`` (K, count, 1). The trainer scans over axis 0.
            ``size_key`` stays the per-step batch size. With K = 1 there is no leading axis.
        prefetch: sample the next batch on a background daemon thread and ``jax.device_put`` it while
            the consumer works (arrays then are ``jax.Array``; otherwise NumPy).
        prefetch_depth: batches the prefetch thread may hold ready.
        n_step: True: one n-step target per window (``next_observation``/``masks`` per window). False:
            the reference's default table, T independent one-step transitions per window
            (``next_observation``/``masks``/``terminated``/``truncated`` per row, ``count*T`` rows).

    Readiness (as in the reference): ``table.size() >= rollout_count * rollout_length``. Rollouts are
    drawn with replacement and the table's size check is per batch, so K > 1 needs no more data. A
    table whose episodes are all shorter than T is "ready" but cannot be sampled; the first batch then
    raises the table's ValueError.

    Iteration checks readiness at the first ``next`` (so ``iter()`` may be called before a warm-up) and
    raises :class:`MemoryNotReadyError` if the table is not ready. With ``prefetch``, the thread starts
    there and stops when the iterator is closed or garbage collected, or on :meth:`close`; an exception
    raised while sampling is re-raised to the consumer.
    """

    def __init__(
        self,
        table: ReplayTable,
        rollout_count: int,
        rollout_length: int = 1,
        size_key: str = "batch_size",
        data_group: str = "default",
        steps_per_call: int = 1,
        prefetch: bool = False,
        prefetch_depth: int = 2,
        n_step: bool = True,
    ):
        where = "MemoryLoader"
        self.table = table
        self.rollout_count = _checks.positive_int(rollout_count, "rollout_count", where)
        self.rollout_length = _checks.positive_int(rollout_length, "rollout_length", where)
        self.steps_per_call = _checks.positive_int(steps_per_call, "steps_per_call", where)
        self.prefetch_depth = _checks.positive_int(prefetch_depth, "prefetch_depth", where)
        if size_key == data_group:
            raise ValueError(f"{where}: expected size_key and data_group to differ, got {size_key!r} for both")
        self.size_key = size_key
        self.data_group = data_group
        self.prefetch = bool(prefetch)
        self.n_step = bool(n_step)
        self._prefetchers: set[_Prefetcher] = set()
        self._prefetchers_lock = threading.Lock()

    @property
    def batch_size(self) -> int:
        """Transitions per step: ``rollout_count * rollout_length``."""
        return self.rollout_count * self.rollout_length

    def is_ready(self) -> bool:
        """True once the table holds at least ``rollout_count * rollout_length`` transitions."""
        return self.table.size() >= self.batch_size

    def sample_batch(self) -> Batch:
        """One batch (NumPy arrays), stacked over K when ``steps_per_call > 1``."""
        if not self.is_ready():
            raise MemoryNotReadyError(
                f"MemoryLoader: expected at least {self.batch_size} transitions "
                f"(rollout_count={self.rollout_count} * rollout_length={self.rollout_length}) before "
                f"sampling, got {self.table.size()}. Check is_ready() first, or add a MemoryWarmup."
            )
        k = self.steps_per_call
        data = self.table.sample(self.rollout_count, self.rollout_length, num_batches=k if k > 1 else None,
                                 n_step=self.n_step)
        return {self.data_group: data, self.size_key: self.batch_size}

    def __iter__(self) -> Iterator[Batch]:
        return self._prefetching() if self.prefetch else self._plain()

    def close(self) -> None:
        """Stop every prefetch thread started by this loader's iterators (they then end)."""
        with self._prefetchers_lock:
            prefetchers = list(self._prefetchers)
        for p in prefetchers:
            p.stop()

    def __enter__(self) -> MemoryLoader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- iterators -------------------------------------------------------------------------------
    def _plain(self) -> Iterator[Batch]:
        while True:
            yield self.sample_batch()

    def _prefetching(self) -> Iterator[Batch]:
        first = self.sample_batch()  # readiness and sampling errors surface here, in the consumer
        prefetcher = _Prefetcher(_device_putter(self.sample_batch, self.data_group), self.prefetch_depth)
        with self._prefetchers_lock:
            self._prefetchers.add(prefetcher)
        try:
            yield _device_putter(lambda: first, self.data_group)()
            while True:
                yield prefetcher.get()
        finally:  # also on GeneratorExit when the iterator is closed or collected
            prefetcher.stop()
            with self._prefetchers_lock:
                self._prefetchers.discard(prefetcher)


def _device_putter(sample: Callable[[], Batch], data_group: str) -> Callable[[], Batch]:
    """Wrap ``sample`` so that the data group is moved to the default device in one transfer."""
    import jax  # only the prefetch path touches JAX

    def produce() -> Batch:
        batch = sample()
        return {**batch, data_group: jax.device_put(batch[data_group])}

    return produce


class _Prefetcher:
    """A daemon thread that calls ``produce`` ahead of the consumer and hands results over a queue."""

    _POLL_S = 0.05

    def __init__(self, produce: Callable[[], Batch], depth: int):
        self._queue: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_prefetch_worker,
            args=(produce, self._queue, self._stop, self._POLL_S),
            name="MemoryLoader-prefetch",
            daemon=True,
        )
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def get(self) -> Batch:
        """The next batch; re-raises an exception the thread hit while sampling."""
        while True:
            try:
                ok, value = self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("MemoryLoader: the prefetch thread stopped; the loader was closed") from None
                continue
            if not ok:
                raise value
            return value

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def _prefetch_worker(
    produce: Callable[[], Batch], out: queue.Queue, stop: threading.Event, poll_s: float
) -> None:
    """Produce batches into ``out`` until ``stop`` is set; pass the first exception on and end.

    Holds no reference to the loader's iterator, so dropping the iterator can stop this thread.
    """
    while not stop.is_set():
        try:
            item: tuple[bool, Any] = (True, produce())
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            item = (False, err)
        while not stop.is_set():
            try:
                out.put(item, timeout=poll_s)
                break
            except queue.Full:
                continue
        if not item[0]:
            return
