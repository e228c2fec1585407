"""Where a :class:`~emote_jax.logging.MetricsLogger` writes: TensorBoard, CSV, the terminal, Weights & Biases.

A writer receives, at each log step, one dict of finite scalars (and at histogram steps, a dict of
1-D arrays). It opens its files in :meth:`MetricWriter.open` (``begin_training``), not at construction,
so that building a run without training it leaves nothing on disk.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np


class MetricWriter:
    """Base class: override :meth:`write_scalars`, and any of the others."""

    def open(self, start_step: int = 1) -> None:
        """Called once in ``begin_training`` (again after ``close`` for a second training).

        ``start_step`` is the first backprop step of this training: above 1 it continues a run
        restored from a checkpoint.
        """

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Write finite ``scalars`` (``tag -> value``) at backprop step ``step``."""
        raise NotImplementedError

    def write_histograms(self, step: int, histograms: Mapping[str, np.ndarray]) -> None:
        """Write each 1-D array of ``histograms`` as a histogram at ``step``."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Write each ``(H, W, C)`` float image in [0, 1] at ``step`` (writers without images skip them)."""

    def write_video(self, step: int, tag: str, frames: np.ndarray, fps: int) -> None:
        """Write ``frames`` ``(T, H, W, C)`` uint8 as a video at ``step`` (writers without videos skip it)."""

    def flush(self) -> None:
        """Make what was written so far visible to readers."""

    def close(self) -> None:
        """Flush and release files; called in ``end_training`` (also after an error)."""


class TensorboardWriter(MetricWriter):
    """TensorBoard event files through tensorboardX (no TensorFlow).

    All scalars of one log step go into one event (one ``Summary`` with a value per tag), which costs
    a few microseconds per tag instead of the ~75 us of one ``SummaryWriter.add_scalar`` call.
    Read them back with :func:`emote_jax.logging.events.read_scalars` or TensorBoard itself.

    Args:
        log_dir: the directory of the event files (created if needed).
        flush_secs: how often the background writer flushes to disk.
        bins: histogram bins: a count, or a NumPy estimator name ("auto", "fd", ...).
    """

    def __init__(self, log_dir: str | Path, flush_secs: int = 10, bins: int | str = 64):
        self.log_dir = Path(log_dir)
        self.flush_secs = int(flush_secs)
        self.bins = bins
        self._writer: Any = None

    def open(self, start_step: int = 1) -> None:
        from tensorboardX import FileWriter

        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = FileWriter(str(self.log_dir), flush_secs=self.flush_secs)

    def _require_open(self) -> Any:
        if self._writer is None:
            raise RuntimeError(f"TensorboardWriter({str(self.log_dir)!r}) is not open: call open() first")
        return self._writer

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        if not scalars:
            return
        values = [Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._require_open().add_summary(Summary(value=values), int(step))

    def write_histograms(self, step: int, histograms: Mapping[str, np.ndarray]) -> None:
        from tensorboardX.summary import histogram

        writer = self._require_open()
        for tag, values in histograms.items():
            values = np.asarray(values, np.float64).reshape(-1)
            values = values[np.isfinite(values)]
            if values.size:
                writer.add_summary(histogram(tag, values, self.bins), int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        from tensorboardX.summary import image as image_summary

        writer = self._require_open()
        for tag, img in images.items():
            writer.add_summary(image_summary(tag, np.asarray(img, np.float32), dataformats="HWC"), int(step))

    def write_video(self, step: int, tag: str, frames: np.ndarray, fps: int) -> None:
        try:
            import moviepy  # noqa: F401  (tensorboardX encodes videos with it)
        except ImportError:
            raise ImportError("TensorboardWriter.write_video needs moviepy: pip install 'emote-jax[video]'") from None
        from tensorboardX.summary import video as video_summary

        # tensorboardX takes (N, T, C, H, W)
        summary = video_summary(tag, np.transpose(frames, (0, 3, 1, 2))[None], fps=fps)
        self._require_open().add_summary(summary, int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class CSVWriter(MetricWriter):
    """A wide CSV file: one row per log step, a column per tag (``step`` first; blank where a tag was
    not logged at that step). Tags may appear during the run, so rows are kept in memory (one per log
    step: small) and the file is rewritten every ``flush_every`` rows and when closed.

    A training that starts above step 1 (resumed from a checkpoint) keeps the file's rows of the steps
    before it; a training from step 1 starts the file afresh.
    """

    def __init__(self, path: str | Path, flush_every: int = 50):
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self.rows: list[dict[str, float]] = []
        self._columns: dict[str, None] = {}
        self._unflushed = 0

    def open(self, start_step: int = 1) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows, self._columns, self._unflushed = [], {}, 0
        if start_step > 1 and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self._columns = dict.fromkeys(reader.fieldnames or ["step"])
                for r in reader:
                    row = {k: float(v) for k, v in r.items() if v not in ("", None)}
                    if "step" in row and row["step"] < start_step:
                        row["step"] = int(row["step"])
                        self.rows.append(row)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        if self.rows and self.rows[-1]["step"] == row["step"]:
            self.rows[-1].update(row)  # two writes at one step (a final log): one row
        else:
            self.rows.append(row)
        for k in row:
            self._columns.setdefault(k, None)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self._columns), restval="")
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.path)
        self._unflushed = 0

    def close(self) -> None:
        self.flush()


