"""Loggers: host callbacks that write the metrics of training to TensorBoard, CSV, the terminal or W&B.

Metrics leave the device once per compiled call: the trainer brings the K values of every metric of a
call back as NumPy arrays of shape ``(K,)`` (``ctx.metrics`` in host hooks, ``trainer.last_metrics``),
value ``i`` being the one of backprop step ``first + i``; per-sample metrics (``(K, B)``, e.g. the TD errors
of prioritized replay, :meth:`~emote_jax.context.Context.log_samples`) are not logged. A :class:`MetricsLogger` consumes them on the
host, with no extra device round trip:

* every value goes into a window of the last ``window`` (250, as the reference) finite values of its
  metric;
* every ``log_interval`` backprop steps it writes, for each device metric, the value of that very step
  (tag ``name``) and the mean of its window (tag ``name/windowed``), plus the scalars of its host
  :mod:`sources <emote_jax.logging.sources>` (episodes, throughput, system) and, once, the wall time of
  the first compiled call (``performance/compile_s``: from this logger's ``begin_training`` to its first
  ``end_cycle``, which is tracing, compiling and running the first call, plus sampling its batches and
  the host hooks around it: milliseconds against seconds);
* every ``histogram_interval`` backprop steps it writes histograms: the parameters of every state slot
  that has ``"params"`` (``params/<slot>/<path>``) and those its sources give (episode returns);
* at the end of training it writes the last step (and the rest of the last call's values).

Values that are not finite are left out: a device cycle hook's metric is NaN on the steps that the hook
did not run.

Writes go to one or more :mod:`writers <emote_jax.logging.writers>`. The named loggers below are a
:class:`MetricsLogger` with one writer each, under the reference's names (``TensorboardLogger``,
``TerminalLogger``, ``WBLogger``); give one logger several writers to share the sources' work.

This module holds the named loggers and :func:`default_logger`; :class:`MetricsLogger` itself is in
:mod:`emote_jax.logging.metrics_logger` and :class:`Window` in :mod:`emote_jax.logging.window` (both
importable from here too).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from emote_jax.logging.metrics_logger import MetricsLogger
from emote_jax.logging.sources import MetricSource
from emote_jax.logging.window import Window
from emote_jax.logging.writers import (
    CSVWriter,
    MetricWriter,
    TensorboardWriter,
    TerminalWriter,
    WandbWriter,
)

__all__ = [
    "CSVLogger",
    "MetricsLogger",
    "TensorboardLogger",
    "TerminalLogger",
    "WBLogger",
    "Window",
    "default_logger",
]


class TensorboardLogger(MetricsLogger):
    """TensorBoard event files in ``log_dir`` (tensorboardX). Keywords as :class:`MetricsLogger`."""

    def __init__(self, log_dir: str | Path, *, name: str = "tensorboard_logger", flush_secs: int = 10, **kw: Any):
        super().__init__([TensorboardWriter(log_dir, flush_secs=flush_secs)], name=name, **kw)


class CSVLogger(MetricsLogger):
    """A wide CSV file at ``path`` (one row per log step). Keywords as :class:`MetricsLogger`."""

    def __init__(self, path: str | Path, *, name: str = "csv_logger", **kw: Any):
        kw.setdefault("histogram_interval", None)
        super().__init__([CSVWriter(path)], name=name, **kw)


class TerminalLogger(MetricsLogger):
    """A text line per log step to ``out`` (None: the Python logger ``emote_jax``, level INFO).

    Keywords as :class:`MetricsLogger`; ``log_interval`` defaults to 1000 here.
    """

    def __init__(self, out: TextIO | None = None, *, name: str = "terminal_logger", windowed: bool = False,
                 **kw: Any):
        kw.setdefault("log_interval", 1000)
        kw.setdefault("histogram_interval", None)
        super().__init__([TerminalWriter(out, windowed=windowed)], name=name, **kw)


class WBLogger(MetricsLogger):
    """Weights & Biases (optional dependency ``wandb``). ``mode="offline"`` needs no account.

    Args:
        project, run_name, config, mode, dir: for ``wandb.init``.
        Further keywords as :class:`MetricsLogger`.
    """

    def __init__(self, project: str | None = None, run_name: str | None = None,
                 config: Mapping[str, Any] | None = None, mode: str | None = None, dir: str | Path | None = None,
                 *, name: str = "wb_logger", **kw: Any):
        writer = WandbWriter(project=project, name=run_name, config=config, mode=mode, dir=dir)
        super().__init__([writer], name=name, **kw)


def default_logger(
    run_dir: str | Path,
    collector: Any | None = None,
    *,
    log_interval: int = 100,
    histogram_interval: int | None = 1000,
    system_interval: int = 1000,
    wandb: Mapping[str, Any] | None = None,
    names: str = "emote_jax",
    name: str = "metrics_logger",
) -> MetricsLogger:
    """The logger ``emote-jax train`` uses: TensorBoard (``run_dir/tensorboard``) and ``run_dir/metrics.csv``,
    plus W&B when ``wandb`` (keywords of :class:`~emote_jax.logging.writers.WandbWriter`) is given;
    ``names="emote"`` writes the reference's tags.

    Sources: :class:`~emote_jax.logging.sources.EpisodeMetrics` (streaming ``run_dir/episodes.csv``) and
    :class:`~emote_jax.logging.sources.ThroughputMetrics` of ``collector`` (when given; and the collector's
    own ``metric_sources()`` where it has them, e.g. a Ray collector's per-actor rates) and
    :class:`~emote_jax.logging.sources.SystemMetrics` every ``system_interval`` backprop steps.
    """
    from emote_jax.logging.sources import EpisodeMetrics, SystemMetrics, ThroughputMetrics

    run_dir = Path(run_dir)
    writers: list[MetricWriter] = [TensorboardWriter(run_dir / "tensorboard"), CSVWriter(run_dir / "metrics.csv")]
    if wandb is not None:
        writers.append(WandbWriter(**{"dir": run_dir, "name": run_dir.name, **dict(wandb)}))
    sources: list[MetricSource] = []
    if collector is not None:
        sources += [EpisodeMetrics(collector, csv_path=run_dir / "episodes.csv"), ThroughputMetrics(collector)]
        sources += collector.metric_sources() if callable(getattr(collector, "metric_sources", None)) else []
    else:
        sources.append(ThroughputMetrics())
    sources.append(SystemMetrics(system_interval))
    return MetricsLogger(writers, log_interval=log_interval, histogram_interval=histogram_interval,
                         sources=sources, names=names, name=name)
