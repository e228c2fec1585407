"""The metrics logger: a host callback that takes the metrics of every compiled call, keeps their windows,
and writes scalars, histograms, images and videos to its writers.

How metrics travel from the device to the writers: :mod:`emote_jax.logging.loggers`. The named loggers
(one writer each) and :func:`~emote_jax.logging.loggers.default_logger` are there too.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from emote_jax.callback import HostCallback
from emote_jax.context import COUNTER_PREFIX, HISTOGRAM_PREFIX, IMAGE_PREFIX, Context
from emote_jax.logging.names import METRIC_NAMES, reference_name
from emote_jax.logging.sources import MetricSource
from emote_jax.logging.window import Window
from emote_jax.logging.writers import MetricWriter


def _param_leaves(state: Mapping[str, Any]) -> dict[str, Any]:
    """``params/<slot>/<path>`` -> array for every slot that has ``"params"``."""
    out = {}
    for slot, value in state.items():
        if not isinstance(value, Mapping) or "params" not in value:
            continue
        for path, leaf in jax.tree_util.tree_flatten_with_path(value["params"])[0]:
            parts = [str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path]
            if parts and parts[0] == "params":  # Flax Linen's collection name: params/q1/params/... reads badly
                parts = parts[1:]
            keys = "/".join(parts)
            out[f"params/{slot}/{keys}" if keys else f"params/{slot}"] = leaf
    return out


class MetricsLogger(HostCallback):
    """Writes device metrics and host sources to ``writers`` every ``log_interval`` backprop steps.

    Args:
        writers: where to write (:class:`~emote_jax.logging.writers.MetricWriter` instances).
        log_interval: backprop steps between written scalars (the reference's ``log_interval``).
        window: values per metric in the windowed mean (the reference: 250).
        histogram_interval: backprop steps between histograms; None for none.
        sources: host metric sources (each serves this logger only).
        include: glob patterns (``fnmatch``) of the scalar tags to write; None for all.
        exclude: glob patterns of scalar tags not to write.
        param_histograms: histogram the parameters of every slot with ``"params"``.
        windowed, not_windowed: glob patterns of the device metrics that get a ``name/windowed`` tag
            (default: all but learning rates, the target entropy and non-finite flags, which a window
            only repeats).
        windows: ``{glob pattern: size}``: the window of the metrics that match (the first pattern that
            does), instead of ``window`` (the reference's per-metric ``log_windowed_scalar`` window).
        cumulative: glob patterns of device metrics whose running sum since the start of training is
            also written, as ``name/cumulative``.
        names: ``"emote_jax"`` (``q1/loss``) or ``"emote"``: the reference's tags (``loss/q1_loss``,
            ``training/q_target``, ...; :func:`~emote_jax.logging.names.reference_name`). ``include`` and
            ``exclude`` match the emote_jax names.
        name, order: as for every callback; order 950 runs after collectors (so episodes finished at a
            step are counted at that step).

    After training, :attr:`compile_s` holds the wall time of the first compiled call and
    :attr:`last_scalars` the scalars written last.
    """

    def __init__(
        self,
        writers: Sequence[MetricWriter],
        *,
        log_interval: int = 100,
        window: int = 250,
        histogram_interval: int | None = 1000,
        sources: Sequence[MetricSource] = (),
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        param_histograms: bool = True,
        windowed: Sequence[str] = ("*",),
        not_windowed: Sequence[str] = ("*/lr", "*/target_entropy", "*/nonfinite"),
        names: str = "emote_jax",
        windows: Mapping[str, int] | None = None,
        cumulative: Sequence[str] = (),
        name: str = "metrics_logger",
        order: int = 950,
    ):
        super().__init__(name=name, order=order, cycle=1)
        if names not in METRIC_NAMES:
            raise ValueError(f"{name}: expected names one of {METRIC_NAMES}, got {names!r}")
        self.names = names
        self._renamed: dict[str, str] = {}
        self.windows = dict(windows or {})
        for pattern, size in self.windows.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{name}: expected windows {{pattern: int >= 1}}, got {pattern!r}: {size!r}")
        self.cumulative = list(cumulative)
        self._cumulative_wanted: dict[str, bool] = {}
        writers = list(writers)
        for w in writers:
            if not isinstance(w, MetricWriter):
                raise TypeError(f"{name}: expected MetricWriter instances, got {type(w).__name__}: {w!r}")
        for what, v in (("log_interval", log_interval), ("window", window)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected {what} to be an int >= 1, got {v!r}")
        if histogram_interval is not None and (not isinstance(histogram_interval, int) or histogram_interval < 1):
            raise ValueError(f"{name}: expected histogram_interval None or an int >= 1, got {histogram_interval!r}")
        self.writers = writers
        self.log_interval = log_interval
        self.window = window
        self.histogram_interval = histogram_interval
        self.sources: list[MetricSource] = []
        for s in sources:
            self.add_source(s)
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude)
        self.param_histograms = param_histograms
        self.windowed, self.not_windowed = list(windowed), list(not_windowed)
        self._window_wanted: dict[str, bool] = {}
        self._tag_wanted: dict[str, bool] = {}
        self.compile_s: float | None = None
        self.last_scalars: dict[str, float] = {}
        self._reset()

    def add_source(self, source: MetricSource) -> None:
        """Add a host metric source (before training)."""
        if not isinstance(source, MetricSource):
            raise TypeError(f"{self.name}: expected a MetricSource, got {type(source).__name__}: {source!r}")
        source.attach(self.name)
        self.sources.append(source)

    def _reset(self) -> None:
        self._windows: dict[str, Window] = {}
        self._sums: dict[str, float] = {}
        self._array_names: tuple[str, ...] = ()  # Context.log_histogram / log_image arrays
        self._metrics: Mapping[str, Any] | None = None
        self._pending: list[list[Any]] = []  # [the call's arrays, first step, K, values already ingested]
        self._names: tuple[str, ...] = ()
        self._source_names: tuple[str, ...] = ()  # the names of the last call's metrics, per-sample ones too
        self._scalar_names: tuple[str, ...] | None = None  # those logged, None: all
        self._values: list[Any] = []  # the current call's arrays, in the order of _names
        self._first = 0
        self._k = 0
        self._last_logged = 0
        self._t_call: float | None = None
        self._compile_logged = False
        self._open = False

    # ---- selection -----------------------------------------------------------------------------------
    def _wanted(self, tag: str) -> bool:
        wanted = self._tag_wanted.get(tag)
        if wanted is None:
            included = self.include is None or any(fnmatch.fnmatchcase(tag, p) for p in self.include)
            wanted = included and not any(fnmatch.fnmatchcase(tag, p) for p in self.exclude)
            self._tag_wanted[tag] = wanted
        return wanted

    def _is_windowed(self, name: str) -> bool:
        wanted = self._window_wanted.get(name)
        if wanted is None:
            wanted = any(fnmatch.fnmatchcase(name, p) for p in self.windowed) and not any(
                fnmatch.fnmatchcase(name, p) for p in self.not_windowed)
            self._window_wanted[name] = wanted
        return wanted

    # ---- the metrics of compiled calls ----------------------------------------------------------------
    # Per call only the list of its arrays is kept (about a microsecond); at log steps (or every
    # _MAX_PENDING calls) one concatenate stacks all pending calls and each metric's values go into its
    # window with one Window.add: no Python work per metric per call.
    _MAX_PENDING = 256

    def _take_call(self, metrics: Mapping[str, Any], first: int) -> None:
        """Start on the metrics of a new compiled call whose first step is ``first``."""
        source, names = metrics, tuple(metrics)
        if names != self._source_names:  # per-sample (K, B) metrics (Context.log_samples) are not scalars,
            self._source_names = names  # nor are the arrays of log_histogram / log_image
            self._array_names = tuple(k for k in names if k.startswith((HISTOGRAM_PREFIX, IMAGE_PREFIX)))
            scalar = tuple(k for k, v in metrics.items() if k not in self._array_names and np.ndim(v) != 2
                           and not k.startswith(COUNTER_PREFIX))  # counters are for host hooks, not logs
            self._scalar_names = None if len(scalar) == len(names) else scalar
        if self._scalar_names is not None:
            metrics = {k: source[k] for k in self._scalar_names}
            names = self._scalar_names
        if names != self._names or len(self._pending) >= self._MAX_PENDING:
            self._ingest_until(first - 1)  # before the layout changes: what is pending has the old one
            self._names = names
        values = list(metrics.values())
        k = 0
        if values:
            shape = np.shape(values[0])
            if len(shape) != 1:
                self._raise_shape(metrics, 1, first)
            k = shape[0]
            self._pending.append([values, first, k, 0])
        self._metrics, self._values, self._first, self._k = source, values, first, k

    def _ingest_until(self, step: int) -> None:
        """Put every pending value of a step <= ``step`` into the windows."""
        take, keep = [], []
        for entry in self._pending:
            values, first, k, lo = entry
            hi = min(k, step - first + 1)
            if hi < k:
                keep.append(entry)
            if hi > lo:
                take.append((values, first, k, lo, hi))
                entry[3] = hi
        self._pending = keep
        if not take:
            return
        n, k = len(self._names), take[0][2]
        try:
            flat = np.concatenate([v for t in take for v in t[0]])
            ok = all(t[2] == k for t in take) and flat.shape == (len(take) * n * k,)
        except ValueError:
            ok = False
        if not ok:
            for values, first, k_call, _lo, _hi in take:
                self._raise_shape(dict(zip(self._names, values)), k_call, first, quiet=True)
            raise ValueError(f"{self.name}: the metrics of calls of different lengths cannot be stacked")
        per_metric = flat.reshape(len(take), n, k).transpose(1, 0, 2)  # (n_metrics, calls, K)
        if all(lo == 0 and hi == k for *_, lo, hi in take):
            rows = per_metric.reshape(n, -1)
        else:  # the first call may be partly taken already, the last one only up to `step`
            idx = np.arange(k)
            rows = per_metric[:, np.stack([(idx >= lo) & (idx < hi) for *_, lo, hi in take])]
        for name, row in zip(self._names, rows):
            w = self._windows.get(name)
            if w is None:
                size = next((n for p, n in self.windows.items() if fnmatch.fnmatchcase(name, p)), self.window)
                w = self._windows[name] = Window(size)
            w.add(row)
            if self._is_cumulative(name):
                self._sums[name] = self._sums.get(name, 0.0) + float(np.nansum(row))

    def _raise_shape(self, metrics: Mapping[str, Any], k: int, first: int, quiet: bool = False) -> None:
        """Raise for the first metric not of shape ``(k,)``; with ``quiet``, return if there is none."""
        for name, value in metrics.items():
            if np.shape(value) != (k,):
                raise ValueError(
                    f"{self.name}: expected every host metric to have shape ({k},) (one value per step of the "
                    f"compiled call starting at bp_step {first}), got {name!r} with shape {np.shape(value)}"
                )
        if not quiet:
            raise ValueError(f"{self.name}: the metrics of the call starting at bp_step {first} cannot be stacked")

    def _is_new_call(self, ctx: Context) -> bool:
        if ctx.metrics is not self._metrics:
            return True
        return not (self._first <= ctx.bp_step < self._first + max(self._k, 1))

    def _is_cumulative(self, name: str) -> bool:
        wanted = self._cumulative_wanted.get(name)
        if wanted is None:
            wanted = self._cumulative_wanted[name] = any(fnmatch.fnmatchcase(name, p) for p in self.cumulative)
        return wanted

    def _rename(self, tag: str) -> str:
        if self.names == "emote_jax":
            return tag
        out = self._renamed.get(tag)
        if out is None:
            out = self._renamed[tag] = reference_name(tag)
        return out

    # ---- writing -------------------------------------------------------------------------------------
    def _log(self, ctx: Context, step: int) -> None:
        self._ingest_until(step)
        idx = step - self._first
        scalars: dict[str, float] = {}
        if self._metrics and 0 <= idx < self._k:
            for name, a in zip(self._names, self._values):
                v = float(a[idx])
                if math.isfinite(v):
                    scalars[name] = v
        for name, w in self._windows.items():
            if w.count and self._is_windowed(name):
                scalars[f"{name}/windowed"] = w.mean()
        for name, total in self._sums.items():
            scalars[f"{name}/cumulative"] = total
        for src in self.sources:
            for tag, v in src.read(ctx, step).items():
                if np.isfinite(v):
                    scalars[tag] = float(v)
        if self.compile_s is not None and not self._compile_logged:
            scalars["performance/compile_s"] = self.compile_s
            self._compile_logged = True
        scalars = {self._rename(k): v for k, v in scalars.items() if self._wanted(k)}
        self.last_scalars = scalars
        for w in self.writers:
            w.write_scalars(step, scalars)
        if self.histogram_interval is not None and step % self.histogram_interval == 0:
            self._log_histograms(ctx, step)
        self._last_logged = step

    def _log_histograms(self, ctx: Context, step: int) -> None:
        hists: dict[str, np.ndarray] = {}
        if self.param_histograms:
            leaves = _param_leaves(ctx.state)
            for tag, arr in zip(leaves, jax.device_get(list(leaves.values()))):
                hists[tag] = np.asarray(arr)
        for src in self.sources:
            hists.update(src.histograms(ctx, step))
        images: dict[str, np.ndarray] = {}
        idx = step - self._first
        if self._metrics and self._array_names and 0 <= idx < self._k:
            for key in self._array_names:
                value = np.asarray(self._metrics[key][idx])
                if np.all(np.isnan(value)):
                    continue  # a cycle hook's array on a step where it did not run
                if key.startswith(HISTOGRAM_PREFIX):
                    hists[key[len(HISTOGRAM_PREFIX):]] = value
                else:
                    images[key[len(IMAGE_PREFIX):]] = np.clip(value, 0.0, 1.0)
        hists = {self._rename(k): v for k, v in hists.items() if self._wanted(k)}
        if hists:
            for w in self.writers:
                w.write_histograms(step, hists)
        images = {self._rename(k): v for k, v in images.items() if self._wanted(k)}
        if images:
            for w in self.writers:
                w.write_images(step, images)

    def write_video(self, step: int, tag: str, frames: Any, fps: int = 30) -> None:
        """Write ``frames`` ``(T, H, W, C)`` (uint8, or floats in [0, 1]) as a video at ``step`` to every
        writer that takes videos (TensorBoard: needs moviepy, the ``video`` extra; W&B). For host
        callbacks, e.g. one that films an evaluation episode every N steps."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{self.name}: expected video frames of shape (T, H, W, C) with C in (1, 3, 4), "
                             f"got {frames.shape} for {tag!r}")
        if frames.dtype != np.uint8:
            frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
        for w in self.writers:
            w.write_video(int(step), self._rename(tag), frames, int(fps))

    # ---- hooks ---------------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        self._reset()
        self.compile_s = None
        for w in self.writers:
            w.open(ctx.bp_step)
        self._open = True
        self._last_logged = ctx.bp_step - 1
        for src in self.sources:
            src.begin_training(ctx)
        self._t_call = time.perf_counter()  # the first compiled call follows (compile_s)

    def end_cycle(self, ctx: Context) -> None:
        if self._is_new_call(ctx):
            if self.compile_s is None and self._t_call is not None:
                self.compile_s = time.perf_counter() - self._t_call
            self._take_call(ctx.metrics, ctx.bp_step)
        for src in self.sources:
            src.poll(ctx)
        if ctx.bp_step % self.log_interval == 0:
            self._log(ctx, ctx.bp_step)

    def end_training(self, ctx: Context) -> None:
        if not self._open:
            return
        try:
            last = ctx.bp_step - 1  # the last step run
            if ctx.metrics and ctx.metrics is not self._metrics:  # a call whose end_cycle this logger missed
                shape = np.shape(next(iter(ctx.metrics.values())))[:1]
                self._take_call(ctx.metrics, last - (shape[0] if len(shape) == 1 else 1) + 1)
            for src in self.sources:
                src.poll(ctx)
            if last > self._last_logged:
                self._log(ctx, last)
                if self.histogram_interval is not None and last % self.histogram_interval:
                    self._log_histograms(ctx, last)
            self._ingest_until(last)
        finally:
            self._open = False
            errors = []
            for src in self.sources:
                try:
                    src.end_training(ctx)
                except Exception as e:
                    errors.append(e)
            for w in self.writers:
                try:
                    w.close()
                except Exception as e:  # close every writer, then report the first failure
                    errors.append(e)
            if errors:
                raise errors[0]
