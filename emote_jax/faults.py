"""Faults the training loop survives or reports: signals, non-finite values, aborts.

* :class:`SignalShutdown` turns the first SIGINT/SIGTERM during ``Trainer.train`` into a clean shutdown
  (the loop stops at the next step boundary, every ``end_training`` runs, a :class:`~emote_jax.checkpoint.
  Checkpointer` writes its final checkpoint); a second signal raises :class:`TrainingAborted` at once.
* Non-finite guard: a device hook logs a flag metric ``<callback name>/nonfinite`` (1.0 when the loss,
  the gradients or the parameters of that step are not finite, computed on the device, brought back
  with the other metrics once per compiled call); :func:`first_nonfinite` finds the first flagged step
  and the trainer raises :class:`NonFiniteError` naming the callback and that step.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any, TextIO

import numpy as np

#: A metric whose name ends with this is a non-finite flag: 1.0 on a bad step, 0.0 otherwise
#: (NaN on steps where a cycle hook that logs it did not run).
NONFINITE_SUFFIX = "/nonfinite"


class NonFiniteError(FloatingPointError):
    """A callback produced a non-finite loss, gradient or parameter.

    Attributes:
        callback: the callback's name (the prefix of the flag metric).
        bp_step: the first backprop step of the compiled call at which the flag was set.
    """

    def __init__(self, callback: str, bp_step: int, detail: str = "a non-finite loss, gradient or parameter"):
        super().__init__(
            f"callback {callback!r} produced {detail} at bp_step {bp_step}; training stopped. "
            "The state after this step is not checkpointed: the latest checkpoint is the last good one."
        )
        self.callback = callback
        self.bp_step = bp_step


class TrainingAborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM: training stops at once, without running ``end_training``."""


def first_nonfinite(metrics: Mapping[str, Any], first_step: int) -> tuple[str, int] | None:
    """``(callback name, bp_step)`` of the earliest set non-finite flag in one call's host metrics.

    Args:
        metrics: ``name -> array of shape (K,)`` (or a scalar), the host metrics of one compiled call.
        first_step: the bp_step of index 0 of those arrays.

    Returns None when no flag is set (NaN, from a cycle hook that did not run, does not count).
    """
    best: tuple[int, str] | None = None
    for name, values in metrics.items():
        if not name.endswith(NONFINITE_SUFFIX):
            continue
        flags = np.atleast_1d(np.asarray(values)) > 0
        if flags.any():
            hit = (int(np.argmax(flags)), name[: -len(NONFINITE_SUFFIX)])
            best = hit if best is None or hit < best else best
    return None if best is None else (best[1], first_step + best[0])


def shutdown_requested() -> str | None:
    """The signal (``"SIGINT"``, ``"SIGTERM"``) that asked the running training to stop, or None.

    Host code that loops outside the trainer's step boundaries (a warm-up that fills the memory, a wait
    for a background collector) polls this and ends with
    :class:`~emote_jax.callback.TrainingShutdownException`, so that a first Ctrl+C is honoured there too.
    """
    for active in reversed(SignalShutdown._active):
        if active.received is not None:
            return active.received
    return None


class SignalShutdown:
    """A context manager that turns SIGINT/SIGTERM into a shutdown request while training.

    Inside the context the first signal sets :attr:`received` (e.g. ``"SIGINT"``) and prints one line to
    ``out``; the trainer polls it at step boundaries and shuts down cleanly. A second signal raises
    :class:`TrainingAborted` from wherever the main thread is. Handlers are installed only on the main
    thread (Python delivers signals there) and the previous handlers come back on exit.
    """

    #: The contexts entered and not yet left (innermost last); :func:`shutdown_requested` reads them.
    _active: list[SignalShutdown] = []

    def __init__(
        self,
        enabled: bool = True,
        signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
        out: TextIO | None = None,
    ):
        self.enabled = enabled
        self.signals = tuple(signals)
        self.out = out
        self.received: str | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            print(
                f"emote_jax: {name} received: stopping after the current step (end_training runs, a final "
                f"checkpoint is written). Send it again to abort at once.",
                file=self.out or sys.stderr,
                flush=True,
            )
            return
        raise TrainingAborted(f"{name} received after {self.received}: aborted without end_training")

    def __enter__(self) -> SignalShutdown:
        self.received = None
        SignalShutdown._active.append(self)
        if self.enabled and threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self in SignalShutdown._active:
            SignalShutdown._active.remove(self)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
