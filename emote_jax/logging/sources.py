"""Host-side metric sources: what a :class:`~emote_jax.logging.MetricsLogger` logs besides the device metrics.

The device metrics (losses, learning rates, gradient norms, alpha, Q values) arrive with every compiled
call in ``ctx.metrics``. What happens on the host (episodes finished by a collector, throughput, memory
and CPU use of the process) comes from *sources*. A source is polled once per backprop step (keep
``poll`` cheap: a counter comparison) and read at every log step of its logger.

A source belongs to one logger: it keeps cursors ("episodes already reported"), so two loggers sharing
one source would each see half of the episodes. Attaching a source to a second logger raises.
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emote_jax.context import Context


class MetricSource:
    """Base class of host metric sources. Override any of the methods; all are no-ops here."""

    _owner: str | None = None

    def attach(self, owner: str) -> None:
        """Called by the logger that takes this source; a source serves exactly one logger."""
        if self._owner is not None and self._owner != owner:
            raise ValueError(
                f"{type(self).__name__} is already attached to logger {self._owner!r}; expected a fresh source "
                f"for logger {owner!r} (a source keeps cursors: give each logger its own)"
            )
        self._owner = owner

    def begin_training(self, ctx: Context) -> None:
        """Once before the first step."""

    def poll(self, ctx: Context) -> None:
        """After every backprop step (``ctx.bp_step``): keep it cheap."""

    def read(self, ctx: Context, step: int) -> dict[str, float]:
        """Scalars to log at ``step``. A value that is not finite is left out by the logger."""
        return {}

    def histograms(self, ctx: Context, step: int) -> dict[str, np.ndarray]:
        """Arrays to log as histograms at ``step`` (only at the logger's histogram steps)."""
        return {}

    def end_training(self, ctx: Context) -> None:
        """Once after the last step (also when training stops on an error): release files."""


@dataclass(frozen=True)
class Episode:
    """One finished episode: its return and length, and the counters when the collector finished it."""

    env_steps: int
    bp_step: int
    ret: float
    length: int


def write_episodes_csv(episodes: Sequence[Any], path: str | Path) -> None:
    """``env_steps,bp_step,return,length``, one row per episode (objects with those attributes, ``ret``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["env_steps", "bp_step", "return", "length"])
        for e in episodes:
            w.writerow([e.env_steps, e.bp_step, repr(float(e.ret)), e.length])


def read_episodes_csv(path: str | Path) -> list[Any]:
    """The episodes of an ``episodes.csv`` as :class:`Episode` objects."""
    with open(path, newline="") as f:
        return [Episode(int(r["env_steps"]), int(r["bp_step"]), float(r["return"]), int(r["length"]))
                for r in csv.DictReader(f)]


class EpisodeMetrics(MetricSource):
    """Episode returns and lengths from a collector (``episode_returns``, ``episode_lengths``,
    ``episodes_completed``, ``env_steps``: :class:`~emote_jax.collectors.GymCollector` has them).

    Logs ``episode/return`` and ``episode/length`` (mean over the episodes finished since the previous
    log step; absent when none finished), ``episode/return/windowed`` and ``episode/length/windowed``
    (mean over the last ``window`` episodes), ``env/steps`` and ``env/episodes``; histogram
    ``episode/return`` over the last ``window`` episodes.

    Every finished episode is also kept in :attr:`history` (``Episode(env_steps, bp_step, ret, length)``):
    ``env_steps`` is the collector's count when the episode ended (its ``episode_env_steps``; a collector
    without them: the count when the episode was seen), ``bp_step`` the step it was seen after.

    With ``csv_path``, each episode is also appended to that ``episodes.csv`` as it is seen (flushed), so a
    run killed outright keeps the episodes it finished. A run resumed from a checkpoint (``bp_step`` above 1
    at ``begin_training``) keeps the file's rows of the steps before it and drops the later ones (the steps
    it runs again); a file it cannot read is moved aside to ``episodes.csv.unreadable`` with a warning.

    Args:
        collector: the collector to watch.
        window: episodes in the windowed means and the histogram.
        csv_path: where to stream the episodes (None: only :attr:`history`).
    """

    def __init__(self, collector: Any, window: int = 100, csv_path: str | os.PathLike | None = None):
        for attr in ("episode_returns", "episode_lengths", "episodes_completed", "env_steps"):
            if not hasattr(collector, attr):
                raise TypeError(
                    f"EpisodeMetrics expected a collector with {attr!r} (a GymCollector), "
                    f"got {type(collector).__name__}"
                )
        if window < 1:
            raise ValueError(f"EpisodeMetrics: expected window >= 1, got {window}")
        self.collector = collector
        self.window = int(window)
        self.history: list[Episode] = []
        self.start_step = 1
        self._seen = collector.episodes_completed
        self._since_log: list[Episode] = []
        self._recent_ret: deque[float] = deque(maxlen=self.window)
        self._recent_len: deque[int] = deque(maxlen=self.window)
        self.csv_path = None if csv_path is None else Path(csv_path)
        self._csv: Any = None

    def begin_training(self, ctx: Context) -> None:
        self.start_step = int(ctx.bp_step)  # above 1: a run resumed from a checkpoint
        if self.start_step > 1:  # the restored episodes were reported by the run that finished them
            self._seen = self.collector.episodes_completed
        else:
            self._seen = min(self._seen, self.collector.episodes_completed)
        if self.csv_path is not None:
            self._open_csv()
        self.poll(ctx)  # episodes of the warm-up

    def _open_csv(self) -> None:
        """Start ``csv_path`` with the earlier run's episodes before ``start_step`` (a resumed run) or none."""
        path, kept = self.csv_path, []
        if self.start_step > 1 and path.is_file():
            try:
                kept = [e for e in read_episodes_csv(path) if e.bp_step < self.start_step]
            except (OSError, ValueError, KeyError, TypeError) as e:
                aside = path.with_name(path.name + ".unreadable")
                os.replace(path, aside)
                warnings.warn(f"EpisodeMetrics: {path} is not an episodes.csv ({type(e).__name__}: {e}); "
                              f"moved it to {aside} and started a new one", stacklevel=2)
        write_episodes_csv(kept, path)
        self._csv = open(path, "a", newline="")  # noqa: SIM115 (closed in end_training)

    def poll(self, ctx: Context) -> None:
        c = self.collector
        n = c.episodes_completed
        if n == self._seen:
            return
        rets, lens = list(c.episode_returns), list(c.episode_lengths)
        ends = getattr(c, "episode_env_steps", None)
        ends = list(ends) if ends is not None else [int(c.env_steps)] * len(rets)
        if c.episodes_completed != n or not len(rets) == len(lens) == len(ends):
            return  # a threaded collector is mid-append: read it on the next step
        new = n - self._seen
        maxlen = getattr(c.episode_returns, "maxlen", None)
        sl = slice(n - new, n) if maxlen is None or len(rets) < maxlen else slice(-new, None)
        # (not yet full: the deques hold every episode, index exactly; full: the newest ones)
        for r, length, end in zip(rets[sl], lens[sl], ends[sl]):
            ep = Episode(int(end), int(ctx.bp_step), float(r), int(length))
            self.history.append(ep)
            self._since_log.append(ep)
            self._recent_ret.append(ep.ret)
            self._recent_len.append(ep.length)
            if self._csv is not None:
                self._csv.write(f"{ep.env_steps},{ep.bp_step},{float(ep.ret)!r},{ep.length}\n")
        if self._csv is not None:
            self._csv.flush()
        self._seen = n

    def end_training(self, ctx: Context) -> None:
        if self._csv is not None:
            self._csv.close()
            self._csv = None

    def read(self, ctx: Context, step: int) -> dict[str, float]:
        out: dict[str, float] = {"env/steps": float(self.collector.env_steps), "env/episodes": float(self._seen)}
        if self._since_log:
            out["episode/return"] = sum(e.ret for e in self._since_log) / len(self._since_log)
            out["episode/length"] = sum(e.length for e in self._since_log) / len(self._since_log)
            self._since_log = []
        if self._recent_ret:
            out["episode/return/windowed"] = sum(self._recent_ret) / len(self._recent_ret)
            out["episode/length/windowed"] = sum(self._recent_len) / len(self._recent_len)
        return out

    def histograms(self, ctx: Context, step: int) -> dict[str, np.ndarray]:
        if not self._recent_ret:
            return {}
        return {"episode/return": np.asarray(self._recent_ret, np.float64)}


