"""Read TensorBoard event files back without TensorFlow (or TensorBoard).

An event file is a sequence of TFRecords (``uint64`` length, ``uint32`` masked CRC of the length, the
data, ``uint32`` masked CRC of the data); each record is an ``Event`` protocol buffer, parsed with the
protos that tensorboardX ships. A record cut short at the end of a file that is still being written is
ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Histogram:
    """One histogram event: ``bucket[i]`` values fell at or below ``bucket_limit[i]`` (and above the previous)."""

    min: float
    max: float
    num: float
    sum: float
    bucket_limit: np.ndarray
    bucket: np.ndarray


def event_files(log_dir: str | Path) -> list[Path]:
    """The event files under ``log_dir`` (recursively), in name order (their names start with a timestamp)."""
    log_dir = Path(log_dir)
    if not log_dir.exists():
        raise FileNotFoundError(f"no TensorBoard log directory at {str(log_dir)!r}")
    return sorted(p for p in log_dir.rglob("events.out.tfevents.*") if p.is_file())


def iter_events(path: str | Path) -> Iterator[Any]:
    """The ``Event`` protos of one event file, in order."""
    from tensorboardX.proto.event_pb2 import Event

    data = Path(path).read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        start, end = pos + 12, pos + 12 + length
        if end + 4 > len(data):
            break  # a record still being written
        event = Event()
        event.ParseFromString(data[start:end])
        yield event
        pos = end + 4


def _summary_values(log_dir: str | Path) -> Iterator[tuple[int, Any]]:
    """``(step, summary value)`` of every summary value in the event files under ``log_dir``."""
    for path in event_files(log_dir):
        for event in iter_events(path):
            if event.HasField("summary"):
                for v in event.summary.value:
                    yield int(event.step), v


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` of every scalar in the event files under ``log_dir``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for step, v in _summary_values(log_dir):
        if v.HasField("simple_value"):
            out.setdefault(v.tag, []).append((step, float(v.simple_value)))
        elif v.HasField("tensor") and len(v.tensor.float_val) == 1:
            out.setdefault(v.tag, []).append((step, float(v.tensor.float_val[0])))
    return out


def read_histograms(log_dir: str | Path) -> dict[str, list[tuple[int, Histogram]]]:
    """``tag -> [(step, Histogram), ...]`` of every histogram in the event files under ``log_dir``."""
    out: dict[str, list[tuple[int, Histogram]]] = {}
    for step, v in _summary_values(log_dir):
        if v.HasField("histo"):
            h = v.histo
            out.setdefault(v.tag, []).append(
                (step, Histogram(h.min, h.max, h.num, h.sum, np.asarray(h.bucket_limit), np.asarray(h.bucket)))
            )
    return out


def read_images(log_dir: str | Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``tag -> [(step, uint8 image (H, W, C)), ...]`` of every image in the event files under ``log_dir``
    (decoded from their PNG with Pillow, which matplotlib brings)."""
    import io

    from PIL import Image

    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for step, v in _summary_values(log_dir):
        if v.HasField("image"):
            img = np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string)))
            out.setdefault(v.tag, []).append((step, img if img.ndim == 3 else img[..., None]))
    return out
