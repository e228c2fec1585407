"""MemoryWarmup: a host callback that holds training back until the loader can sample."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context

ShutdownSignal = Callable[[], bool] | threading.Event


class MemoryWarmup(HostCallback):
    """Blocks ``begin_training`` until ``loader.is_ready()``, polling every ``poll_interval`` seconds.

    Use it when a collector fills the memory on a background thread; with a collector that only steps
    inside the training loop it would wait forever (hence ``timeout``).

    Args:
        loader: anything with ``is_ready() -> bool`` (a :class:`MemoryLoader`).
        poll_interval: seconds between checks.
        timeout: seconds to wait before a TimeoutError; ``None`` waits forever.
        shutdown_signal: a ``threading.Event`` or a ``() -> bool``; once set/true the wait ends with
            :class:`~emote_jax.callback.TrainingShutdownException` (training then shuts down cleanly).
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
        self._loader = loader
        self._poll_interval = float(poll_interval)
        self._timeout = timeout
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

    def begin_training(self, ctx: Context) -> None:
        """Return once the loader is ready; raise on shutdown or timeout."""
        start = time.monotonic()
        while not self._loader.is_ready():
            if self._signalled():
                raise TrainingShutdownException(f"{self.name}: shutdown signalled while waiting for memory")
            waited = time.monotonic() - start
            if self._timeout is not None and waited >= self._timeout:
                table = getattr(self._loader, "table", None)
                have = f"{table.size()} transitions" if table is not None else "not enough data"
                need = getattr(self._loader, "batch_size", "?")
                raise TimeoutError(
                    f"{self.name}: the memory was not ready after {waited:.2f} s (timeout={self._timeout}): "
                    f"expected {need} transitions, got {have}. Is a collector filling it in the background?"
                )
            if self._event is not None:
                self._event.wait(self._poll_interval)  # wakes at once on shutdown
            else:
                time.sleep(self._poll_interval)
        return None
