"""The window of one metric: its last N finite values, whose mean a :class:`~emote_jax.logging.loggers.MetricsLogger`
writes as ``name/windowed``."""

from __future__ import annotations

import numpy as np


class Window:
    """The last ``size`` finite values of one metric, in a NumPy ring buffer."""

    def __init__(self, size: int):
        self.size = int(size)
        self._buf = np.zeros(self.size, np.float64)
        self._pos = 0
        self.count = 0

    def add(self, values: np.ndarray) -> None:
        """Append the finite entries of the 1-D array ``values`` (in order)."""
        values = np.asarray(values, np.float64).reshape(-1)
        values = values[np.isfinite(values)]
        n = values.size
        if n == 0:
            return
        if n >= self.size:
            self._buf[:] = values[-self.size:]
            self._pos, self.count = 0, self.size
            return
        idx = (self._pos + np.arange(n)) % self.size
        self._buf[idx] = values
        self._pos = (self._pos + n) % self.size
        self.count = min(self.count + n, self.size)

    def values(self) -> np.ndarray:
        """The values held, oldest first."""
        if self.count < self.size:
            return self._buf[: self.count].copy()
        return np.roll(self._buf, -self._pos)

    def mean(self) -> float:
        """The mean of the values held (NaN if none)."""
        if self.count == 0:
            return float("nan")
        return float(self._buf[: self.count].mean()) if self.count < self.size else float(self._buf.mean())