def _fmt(v: float) -> str:
    if v == 0 or (1e-3 <= abs(v) < 1e5):
        return f"{v:.4g}"
    return f"{v:.3e}"


class TerminalWriter(MetricWriter):
    """One text line per log step: ``bp_step 1000 | q1/loss 0.1234 | ...`` (the reference's TerminalLogger
    logs through Python's :mod:`logging` too).

    Args:
        out: a text stream, or None for the Python logger ``emote_jax`` at level INFO.
        windowed: also print the ``.../windowed`` tags (off: they double the line).
    """

    def __init__(self, out: TextIO | None = None, windowed: bool = False):
        self.out = out
        self.windowed = windowed
        self._log = logging.getLogger("emote_jax")

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        parts = [f"{k} {_fmt(v)}" for k, v in scalars.items() if self.windowed or not k.endswith("/windowed")]
        line = " | ".join([f"bp_step {step}", *parts])
        if self.out is None:
            self._log.info("%s", line)
        else:
            print(line, file=self.out, flush=True)


class WandbWriter(MetricWriter):
    """Weights & Biases through ``wandb.init`` / ``wandb.log(..., step=bp_step)`` / ``wandb.finish``.

    Needs the optional dependency (``pip install 'emote-jax[wandb]'``). ``mode="offline"`` writes the run
    under ``dir`` without a network or an account (``wandb sync`` uploads it later).

    Args:
        project, name, config, mode, dir: passed to ``wandb.init``; further keyword arguments too.
    """

    def __init__(self, project: str | None = None, name: str | None = None, config: Mapping[str, Any] | None = None,
                 mode: str | None = None, dir: str | Path | None = None, **init_kwargs: Any):
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise ImportError(
                "WandbWriter needs the optional dependency wandb: pip install 'emote-jax[wandb]'"
            ) from e
        self.init_kwargs = dict(project=project, name=name, config=dict(config or {}), mode=mode,
                                dir=str(dir) if dir is not None else None, **init_kwargs)
        self.run: Any = None

    def open(self, start_step: int = 1) -> None:
        import wandb

        if self.run is None:
            if self.init_kwargs["dir"] is not None:
                Path(self.init_kwargs["dir"]).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(**{k: v for k, v in self.init_kwargs.items() if v is not None})

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.run is None:
            raise RuntimeError("WandbWriter is not open: call open() first")
        self.run.log(dict(scalars), step=int(step))

    def write_histograms(self, step: int, histograms: Mapping[str, np.ndarray]) -> None:
        import wandb

        data = {}
        for tag, values in histograms.items():
            values = np.asarray(values, np.float64).reshape(-1)
            values = values[np.isfinite(values)]
            if values.size:
                data[f"hist/{tag}"] = wandb.Histogram(values)
        if data:
            self.run.log(data, step=int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        import wandb

        self.run.log({f"images/{tag}": wandb.Image(np.asarray(img, np.float32)) for tag, img in images.items()},
                     step=int(step))

    def write_video(self, step: int, tag: str, frames: np.ndarray, fps: int) -> None:
        import wandb

        self.run.log({f"videos/{tag}": wandb.Video(np.transpose(frames, (0, 3, 1, 2)), fps=fps)}, step=int(step))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite real number."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


__all__ = ["CSVWriter", "MetricWriter", "TensorboardWriter", "TerminalWriter", "WandbWriter", "finite"]