class ThroughputMetrics(MetricSource):
    """Rates over the interval since the previous log step.

    ``performance/bp_steps_per_s``, ``performance/bp_samples_per_s`` and, given a collector,
    ``performance/env_steps_per_s``. The clock starts after the first compiled call (at the first
    poll), so the compile time does not count (the logger reports it as ``performance/compile_s``).
    """

    def __init__(self, collector: Any | None = None):
        self.collector = collector
        self._t: float | None = None

    def _snapshot(self, ctx: Context) -> None:
        self._t = time.perf_counter()
        self._step = int(ctx.bp_step)
        self._samples = int(ctx.bp_samples)
        self._env = int(self.collector.env_steps) if self.collector is not None else 0

    def begin_training(self, ctx: Context) -> None:
        self._t = None

    def poll(self, ctx: Context) -> None:
        if self._t is None:
            self._snapshot(ctx)

    def read(self, ctx: Context, step: int) -> dict[str, float]:
        if self._t is None:
            return {}
        dt = time.perf_counter() - self._t
        if dt <= 0 or step <= self._step:
            return {}
        out = {
            "performance/bp_steps_per_s": (step - self._step) / dt,
            "performance/bp_samples_per_s": (int(ctx.bp_samples) - self._samples) / dt,
        }
        if self.collector is not None:
            out["performance/env_steps_per_s"] = (int(self.collector.env_steps) - self._env) / dt
        self._snapshot(ctx)
        self._step = step
        return out


