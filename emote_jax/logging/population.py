"""Metrics of a population: one series per member and a summary over members, in one set of writers.

Every ``interval`` backprop steps :class:`PopulationLogger` writes, for each scalar metric ``name`` of the
last call (``(P, K)`` in :attr:`~emote_jax.population.Population.metrics`, the call's last step taken),
``member/<i>/<name>`` for each member ``i`` and ``population/<name>/{min,median,max}`` over members; and
each member's mean return of its last 10 episodes as ``member/<i>/episode/return`` with its summary.
In TensorBoard, filtering on ``member/3/`` shows one member and ``population/`` the spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from emote_jax.context import COUNTER_PREFIX
from emote_jax.logging.writers import MetricWriter


class PopulationLogger:
    """Writes a :class:`~emote_jax.population.Population`'s metrics to ``writers`` every ``interval`` bp steps.

    Call :meth:`after_call` after each compiled call and :meth:`close` at the end.
    """

    def __init__(self, writers: Sequence[MetricWriter], interval: int = 100, start_step: int = 1):
        if interval < 1:
            raise ValueError(f"PopulationLogger: interval must be >= 1 backprop step, got {interval}")
        self.writers, self.interval = list(writers), int(interval)
        self._next = start_step - 1 + self.interval
        for w in self.writers:  # a resumed population (start_step > 1) keeps the rows of the steps before it
            w.open(start_step)

    def scalars(self, pop: Any) -> dict[str, float]:
        """The scalars of the population's last call: per member and min/median/max over members."""
        out: dict[str, float] = {}
        series = {name: v[:, -1] for name, v in pop.metrics.items()  # (P,): the call's last step
                  if np.ndim(v) == 2 and not name.startswith(COUNTER_PREFIX)}
        pop.sync_monitors()
        series["episode/return"] = np.array([np.mean(list(r.collector.episode_returns)[-10:])
                                             if r.collector.episode_returns else np.nan for r in pop.runs])
        for name, values in series.items():
            values = np.asarray(values, np.float64)
            for i, v in enumerate(values):
                if np.isfinite(v):
                    out[f"member/{i}/{name}"] = float(v)
            finite = values[np.isfinite(values)]
            if finite.size:
                out.update({f"population/{name}/min": float(finite.min()),
                            f"population/{name}/median": float(np.median(finite)),
                            f"population/{name}/max": float(finite.max())})
        return out

    def after_call(self, pop: Any, force: bool = False) -> None:
        """Write if ``interval`` bp steps have passed since the last write (or ``force``)."""
        step = pop.bp_step - 1
        if not force and step < self._next:
            return
        self._next = step + self.interval
        scalars = self.scalars(pop)
        for w in self.writers:
            w.write_scalars(step, scalars)

    def close(self) -> None:
        for w in self.writers:
            w.close()
