"""Memory export and import: a versioned on-disk format (a JSON manifest and one ``.npy`` per column).

The format (``emote_jax.memory`` version 1, described in docs/memory-format.md) holds a
:class:`~emote_jax.memory.table.ReplayTable` exactly: the live rows of every column, the ring position,
the episode links (``next_row``), the running episodes' open ends (``tips``), the next episode id and
the sampler's RNG state. Nothing is pickled: arrays are read with ``np.load(..., allow_pickle=False)``
and checked against the manifest (dtype, shape, CRC-32) and against the table they go into (layout)
before anything changes. An import that fails leaves the table as it was.

* :func:`export_memory` / :func:`import_memory`: one table to / from one directory (the export is
  written to a temporary directory and renamed into place, so a crash never leaves half an export).
* :class:`MemoryExporter`: a host callback that exports every N backprop steps and at the end of
  training (also after an error), keeping the last M exports as ``<directory>/step_<bp_step>``.
* :class:`MemoryImporter`: a host callback (order -1) that imports an export in ``restore_state``.

A :class:`~emote_jax.checkpoint.Checkpointer` given the memory writes the same format inside each
checkpoint (``<step>/memory/<name>/``), so that memory and training state are saved atomically together.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emote_jax.callback import HostCallback
from emote_jax.context import Context
from emote_jax.memory.table import ReplayTable

MEMORY_FORMAT = "emote_jax.memory"
MEMORY_FORMAT_VERSION = 1
#: Version 2 adds a ``sampler`` section (a prioritized or coverage sampler's state); an export without one
#: (a uniform table's) is still written as version 1, so that older readers keep reading it.
SAMPLER_FORMAT_VERSION = 2
SUPPORTED_MEMORY_FORMAT_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
#: dtype kinds an exported column may have (bool, signed/unsigned ints, floats): never objects.
_ARRAY_KINDS = "biuf"


class MemoryFormatError(ValueError):
    """A memory export that cannot be read into a table: what is wrong, with which column, and where."""


def _crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _file_name(i: int, column: str) -> str:
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', column)}.npy"


def _package_version() -> str:
    try:
        from emote_jax import __version__
    except ImportError:  # a stale editable install that maps emote_jax as a namespace package
        from importlib.metadata import version

        return version("emote-jax")
    return __version__


def write_table_state(state: Mapping[str, Any], directory: str | os.PathLike) -> None:
    """Write a :meth:`ReplayTable.state_dict` snapshot into ``directory`` (created if needed).

    Not atomic by itself: :func:`export_memory` and the Checkpointer add the atomic rename.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    columns = _write_arrays(directory, state["columns"], "")
    sampler = state.get("sampler")
    with_sampler = sampler is not None and sampler["kind"] != "uniform"
    manifest = {
        "format": MEMORY_FORMAT,
        "format_version": SAMPLER_FORMAT_VERSION if with_sampler else MEMORY_FORMAT_VERSION,
        "package_version": _package_version(),
        "capacity": int(state["capacity"]),
        "size": int(state["size"]),
        "head": int(state["head"]),
        "next_episode_id": int(state["next_episode_id"]),
        "observation_spec": {
            k: {"shape": list(shape), "dtype": np.dtype(dtype).str} for k, (shape, dtype) in state["observation_spec"].items()
        },
        "action_shape": list(state["action_shape"]),
        "action_dtype": np.dtype(state["action_dtype"]).str,
        "tips": np.asarray(state["tips"]).tolist(),
        "rng_state": state["rng_state"],
        "columns": columns,
    }
    if with_sampler:
        manifest["sampler"] = {"kind": sampler["kind"], "scalars": sampler["scalars"],
                               "arrays": _write_arrays(directory, sampler["arrays"], "sampler_")}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _write_arrays(directory: Path, arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Save each array as ``<prefix><i>_<name>.npy``; their manifest entries."""
    entries = {}
    for i, (name, arr) in enumerate(arrays.items()):
        fname = prefix + _file_name(i, name)
        np.save(directory / fname, arr, allow_pickle=False)
        entries[name] = {"file": fname, "dtype": arr.dtype.str, "shape": list(arr.shape), "crc32": _crc32(arr)}
    return entries


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an export, checked for the format name and a supported version."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MemoryFormatError(f"{directory}: expected a memory export with {MANIFEST}, found none")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MemoryFormatError(f"{path}: the manifest is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MEMORY_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise MemoryFormatError(f"{path}: expected format {MEMORY_FORMAT!r}, got {got!r}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_MEMORY_FORMAT_VERSIONS:
        raise MemoryFormatError(
            f"{path}: memory format version {version!r} is not supported by emote_jax {_package_version()} "
            f"(it reads versions {list(SUPPORTED_MEMORY_FORMAT_VERSIONS)})"
        )
    return manifest


def read_table_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Read an export into a :meth:`ReplayTable.load_state_dict` snapshot, checking every file.

    Raises :class:`MemoryFormatError` naming the column and the problem (a missing file, an unreadable
    or object array, a dtype or shape other than the manifest's, a CRC-32 mismatch).
    """
    directory = Path(directory)
    m = read_manifest(directory)
    try:
        spec = {k: (tuple(v["shape"]), np.dtype(v["dtype"])) for k, v in m["observation_spec"].items()}
        entries = dict(m["columns"])
        state: dict[str, Any] = {
            k: m[k] for k in ("capacity", "size", "head", "next_episode_id", "rng_state")
        }
        state.update(observation_spec=spec, action_shape=tuple(m["action_shape"]),
                     action_dtype=np.dtype(m["action_dtype"]), tips=np.asarray(m["tips"], np.int64).reshape(-1, 2))
    except (KeyError, TypeError, ValueError) as e:
        raise MemoryFormatError(f"{directory / MANIFEST}: malformed manifest ({type(e).__name__}: {e})") from None
    state["columns"] = _read_arrays(directory, entries, "column")
    if "sampler" in m:
        try:
            kind, scalars, arrays = m["sampler"]["kind"], dict(m["sampler"]["scalars"]), dict(m["sampler"]["arrays"])
        except (KeyError, TypeError, ValueError) as e:
            raise MemoryFormatError(f"{directory / MANIFEST}: malformed sampler section ({type(e).__name__}: {e})") from None
        state["sampler"] = {"kind": kind, "scalars": scalars, "arrays": _read_arrays(directory, arrays, "sampler array")}
    return state


def _read_arrays(directory: Path, entries: Mapping[str, Any], what: str) -> dict[str, np.ndarray]:
    """The arrays of manifest ``entries`` (``{name: {file, dtype, shape, crc32}}``), each checked."""
    columns = {}
    for name, entry in entries.items():
        try:
            fname, dtype, shape, crc = entry["file"], np.dtype(entry["dtype"]), tuple(entry["shape"]), entry["crc32"]
        except (KeyError, TypeError) as e:
            raise MemoryFormatError(f"{directory}: {what} {name!r}: malformed manifest entry ({e})") from None
        if dtype.kind not in _ARRAY_KINDS or os.sep in fname or fname.startswith("."):
            raise MemoryFormatError(f"{directory}: {what} {name!r}: refusing dtype {dtype} / file name {fname!r}")
        path = directory / fname
        if not path.is_file():
            raise MemoryFormatError(f"{directory}: {what} {name!r}: its file {fname} is missing")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise MemoryFormatError(f"{path}: {what} {name!r} is not a readable .npy array ({e})") from None
        if arr.dtype != dtype:
            raise MemoryFormatError(f"{path}: {what} {name!r}: the manifest says dtype {dtype}, the file holds {arr.dtype}")
        if arr.shape != shape:
            raise MemoryFormatError(f"{path}: {what} {name!r}: the manifest says shape {shape}, the file holds {arr.shape}")
        if _crc32(arr) != crc:
            raise MemoryFormatError(f"{path}: {what} {name!r}: CRC-32 mismatch, the file is corrupted")
        columns[name] = arr
    return columns


def export_memory(table: ReplayTable, directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export ``table`` to ``directory`` atomically (written beside it, then renamed into place).

    ``overwrite`` replaces an existing export; otherwise an existing ``directory`` is an error.
    Returns the directory.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"export_memory: {directory} exists; pass overwrite=True to replace it")
    state = table.state_dict()  # a consistent snapshot taken under the table's lock
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        write_table_state(state, tmp)
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(directory, old)
            os.rename(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def import_memory(table: ReplayTable, directory: str | os.PathLike) -> None:
    """Replace the content of ``table`` with the export in ``directory`` (exactly; unchanged on error)."""
    state = read_table_state(directory)
    try:
        table.load_state_dict(state, where=f"import_memory({directory})")
    except (TypeError, ValueError) as e:
        raise MemoryFormatError(str(e)) from e


_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_exports(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(bp_step, path)`` of the complete ``step_<n>`` exports under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / MANIFEST).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def resolve_export(path: str | os.PathLike) -> Path:
    """``path`` itself when it is an export, else its latest ``step_<n>`` export; a clear error if none."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    exports = list_exports(path)
    if not exports:
        raise FileNotFoundError(f"no memory export in {path} (expected {MANIFEST} or step_<n>/{MANIFEST})")
    return exports[-1][1]


def completed_steps(ctx: Context) -> int:
    """The number of backprop steps the state in ``ctx`` has been through (``bp_step - 1`` of the state)."""
    from emote_jax.trainer import TRAINER_SLOT

    return int(ctx.state[TRAINER_SLOT]["bp_step"]) - 1


class CallEndSchedule:
    """Decides when an every-N-steps host action is due, at the end of a compiled call.

    With K steps per call the host state (collectors' env steps) of a call is complete only after the
    host hooks of its last step; saving in between would pair the device state after K steps with a
    host state after fewer. So the action runs at the last host step of a call during which a multiple
    of ``interval`` was reached (exactly at the multiple when K divides the interval).
    """

    def __init__(self, interval: int | None):
        if interval is not None and (not isinstance(interval, int) or interval < 1):
            raise ValueError(f"expected interval to be None or an int >= 1, got {interval!r}")
        self.interval = interval
        self._mark = 0

    def start(self, ctx: Context) -> None:
        """Count from the state's step (a resumed run does not redo the action of its start step)."""
        if self.interval:
            self._mark = completed_steps(ctx) // self.interval

    def due(self, ctx: Context) -> int | None:
        """The completed step count if the action is due now, else None."""
        if not self.interval:
            return None
        done = completed_steps(ctx)
        if ctx.bp_step != done or done // self.interval <= self._mark:
            return None
        self._mark = done // self.interval
        return done


class MemoryExporter(HostCallback):
    """Exports a table every ``interval`` backprop steps and at the end of training.

    Exports go to ``<directory>/step_<bp_step>`` (9 digits), each atomic; the last ``keep`` are kept
    (None: all). ``end_training`` always exports (after an error too, so that the data collected up to
    a crash survives; the collectors' ``end_training``, of lower order, has closed the running episodes
    by then), replacing an export of the same step.

    Args:
        table: the table to export.
        directory: where the ``step_<n>`` exports go.
        interval: backprop steps between exports (None: only at the end).
        keep: how many exports to keep.
        export_at_end: export in ``end_training``.
        name, order: as for every callback; order 2000 runs after collectors and loggers.
    """

    def __init__(
        self,
        table: ReplayTable,
        directory: str | os.PathLike,
        interval: int | None = None,
        *,
        keep: int | None = 3,
        export_at_end: bool = True,
        name: str = "memory_exporter",
        order: int = 2000,
    ):
        super().__init__(name=name, order=order, cycle=1 if interval else None)
        if keep is not None and keep < 1:
            raise ValueError(f"{name}: expected keep to be None or >= 1, got {keep}")
        self.table, self.directory, self.keep = table, Path(directory), keep
        self.export_at_end = export_at_end
        self._schedule = CallEndSchedule(interval)

    def exports(self) -> list[Path]:
        """The complete exports, oldest first."""
        return [p for _, p in list_exports(self.directory)]

    def export(self, bp_step: int) -> Path:
        """Export now as ``step_<bp_step>`` and drop exports beyond ``keep``."""
        path = export_memory(self.table, self.directory / f"step_{bp_step:09d}", overwrite=True)
        if self.keep is not None:
            for old in self.exports()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    def begin_training(self, ctx: Context) -> None:
        self._schedule.start(ctx)

    def end_cycle(self, ctx: Context) -> None:
        step = self._schedule.due(ctx)
        if step is not None:
            self.export(step)

    def end_training(self, ctx: Context) -> None:
        if self.export_at_end:
            self.export(completed_steps(ctx))


class MemoryImporter(HostCallback):
    """Fills a table from an export before training (in ``restore_state``, order -1).

    Args:
        table: the table to fill (same capacity, observation spec and action layout as the export's).
        path: an export directory, or a :class:`MemoryExporter` directory (its latest export is used).
        missing_ok: do nothing when there is no export (instead of FileNotFoundError).
    """

    def __init__(self, table: ReplayTable, path: str | os.PathLike, *, missing_ok: bool = False,
                 name: str = "memory_importer", order: int = -1):
        super().__init__(name=name, order=order)
        self.table, self.path, self.missing_ok = table, Path(path), missing_ok
        self.imported_from: Path | None = None

    def restore_state(self, ctx: Context) -> None:
        try:
            path = resolve_export(self.path)
        except FileNotFoundError:
            if self.missing_ok:
                return None
            raise
        import_memory(self.table, path)
        self.imported_from = path
        return None
