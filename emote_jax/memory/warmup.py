"""MemoryWarmup: a host callback that holds training back until the loader can sample."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context
from emote_jax.faults import shutdown_requested

ShutdownSignal = Callable[[], bool] | threading.Event


class WarmupCollector(Protocol):
    """What :class:`MemoryWarmup` needs of a collector to fill the memory (a ``GymCollector`` has it)."""

    name: str
    random_warmup: bool
    #: True when the collector steps on its own thread: then ``fill`` returns at once and the warm-up waits.
    collects_in_background: bool

    def fill(self, ctx: Context, ready: Callable[[], bool], max_vector_steps: int) -> int: ...

    def raise_if_failed(self) -> None: ...


class MemoryWarmup(HostCallback):
    """Holds ``begin_training`` back until ``loader.is_ready()``; it never waits on something that cannot come.

    With a ``collector`` that steps inside the training loop (a ``GymCollector``), a memory that the
    collector's own warm-up left short of one batch is filled by that collector at once (more warm-up
    steps, random or policy actions as it is configured), and one line says so. With a collector on a
    background thread (a ``ThreadedGymCollector``) its thread is allowed past its step cap until the
    loader is ready, and the warm-up waits, printing progress every ``report_interval`` seconds. Without
    a collector it only waits (a filler of your own must be running).

    Every wait ends on a first SIGINT/SIGTERM during ``Trainer.train`` (a clean shutdown), on
    ``shutdown_signal``, on an error of the collector's thread, or after ``timeout`` seconds.

    Args:
        loader: anything with ``is_ready() -> bool`` (a :class:`MemoryLoader`).
        poll_interval: seconds between checks.
        timeout: seconds to wait before a TimeoutError; ``None`` waits as long as it takes.
        shutdown_signal: a ``threading.Event`` or a ``() -> bool``; once set/true the wait ends with
            :class:`~emote_jax.callback.TrainingShutdownException` (training then shuts down cleanly).
        collector: the collector that fills the memory (see above); optional.
        out: where the one-line notice and the progress lines go (``None``: standard error).
        report_interval: seconds between progress lines while waiting on a background collector.
        name, order, cycle: as for every callback; ``order`` defaults to 100 so that it runs after the
            callbacks that start collectors.
    """

    def __init__(
        self,
        loader: Any,
        poll_interval: float = 0.05,
        timeout: float | None = None,
        shutdown_signal: ShutdownSignal | None = None,
        *,
        collector: WarmupCollector | None = None,
        out: TextIO | None = None,
        report_interval: float = 5.0,
        name: str | None = None,
        order: int = 100,
        cycle: int | None = None,
    ):
        super().__init__(name=name, order=order, cycle=cycle)
        if not callable(getattr(loader, "is_ready", None)):
            raise TypeError(f"MemoryWarmup: expected a loader with is_ready(), got {type(loader).__name__}")
        if poll_interval <= 0:
            raise ValueError(f"MemoryWarmup: expected poll_interval > 0, got {poll_interval}")
        if timeout is not None and timeout < 0:
            raise ValueError(f"MemoryWarmup: expected timeout >= 0 or None, got {timeout}")
        if report_interval <= 0:
            raise ValueError(f"MemoryWarmup: expected report_interval > 0, got {report_interval}")
        if collector is not None and not callable(getattr(collector, "fill", None)):
            raise TypeError(f"MemoryWarmup: expected a collector with fill() (a GymCollector), got "
                            f"{type(collector).__name__}")
        self._loader = loader
        self._poll_interval = float(poll_interval)
        self._timeout = timeout
        self._collector = collector
        self._out = out
        self._report_interval = float(report_interval)
        self._event = shutdown_signal if isinstance(shutdown_signal, threading.Event) else None
        if shutdown_signal is None:
            self._signalled: Callable[[], bool] = lambda: False
        elif self._event is not None:
            self._signalled = self._event.is_set
        elif callable(shutdown_signal):
            self._signalled = shutdown_signal
        else:
            raise TypeError(
                f"MemoryWarmup: expected shutdown_signal to be a threading.Event or a callable, "
                f"got {type(shutdown_signal).__name__}"
            )

    # ---- what the memory holds -------------------------------------------------------------------
    def _have_need(self) -> tuple[str, str]:
        table = getattr(self._loader, "table", None)
        have = f"{table.size()}" if table is not None else "not enough"
        return have, f"{getattr(self._loader, 'batch_size', '?')} transitions"

    def _say(self, line: str) -> None:
        print(f"emote_jax: {line}", file=self._out or sys.stderr, flush=True)

    # ---- the hook ----------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        """Return once the loader is ready; raise on shutdown, timeout, or a failed collector."""
        if self._loader.is_ready():
            return None
        if self._collector is not None:
            have, need = self._have_need()
            actions = "random" if self._collector.random_warmup else "policy"
            self._say(f"{self.name}: the memory holds {have} transitions, one batch needs {need}: {self._collector.name} "
                      f"keeps collecting ({actions} actions) until the loader can sample")
            need_n = getattr(self._loader, "batch_size", 1)
            self._collector.fill(ctx, self._loader.is_ready, max_vector_steps=10 * int(need_n) + 1000)
        self._wait()
        return None

    def _wait(self) -> None:
        start = last_report = time.monotonic()
        while not self._loader.is_ready():
            signal = shutdown_requested()
            if signal is not None or self._signalled():
                raise TrainingShutdownException(
                    f"{self.name}: shutdown {'by ' + signal if signal else 'signalled'} while waiting for memory"
                )
            if self._collector is not None:
                self._collector.raise_if_failed()
            now = time.monotonic()
            waited = now - start
            if self._timeout is not None and waited >= self._timeout:
                have, need = self._have_need()
                raise TimeoutError(
                    f"{self.name}: the memory was not ready after {waited:.2f} s (timeout={self._timeout}): "
                    f"expected {need}, got {have} transitions. Is a collector filling it in the background?"
                )
            if now - last_report >= self._report_interval:
                last_report = now
                have, need = self._have_need()
                self._say(f"{self.name}: waiting for the memory: {have} of {need} ({waited:.0f} s)")
            if self._event is not None:
                self._event.wait(self._poll_interval)  # wakes at once on shutdown
            else:
                time.sleep(self._poll_interval)