class RayActorMetrics(MetricSource):
    """Per Ray actor of a :class:`~emote_jax.collectors.ray.RayCollector` (``actor_stats()``), over the
    interval since the previous log step: ``ray/actor<i>/env_steps_per_s``, ``ray/actor<i>/episode_return``
    (the mean of its last 100 episodes), and ``ray/restarts``, ``ray/actors_alive`` of the whole pool."""

    def __init__(self, collector: Any):
        self.collector = collector
        self._t: float | None = None
        self._env: list[float] = []

    def begin_training(self, ctx: Context) -> None:
        self._t = None

    def poll(self, ctx: Context) -> None:
        if self._t is None:
            self._t, self._env = time.perf_counter(), [a["env_steps"] for a in self.collector.actor_stats()]

    def read(self, ctx: Context, step: int) -> dict[str, float]:
        stats = self.collector.actor_stats()
        out = {"ray/restarts": float(self.collector.restarts), "ray/actors_alive": float(sum(a["alive"] for a in stats))}
        now = time.perf_counter()
        for i, a in enumerate(stats):
            out[f"ray/actor{i}/episode_return"] = a["episode_return"]
            if self._t is not None and now > self._t and i < len(self._env):
                out[f"ray/actor{i}/env_steps_per_s"] = (a["env_steps"] - self._env[i]) / (now - self._t)
        self._t, self._env = now, [a["env_steps"] for a in stats]
        return out


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency; /proc as a fallback
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SystemMetrics(MetricSource):
    """Memory and CPU use of this process, every ``interval`` backprop steps (the reference's SystemLogger).

    ``system/rss_mb`` (resident set size), ``system/cpu_percent`` (process CPU time over wall time since
    the previous reading; 100 = one core busy), and on accelerators that report it
    ``system/device_mb_in_use`` (the first local device's ``memory_stats()["bytes_in_use"]``).
    """

    def __init__(self, interval: int = 1000):
        if interval < 1:
            raise ValueError(f"SystemMetrics: expected interval >= 1, got {interval}")
        self.interval = int(interval)
        self._last_step: int | None = None

    def begin_training(self, ctx: Context) -> None:
        self._last_step = None
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()

    def read(self, ctx: Context, step: int) -> dict[str, float]:
        if self._last_step is not None and step - self._last_step < self.interval:
            return {}
        self._last_step = step
        cpu, wall = time.process_time(), time.perf_counter()
        out = {"system/rss_mb": _rss_bytes() / 2**20}
        if wall > self._wall0:
            out["system/cpu_percent"] = 100.0 * (cpu - self._cpu0) / (wall - self._wall0)
        self._cpu0, self._wall0 = cpu, wall
        try:
            import jax

            stats = jax.local_devices()[0].memory_stats()
        except Exception:  # a backend without memory statistics
            stats = None
        if stats and "bytes_in_use" in stats:
            out["system/device_mb_in_use"] = stats["bytes_in_use"] / 2**20
        return out
