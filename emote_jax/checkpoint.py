"""Orbax checkpoints of a whole training run, and exact resume.

:class:`Checkpointer` (a host callback) writes, every N backprop steps and at the end of training, one
Orbax ``CheckpointManager`` step directory named by the number of completed backprop steps::

    <directory>/<bp_step>/
        state/    every callback's ``state_dict(slot)`` under its name, and the trainer's part:
                  {"trainer": {"slot": {"bp_step": int32}, "key_data": uint32[...]}}   (Orbax StandardSave)
        meta/     JSON: format name and version, package version, bp_step, bp_samples, the PRNG key's
                  implementation, the saved names, a CRC-32 per array, and the host-side state of the
                  callbacks that have one (collector RNG/key/counters/episode bookkeeping)   (JsonSave)
        memory/   the replay tables, in the memory export format (emote_jax.memory v1)   (our handler)

Orbax writes the step into a temporary directory and renames it into place when complete, so a
process killed during a save leaves the previous checkpoint as the latest loadable one.

:class:`CheckpointLoader` (a host callback, order -1) restores in ``restore_state``: the parts chosen by
``load_network`` / ``load_optimizer`` / ``load_hparams`` of every named callback's slot, the counters
(``bp_step``, ``bp_samples``) and the trainer's PRNG key, the host-side state of callbacks that have one,
and the replay tables. Arrays are restored against an abstract tree built from the running state
(shapes, dtypes and the *current* shardings), so a checkpoint written on an accelerator loads on the
CPU. Everything is read and checked before anything changes: on any error (unknown format version,
another network shape, a truncated or corrupted file, a bad memory export) the running state and the
memory are as they were. No pickle on any load path.

Integrity: :func:`verify_checkpoint` reads one checkpoint without a run (its metadata, every array against
the layout it was saved with, the memory) and returns what is wrong with it: unreadable or malformed
metadata, missing or half-written item directories, arrays that do not read or do not match their CRC-32,
a memory export that does not read or check. Without a ``step`` the loader checks the newest checkpoint
first and, when it fails, takes the next older one: each one passed over is named in one
:class:`CheckpointSkippedWarning` and, once the older one is loaded, renamed to ``<step>.damaged`` (kept
for inspection, out of the way of the steps the resumed run writes). A checkpoint of an unsupported format
version is not passed over: that is an error. :func:`inspect_checkpoints` lists a directory with sizes,
times and the result of the check (``emote-jax checkpoints``).

Host-side state: a callback takes part by defining ``host_state_dict() -> dict`` (NumPy arrays and
JSON values) and ``load_host_state_dict(dict)``; optionally ``checkpoint_lock()``, a context manager held
while the checkpoint snapshots it and the memory (a threaded collector pauses between two steps).

Why the v0 ``CheckpointManager`` API and what exact resume means: docs/decisions/0003 and 0004.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import os
import re
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as preservation

from emote_jax.callback import HostCallback, _Base
from emote_jax.context import Context, PyTree
from emote_jax.faults import NONFINITE_SUFFIX, NonFiniteError
from emote_jax.memory.export import CallEndSchedule, completed_steps, read_table_state, write_table_state
from emote_jax.memory.table import ReplayTable
from emote_jax.trainer import TRAINER_SLOT, _check_same_state

CHECKPOINT_FORMAT = "emote_jax.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
SUPPORTED_CHECKPOINT_FORMAT_VERSIONS = (1,)
_ARRAY_KINDS = "biuf"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this run: what is wrong, and where."""


class CheckpointNotFoundError(FileNotFoundError):
    """No (such) checkpoint in the directory."""


class CheckpointDamagedError(CheckpointError):
    """The checkpoint asked for, or every checkpoint in the directory, fails its integrity check.

    Attributes:
        problems: ``{step: [what is wrong, ...]}`` for each checkpoint that failed.
    """

    def __init__(self, message: str, problems: Mapping[int, Sequence[str]]):
        super().__init__(message)
        self.problems = {step: list(p) for step, p in problems.items()}


class CheckpointSkippedWarning(RuntimeWarning):
    """A checkpoint failed its integrity check and an older one was loaded instead (the message names it)."""


# ---- host state: JSON with exact, pickle-free arrays -------------------------------------------------


def encode_host_state(value: Any, path: str = "") -> Any:
    """A JSON-serialisable copy of ``value``: dicts (str keys), lists, numbers, str, None, and arrays.

    NumPy/JAX arrays of bool, int, uint or float dtype become ``{"__ndarray__": {"dtype", "shape",
    "data": base64 of the raw bytes}}`` (exact); tuples become lists. Anything else is a TypeError naming
    where it is.
    """
    if isinstance(value, (np.ndarray, jax.Array)):
        arr = np.asarray(value)
        if arr.dtype.kind not in _ARRAY_KINDS:
            raise TypeError(f"host state{path}: arrays must be bool/int/float, got dtype {arr.dtype}")
        data = base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")
        return {"__ndarray__": {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": data}}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"host state{path}: dict keys must be str, got {k!r}")
            out[k] = encode_host_state(v, f"{path}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [encode_host_state(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"host state{path}: expected arrays, dicts, lists, numbers, str or None, got {type(value).__name__}")


def decode_host_state(value: Any, path: str = "") -> Any:
    """The inverse of :func:`encode_host_state` (arrays come back as NumPy arrays of the saved dtype)."""
    if isinstance(value, Mapping):
        if set(value) == {"__ndarray__"}:
            spec = value["__ndarray__"]
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(d) for d in spec["shape"])
            if dtype.kind not in _ARRAY_KINDS:
                raise CheckpointError(f"host state{path}: refusing an array of dtype {dtype}")
            raw = base64.b64decode(spec["data"], validate=True)
            if len(raw) != math.prod(shape) * dtype.itemsize:
                raise CheckpointError(f"host state{path}: {len(raw)} bytes do not make a {dtype}{list(shape)} array")
            return np.frombuffer(raw, dtype).reshape(shape).copy()
        return {k: decode_host_state(v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [decode_host_state(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _saveable(arr: np.ndarray, path: str) -> bool:
    """Whether a float leaf may be checkpointed: finite, or, for a hyperparameter (a ``/hparams/`` path),
    an infinite bound (``max_grad_norm=inf``: no clipping; ``max_alpha=inf``: no cap); NaN never."""
    if "/hparams/" in f"/{path}/":
        return not np.isnan(arr).any()
    return bool(np.isfinite(arr).all())


def _has_host_state(cb: Any) -> bool:
    return callable(getattr(cb, "host_state_dict", None)) and callable(getattr(cb, "load_host_state_dict", None))


# ---- the memory as an Orbax item ----------------------------------------------------------------------


class MemoryCheckpointHandler(ocp.CheckpointHandler):
    """Writes and reads replay-table snapshots in the memory export format, one subdirectory per table."""

    def save(self, directory: Any, args: MemorySave) -> None:  # type: ignore[override]
        for name, state in args.tables.items():
            write_table_state(state, Path(os.fspath(directory)) / name)

    def restore(self, directory: Any, args: MemoryRestore | None = None) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        names = args.names if args is not None else []
        return {name: read_table_state(Path(os.fspath(directory)) / name) for name in names}


@ocp.args.register_with_handler(MemoryCheckpointHandler, for_save=True)
@dataclasses.dataclass
class MemorySave(ocp.args.CheckpointArgs):
    """``{table name: ReplayTable.state_dict()}`` to save."""

    tables: dict[str, dict[str, Any]]


@ocp.args.register_with_handler(MemoryCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class MemoryRestore(ocp.args.CheckpointArgs):
    """The names of the tables to read."""

    names: list[str]


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
            "memory": MemoryCheckpointHandler()}


# ---- helpers ------------------------------------------------------------------------------------------


def _check_callbacks(callbacks: Sequence[_Base], where: str) -> list[_Base]:
    callbacks = list(callbacks)
    names = [getattr(cb, "name", None) for cb in callbacks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: callback names must be unique (each names its part of a checkpoint); "
                         f"duplicated: {dupes}")
    if TRAINER_SLOT in names:
        raise ValueError(f"{where}: the name {TRAINER_SLOT!r} is reserved for the trainer's own part")
    return callbacks


def _tables(memory: ReplayTable | Mapping[str, ReplayTable] | None, where: str) -> dict[str, ReplayTable]:
    if memory is None:
        return {}
    tables = {"default": memory} if isinstance(memory, ReplayTable) else dict(memory)
    for name, table in tables.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise ValueError(f"{where}: table names become directory names; got {name!r}")
        if not isinstance(table, ReplayTable):
            raise TypeError(f"{where}: expected ReplayTable for memory {name!r}, got {type(table).__name__}")
    return tables


def _path_str(path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _flat(tree: PyTree) -> dict[str, Any]:
    return {_path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _crc32(arr: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _state_tree(callbacks: Sequence[_Base], ctx: Context) -> dict[str, PyTree]:
    """What ``state/`` holds: each slot-owning callback's state dict, and the trainer's part."""
    tree: dict[str, PyTree] = {cb.name: cb.state_dict(ctx.state[cb.name]) for cb in callbacks if cb.name in ctx.state}
    tree[TRAINER_SLOT] = {"slot": ctx.state[TRAINER_SLOT], "key_data": jax.random.key_data(ctx.key)}
    return tree


def _abstract(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs with the shardings of the running arrays (default device for host arrays)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x: Any) -> jax.ShapeDtypeStruct:
        x_arr = x if isinstance(x, jax.Array) else np.asarray(x)
        return jax.ShapeDtypeStruct(x_arr.shape, x_arr.dtype, sharding=getattr(x_arr, "sharding", default))

    return jax.tree.map(one, tree)


def _describe(shape: Any, dtype: Any) -> str:
    return f"{np.dtype(dtype)}{list(shape)}"


def _manager(directory: Path, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=options, item_handlers=_item_handlers())


def _reader(directory: Path) -> ocp.CheckpointManager:
    return _manager(directory, ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=False,
                                                            cleanup_tmp_directories=False))


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
    """The steps of the complete checkpoints in ``directory``, ascending ([] if there is none)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        return []
    with contextlib.closing(_reader(directory)) as mngr:
        return sorted(mngr.all_steps())


def latest_checkpoint_step(directory: str | os.PathLike) -> int | None:
    """The latest complete checkpoint's step in ``directory``, or None."""
    steps = checkpoint_steps(directory)
    return steps[-1] if steps else None


def _flagged(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if k.endswith(NONFINITE_SUFFIX) and np.any(np.asarray(v) > 0)]


# ---- reading and checking one checkpoint (shared by the loader and verify_checkpoint) ---------------------

#: A checkpoint passed over by a loader is renamed ``<step>.damaged`` (``.damaged.1``, ... if that exists).
DAMAGED_SUFFIX = ".damaged"
_TMP_NAME = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
_DAMAGED_NAME = re.compile(r"^(\d+)" + re.escape(DAMAGED_SUFFIX) + r"(\.\d+)?$")
#: The fields of ``meta/`` a loader relies on, with their JSON types.
_META_FIELDS: dict[str, type] = {
    "bp_step": int, "bp_samples": int, "key_impl": str, "callbacks": list, "memory": list, "crc32": dict,
    "host_state": dict,
}


#: What a problem with each item is called (the loader's messages use the same words).
_ITEM_PROBLEM = {"meta": "its metadata (meta/) is missing or unreadable",
                 "state": "its array metadata (state/) is missing, truncated or corrupted",
                 "memory": "its memory (memory/) could not be read"}


class _Problem(Exception):
    """What is wrong with one checkpoint (without its path), and the exception that showed it.

    ``unsupported`` marks a readable checkpoint of a format version this package cannot load: a loader
    reports it rather than passing it over for an older one.
    """

    def __init__(self, what: str, err: BaseException | None = None, *, unsupported: bool = False):
        super().__init__(what)
        self.what, self.err, self.unsupported = what, err, unsupported

    def __str__(self) -> str:
        return self.what if self.err is None else f"{self.what}: {type(self.err).__name__}: {_one_line(str(self.err))}"


def _one_line(text: str, limit: int = 400) -> str:
    """``text`` with its whitespace runs (newlines too) collapsed to one space, without the TensorStore spec
    that TensorStore errors end with, cut at ``limit`` characters."""
    text = " ".join(text.split(" [tensorstore_spec=")[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_meta(mngr: ocp.CheckpointManager, step: int) -> dict[str, Any]:
    """The ``meta/`` item of ``step``, checked for the format name, a supported version and its fields."""
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - any failure to read is a problem of this checkpoint
        raise _Problem(_ITEM_PROBLEM["meta"], e) from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise _Problem(f"its metadata (meta/): expected format {CHECKPOINT_FORMAT!r}, got {got!r}")
    version = meta.get("format_version")
    if version not in SUPPORTED_CHECKPOINT_FORMAT_VERSIONS:
        raise _Problem(
            f"format version {version!r} (written by emote_jax {meta.get('package_version')}) is not supported by "
            f"emote_jax {_package_version()}, which reads versions {list(SUPPORTED_CHECKPOINT_FORMAT_VERSIONS)}",
            unsupported=True)
    bad = [f"{k} ({type(meta.get(k)).__name__})" for k, t in _META_FIELDS.items() if not isinstance(meta.get(k), t)]
    if bad:
        expected = ", ".join(f"{k}: {t.__name__}" for k, t in _META_FIELDS.items())
        raise _Problem(f"its metadata (meta/) is malformed: expected {expected}; got {', '.join(bad)}")
    return meta


def _saved_tree(mngr: ocp.CheckpointManager, step: int) -> Mapping[str, Any]:
    """The array metadata of ``state/`` (shapes and dtypes as saved)."""
    try:
        saved = mngr.item_metadata(step)["state"]
        tree = getattr(saved, "tree", saved)
    except Exception as e:  # noqa: BLE001
        raise _Problem(_ITEM_PROBLEM["state"], e) from e
    if not isinstance(tree, Mapping):
        raise _Problem(f"its array metadata (state/) is missing, truncated or corrupted: got {type(tree).__name__}")
    return tree


def _saved_abstract(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs of saved array metadata, placed on the default device."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=default), tree)


def _restore_arrays(mngr: ocp.CheckpointManager, step: int, abstract: PyTree) -> dict[str, PyTree]:
    try:
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001
        raise _Problem("its arrays (state/) could not be read: the checkpoint is truncated or corrupted", e) from e


def _restore_memory(mngr: ocp.CheckpointManager, step: int, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    try:
        return mngr.restore(step, args=ocp.args.Composite(memory=MemoryRestore(sorted(names))))["memory"]
    except Exception as e:  # noqa: BLE001
        raise _Problem(_ITEM_PROBLEM["memory"], e) from e


def _crc_problems(flat: Mapping[str, Any], crcs: Mapping[str, Any]) -> list[str]:
    """The arrays of ``flat`` (path -> host array) whose CRC-32 is not the one in ``crcs``, as one message."""
    bad = sorted(path for path, leaf in flat.items() if crcs.get(path) != _crc32(np.asarray(leaf)))
    if not bad:
        return []
    if len(bad) == 1:
        return [f"array {bad[0]} does not match its CRC-32: the checkpoint is corrupted"]
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return [f"arrays {', '.join(bad[:3])}{more} do not match their CRC-32: the checkpoint is corrupted"]


def _missing_items(step_dir: Path, items: Sequence[str]) -> list[_Problem]:
    """A problem for each of ``items`` whose directory is not in ``step_dir`` (a half-written checkpoint)."""
    return [_Problem(f"{_ITEM_PROBLEM[item]}: no directory {step_dir / item} (a half-written or partly deleted "
                     "checkpoint)") for item in items if not (step_dir / item).is_dir()]


def _check(mngr: ocp.CheckpointManager, directory: Path, step: int, memory: bool = True) -> list[_Problem]:
    """Everything wrong with the checkpoint of ``step`` ([] when intact): read and compare, change nothing."""
    missing = _missing_items(directory / str(step), ["meta", "state"])
    if missing:
        return missing
    try:
        meta = _read_meta(mngr, step)
        arrays = _restore_arrays(mngr, step, _saved_abstract(_saved_tree(mngr, step)))
    except _Problem as p:
        return [p]
    flat = _flat(jax.device_get(arrays))
    problems = [_Problem(text) for text in _crc_problems(flat, meta["crc32"])]
    absent = sorted(set(meta["crc32"]) - set(flat))
    if absent:
        problems.append(_Problem(f"arrays listed in meta/ are not in state/: {', '.join(absent[:3])}"
                                 + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")))
    if memory and meta["memory"]:
        missing = _missing_items(directory / str(step), ["memory"])
        try:
            _restore_memory(mngr, step, meta["memory"]) if not missing else None
        except _Problem as p:
            missing.append(p)
        problems += missing
    return problems


def verify_checkpoint(directory: str | os.PathLike, step: int, *, memory: bool = True) -> list[str]:
    """What is wrong with the checkpoint of ``step`` in ``directory``, one line each; [] when it is intact.

    Reads it as a loader would, without a run and without pickle: the metadata (format, version, fields),
    every array against the shapes and dtypes it was saved with, each compared with its CRC-32, and (with
    ``memory``) the replay tables with their own CRC-32s. Changes nothing.
    """
    directory = Path(directory).absolute()
    if not (directory / str(step)).is_dir():
        return [f"no checkpoint directory {directory / str(step)}"]
    with contextlib.closing(_reader(directory)) as mngr:
        return [str(p) for p in _check(mngr, directory, step, memory)]


def _set_aside(directory: Path, step: int) -> Path:
    """Rename the checkpoint of ``step`` to ``<step>.damaged`` (numbered if taken); where it went."""
    target, n = directory / f"{step}{DAMAGED_SUFFIX}", 0
    while target.exists():
        n += 1
        target = directory / f"{step}{DAMAGED_SUFFIX}.{n}"
    (directory / str(step)).rename(target)
    return target


# ---- listing a checkpoint directory ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """One entry of a checkpoint directory, as :func:`inspect_checkpoints` found it.

    Attributes:
        path: the entry's directory.
        step: the backprop step it is named by.
        size_bytes: the sizes of its files, summed.
        modified: the newest modification time (Unix seconds) of a file in it.
        problems: what :func:`verify_checkpoint` found ([] = intact); None when not checked.
        note: for an entry that is not a loadable checkpoint, what it is (an interrupted save, a set-aside
            damaged checkpoint); None for a checkpoint.
    """

    path: Path
    step: int
    size_bytes: int
    modified: float
    problems: list[str] | None
    note: str | None = None

    @property
    def ok(self) -> bool:
        """A checkpoint that passed its check."""
        return self.note is None and self.problems == []


def _disk_usage(path: Path) -> tuple[int, float]:
    """(bytes in files under ``path``, newest modification time of them or of ``path``)."""
    size, newest = 0, path.stat().st_mtime
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            size, newest = size + st.st_size, max(newest, st.st_mtime)
    return size, newest


def inspect_checkpoints(directory: str | os.PathLike, *, verify: bool = True) -> list[CheckpointInfo]:
    """The checkpoints in ``directory`` by step (with ``verify``, each checked by :func:`verify_checkpoint`),
    and the leftovers next to them: interrupted saves and checkpoints set aside as damaged.

    Raises :class:`CheckpointNotFoundError` if ``directory`` is not a directory.
    """
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise CheckpointNotFoundError(f"no checkpoint directory {directory}")
    entries = []
    for step in checkpoint_steps(directory):
        path = directory / str(step)
        size, modified = _disk_usage(path)
        problems = verify_checkpoint(directory, step) if verify else None
        entries.append(CheckpointInfo(path, step, size, modified, problems))
    notes = ((_TMP_NAME, "an interrupted save, not loadable (the next Checkpointer here removes it)"),
             (_DAMAGED_NAME, "set aside: it failed its integrity check when a run resumed from an older one"))
    for path in sorted(p for p in directory.iterdir() if p.is_dir()):
        for pattern, note in notes:
            m = pattern.match(path.name)
            if m:
                size, modified = _disk_usage(path)
                entries.append(CheckpointInfo(path, int(m.group(1)), size, modified, None, note))
    return sorted(entries, key=lambda e: (e.step, e.note is not None, e.path.name))


# ---- the Checkpointer ---------------------------------------------------------------------------------


class Checkpointer(HostCallback):
    """Saves the training state every ``interval`` backprop steps and at the end of training.

    Args:
        callbacks: the callbacks whose state to save: the slot of each (via ``state_dict``) and the
            host-side state of those that have one (collectors). Names must be unique.
        directory: the checkpoint directory (one Orbax step directory per checkpoint).
        interval: backprop steps between checkpoints (None: only the final one). With K steps per
            compiled call a checkpoint is written at the end of the call that reaches a multiple.
        keep: keep the last ``keep`` checkpoints (None: all).
        memory: a ReplayTable, or ``{name: table}``, saved inside every checkpoint (so that the memory
            and the training state always belong together).
        best_metric: also keep the ``keep_best`` best checkpoints by this metric: a metric name (the
            mean over the last compiled call of ``ctx.metrics[name]``) or ``ctx -> float``.
        best_mode: "max" or "min".
        keep_best: how many best checkpoints to keep besides the last ``keep``.
        save_at_end: write a final checkpoint in ``end_training`` (after a shutdown, a signal or an error),
            unless the state is not finite (a non-finite flag in the last metrics, or a non-finite value):
            then the last good checkpoint stays the latest.
        name, order: order 2000 runs after collectors and loggers, so a checkpoint sees their work.

    A non-finite value in the state at a periodic save is a :class:`~emote_jax.faults.NonFiniteError`.
    """

    def __init__(
        self,
        callbacks: Sequence[_Base],
        directory: str | os.PathLike,
        interval: int | None,
        *,
        keep: int | None = 3,
        memory: ReplayTable | Mapping[str, ReplayTable] | None = None,
        best_metric: str | Callable[[Context], float] | None = None,
        best_mode: str = "max",
        keep_best: int = 1,
        save_at_end: bool = True,
        name: str = "checkpointer",
        order: int = 2000,
    ):
        super().__init__(name=name, order=order, cycle=1 if interval else None)
        where = f"Checkpointer {name!r}"
        self.callbacks = _check_callbacks(callbacks, where)
        self.directory = Path(directory).absolute()
        self.memory = _tables(memory, where)
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"{where}: expected keep to be None or an int >= 1, got {keep!r}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"{where}: expected best_mode 'max' or 'min', got {best_mode!r}")
        if keep_best < 1:
            raise ValueError(f"{where}: expected keep_best >= 1, got {keep_best}")
        self.interval, self.keep, self.save_at_end = interval, keep, save_at_end
        self.best_metric, self.best_mode, self.keep_best = best_metric, best_mode, keep_best
        self._schedule = CallEndSchedule(interval)
        self._mngr: ocp.CheckpointManager | None = None
        #: Steps this checkpointer has written, in order.
        self.saved_steps: list[int] = []

    # ---- the manager -----------------------------------------------------------------------------------
    def manager(self) -> ocp.CheckpointManager:
        """The Orbax CheckpointManager (created on first use; removes leftovers of interrupted saves)."""
        if self._mngr is None:
            policies: list[Any] = [preservation.LatestN(self.keep) if self.keep else preservation.PreserveAll()]
            options: dict[str, Any] = {}
            if self.best_metric is not None:
                policies.append(preservation.BestN(get_metric_fn=lambda m: m["score"], n=self.keep_best,
                                                   reverse=self.best_mode == "min",
                                                   keep_checkpoints_without_metrics=False))
                options.update(best_fn=lambda m: m["score"], best_mode=self.best_mode)
            self._mngr = _manager(self.directory, ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True,
                preservation_policy=preservation.AnyPreservationPolicy(policies), **options))
        return self._mngr

    def all_steps(self) -> list[int]:
        return sorted(self.manager().all_steps())

    @property
    def latest_step(self) -> int | None:
        return self.manager().latest_step()

    def best_step(self) -> int | None:
        """The best kept checkpoint by ``best_metric`` (the latest without one)."""
        return self.manager().best_step()

    def close(self) -> None:
        if self._mngr is not None:
            self._mngr.close()
            self._mngr = None

    # ---- saving ------------------------------------------------------------------------------------------
    def _score(self, ctx: Context) -> dict[str, float] | None:
        if self.best_metric is None:
            return None
        if callable(self.best_metric):
            value = float(self.best_metric(ctx))
        else:
            values = np.asarray(ctx.metrics.get(self.best_metric, np.nan), np.float64)
            value = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        return {"score": value} if math.isfinite(value) else None

    def save(self, ctx: Context) -> int | None:
        """Write a checkpoint of ``ctx`` now, named by its completed steps; None if that step exists.

        Raises :class:`~emote_jax.faults.NonFiniteError` (and writes nothing) if a saved array is not finite.
        """
        step = completed_steps(ctx)
        mngr = self.manager()
        if step in mngr.all_steps():
            return None
        host_cbs = [cb for cb in self.callbacks if _has_host_state(cb)]
        with contextlib.ExitStack() as stack:
            for cb in host_cbs:
                lock = getattr(cb, "checkpoint_lock", None)
                if callable(lock):
                    stack.enter_context(lock())
            tree = _state_tree(self.callbacks, ctx)
            host = {cb.name: encode_host_state(cb.host_state_dict(), f"[{cb.name!r}]") for cb in host_cbs}
            tables = {name: t.state_dict() for name, t in self.memory.items()}
        flat = _flat(jax.device_get(tree))
        for path, leaf in flat.items():
            arr = np.asarray(leaf)
            if arr.dtype.kind in "fc" and not _saveable(arr, path):
                raise NonFiniteError(path.split("/")[0], step, f"a non-finite value in its state ({path})")
        meta = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_FORMAT_VERSION,
            "package_version": _package_version(),
            "created_unix": time.time(),
            "bp_step": step,
            "bp_samples": int(ctx.bp_samples),
            "key_impl": str(jax.random.key_impl(ctx.key)),
            "callbacks": sorted(k for k in tree if k != TRAINER_SLOT),
            "memory": sorted(tables),
            "crc32": {path: _crc32(np.asarray(leaf)) for path, leaf in flat.items()},
            "host_state": host,
        }
        items: dict[str, Any] = {"state": ocp.args.StandardSave(tree), "meta": ocp.args.JsonSave(meta)}
        if tables:
            items["memory"] = MemorySave(tables)
        mngr.save(step, args=ocp.args.Composite(**items), metrics=self._score(ctx), force=True)
        mngr.wait_until_finished()
        self.saved_steps.append(step)
        return step

    # ---- hooks ---------------------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        """Refuse a directory with checkpoints beyond this run's step (they would mix with its own)."""
        done = completed_steps(ctx)
        later = [s for s in self.all_steps() if s > done]
        if later:
            raise ValueError(
                f"{self.name}: {self.directory} already holds checkpoints of steps {later}, later than this run's "
                f"step {done}; this run's checkpoints would mix with them. Resume from the latest one, or use "
                "another directory (or remove them)."
            )
        self._schedule.start(ctx)

    def end_cycle(self, ctx: Context) -> None:
        if self._schedule.due(ctx) is not None:
            self.save(ctx)

    def end_training(self, ctx: Context) -> None:
        try:
            if not self.save_at_end or completed_steps(ctx) == 0:
                return
            flagged = _flagged(ctx.metrics)
            if flagged:
                warnings.warn(f"{self.name}: no final checkpoint: the last step flagged {flagged}; the latest "
                              f"checkpoint stays {self.latest_step}", RuntimeWarning, stacklevel=2)
                return
            try:
                self.save(ctx)
            except NonFiniteError as e:
                warnings.warn(f"{self.name}: no final checkpoint: {e}", RuntimeWarning, stacklevel=2)
        finally:
            self.close()


def _texts(failed: Mapping[int, Sequence[_Problem]]) -> dict[int, list[str]]:
    return {s: [str(p) for p in problems] for s, problems in failed.items()}


def _package_version() -> str:
    try:
        from emote_jax import __version__
    except ImportError:  # a stale editable install that maps emote_jax as a namespace package
        from importlib.metadata import version

        return version("emote-jax")
    return __version__


# ---- the CheckpointLoader -----------------------------------------------------------------------------


class CheckpointLoader(HostCallback):
    """Restores a checkpoint before training (in ``restore_state``; order -1).

    Args:
        callbacks: the callbacks to restore (the slot of each, and the host-side state of those that
            have one). Names must be unique.
        directory: the checkpoint directory a :class:`Checkpointer` wrote.
        step: which checkpoint. None: the newest one that passes its integrity check
            (:func:`verify_checkpoint`); each newer one that fails is named in a
            :class:`CheckpointSkippedWarning` and (with ``set_aside_damaged``) renamed ``<step>.damaged``
            once the older one is loaded. With a step: exactly that one, or an error.
        load_network / load_optimizer / load_hparams: which categories of each slot to restore
            (``Callback.load_state_dict``); a slot's "other" parts are always restored.
        load_counters: restore ``bp_step``, ``bp_samples`` and the trainer's PRNG key (training then
            continues from the checkpoint's step).
        load_host_state: restore the host-side state of the callbacks that have one.
        memory: the table(s) to fill from the checkpoint's memory (None: leave the memory alone).
        strict: refuse a checkpoint that holds callbacks or tables this loader was not given.
        set_aside_damaged: rename checkpoints later than the loaded one that fail their check to
            ``<step>.damaged`` (kept for inspection; a run that resumes here writes its own checkpoints at
            those steps). Later checkpoints that pass are left alone.
        out: where to print one line naming the checkpoint restored (None: silent).

    Raises (from ``restore_state``; nothing has changed then) :class:`CheckpointNotFoundError`;
    :class:`CheckpointDamagedError` when the asked checkpoint, or every one, fails its integrity check;
    or :class:`CheckpointError` naming the problem: an unknown format version, missing or unexpected
    names, arrays whose shape or dtype differ from the running state's (another network shape), a
    memory export that does not fit. The integrity check reads a checkpoint once more than loading it
    does (arrays and memory); a CRC-32 check of what is loaded stays in the load itself.
    """

    def __init__(
        self,
        callbacks: Sequence[_Base],
        directory: str | os.PathLike,
        *,
        step: int | None = None,
        load_network: bool = True,
        load_optimizer: bool = True,
        load_hparams: bool = True,
        load_counters: bool = True,
        load_host_state: bool = True,
        memory: ReplayTable | Mapping[str, ReplayTable] | None = None,
        strict: bool = True,
        set_aside_damaged: bool = True,
        out: TextIO | None = None,
        name: str = "checkpoint_loader",
        order: int = -1,
    ):
        super().__init__(name=name, order=order)
        where = f"CheckpointLoader {name!r}"
        self.callbacks = _check_callbacks(callbacks, where)
        self.directory = Path(directory).absolute()
        self.memory = _tables(memory, where)
        self.step = step
        self.flags = {"load_network": load_network, "load_optimizer": load_optimizer, "load_hparams": load_hparams}
        self.load_counters, self.load_host_state, self.strict = load_counters, load_host_state, strict
        self.set_aside_damaged, self.out = set_aside_damaged, out
        #: The step of the checkpoint restored by the last ``restore_state``.
        self.loaded_step: int | None = None
        #: ``{step: where it went}`` for the damaged checkpoints the last load renamed.
        self.set_aside: dict[int, Path] = {}

    def restore_state(self, ctx: Context) -> Context:
        return self.load(ctx)

    def _fail(self, step: int, what: str, err: BaseException | None = None) -> CheckpointError:
        detail = f": {type(err).__name__}: {err}" if err is not None else ""
        return CheckpointError(f"checkpoint {self.directory / str(step)}: {what}{detail}")

    def load(self, ctx: Context) -> Context:
        """``ctx`` with the checkpoint restored into it (and the host state and memory loaded).

        Without a ``step``: the newest checkpoint that passes :func:`verify_checkpoint`; the newer ones
        that fail are named in one :class:`CheckpointSkippedWarning` each (after the load).
        """
        if not self.directory.is_dir():
            raise CheckpointNotFoundError(f"no checkpoint directory {self.directory}")
        with contextlib.closing(_reader(self.directory)) as mngr:
            steps = sorted(mngr.all_steps())
            if not steps:
                raise CheckpointNotFoundError(f"no complete checkpoint in {self.directory}")
            if self.step is not None and self.step not in steps:
                raise CheckpointNotFoundError(f"no checkpoint of step {self.step} in {self.directory}; have {steps}")
            step, failed = self._pick(mngr, steps)
            try:
                new_ctx, commit = self._read(mngr, step, ctx)
            except CheckpointError as e:
                if failed:  # say why this one and not a newer one
                    raise CheckpointError(f"{e} (newer checkpoints failed their integrity check: "
                                          f"{self._summary(failed)})") from e
                raise
            later_failed = failed if self.step is None else self._failing(mngr, [s for s in steps if s > step])
        commit()
        self.loaded_step = step
        self._report(step, later_failed)
        return new_ctx

    def _failing(self, mngr: ocp.CheckpointManager, steps: Sequence[int]) -> dict[int, list[_Problem]]:
        """``{step: problems}`` of those of ``steps`` that fail their integrity check."""
        found = {s: _check(mngr, self.directory, s, memory=bool(self.memory)) for s in steps}
        return {s: p for s, p in found.items() if p}

    def _pick(self, mngr: ocp.CheckpointManager, steps: list[int]) -> tuple[int, dict[int, list[_Problem]]]:
        """The step to load (the asked one, or the newest intact one) and the newer ones that failed."""
        failed: dict[int, list[_Problem]] = {}
        for step in [self.step] if self.step is not None else steps[::-1]:
            problems = _check(mngr, self.directory, step, memory=bool(self.memory))
            unsupported = next((p for p in problems if p.unsupported), None)
            if unsupported is not None:  # not damage: a newer format; loading an older one would hide that
                raise self._fail(step, unsupported.what)
            if not problems:
                return step, failed
            failed[step] = problems
        if self.step is not None:
            raise CheckpointDamagedError(f"checkpoint {self.directory / str(self.step)} fails its integrity check: "
                                         f"{'; '.join(map(str, failed[self.step]))}", _texts(failed))
        what = "the only checkpoint" if len(failed) == 1 else f"every checkpoint ({len(failed)})"
        raise CheckpointDamagedError(f"{what} in {self.directory} fails its integrity check: {self._summary(failed)}",
                                     _texts(failed))

    def _summary(self, failed: Mapping[int, Sequence[_Problem]]) -> str:
        return "; ".join(f"{self.directory / str(s)}: {', '.join(map(str, p))}" for s, p in sorted(failed.items(),
                                                                                                    reverse=True))

    def _report(self, step: int, later_failed: Mapping[int, Sequence[_Problem]]) -> None:
        """Set aside the later checkpoints that failed, warn once for each, and say what was loaded."""
        self.set_aside = {}
        for s, problems in sorted(later_failed.items(), reverse=True):
            where = self.directory / str(s)
            moved = ""
            if self.set_aside_damaged:
                self.set_aside[s] = _set_aside(self.directory, s)
                moved = f"; renamed it to {self.set_aside[s].name}"
            loaded = f"loaded bp step {step} instead" if self.step is None else f"loaded the asked bp step {step}"
            warnings.warn(CheckpointSkippedWarning(
                f"checkpoint {where} fails its integrity check ({'; '.join(map(str, problems))}); {loaded}{moved}"),
                stacklevel=3)
        if self.out is not None:
            print(f"resuming from the checkpoint of bp step {step} in {self.directory}", file=self.out, flush=True)

    def _read(self, mngr: ocp.CheckpointManager, step: int, ctx: Context) -> tuple[Context, Callable[[], None]]:
        """Read and check everything; return the new context and a commit of the host-side changes."""
        try:
            meta = _read_meta(mngr, step)
        except _Problem as p:
            raise self._fail(step, p.what, p.err) from p.err

        # names
        wanted = [cb for cb in self.callbacks if cb.name in ctx.state]
        saved = set(meta.get("callbacks", []))
        missing = sorted({cb.name for cb in wanted} - saved)
        extra = sorted(saved - {cb.name for cb in wanted})
        if missing or (self.strict and extra):
            raise self._fail(step, f"expected state for callbacks {sorted(cb.name for cb in wanted)}; "
                                   f"missing from the checkpoint {missing}, not in this run {extra}")
        saved_tables = set(meta.get("memory", []))
        if not set(self.memory) <= saved_tables or (self.strict and self.memory and saved_tables - set(self.memory)):
            raise self._fail(step, f"expected memory tables {sorted(self.memory)}, the checkpoint has {sorted(saved_tables)}")
        host_cbs = [cb for cb in self.callbacks if _has_host_state(cb)] if self.load_host_state else []
        host_saved = meta.get("host_state", {})
        no_host = sorted(cb.name for cb in host_cbs if cb.name not in host_saved)
        if no_host:
            raise self._fail(step, f"no host-side state for {no_host} (saved for {sorted(host_saved)})")

        # arrays: compare with the checkpoint's metadata, then restore against the running state's layout
        current = _state_tree(wanted, ctx)
        abstract = _abstract(current)
        try:
            saved_tree = _saved_tree(mngr, step)
        except _Problem as p:
            raise self._fail(step, p.what, p.err) from p.err
        ours = {cb.name for cb in wanted} | {TRAINER_SLOT}
        saved_flat = _flat(saved_tree)
        self._check_layout(step, _flat(abstract), {p: m for p, m in saved_flat.items() if p.split("/")[0] in ours})
        if extra:  # strict=False: the parts of other callbacks are read (as saved) and dropped
            abstract = {**abstract, **{n: _saved_abstract(saved_tree[n]) for n in extra}}
        try:
            restored = _restore_arrays(mngr, step, abstract)
        except _Problem as p:
            raise self._fail(step, p.what, p.err) from p.err
        crc_problems = _crc_problems(_flat(jax.device_get({k: v for k, v in restored.items() if k in ours})),
                                     meta["crc32"])
        if crc_problems:
            raise self._fail(step, crc_problems[0])

        # the new state (pure)
        state = dict(ctx.state)
        for cb in wanted:
            slot = ctx.state[cb.name]
            new_slot = cb.load_state_dict(slot, restored[cb.name], **self.flags)
            state[cb.name] = _check_same_state(slot, new_slot, cb.name, "load_state_dict")
        key, bp_samples = ctx.key, ctx.bp_samples
        if self.load_counters:
            trainer = restored[TRAINER_SLOT]
            state[TRAINER_SLOT] = _check_same_state(ctx.state[TRAINER_SLOT], trainer["slot"], TRAINER_SLOT, "restore")
            try:
                key = jax.random.wrap_key_data(trainer["key_data"], impl=meta["key_impl"])
            except Exception as e:  # noqa: BLE001
                raise self._fail(step, f"cannot rebuild the PRNG key (impl {meta.get('key_impl')!r})", e) from e
            bp_samples = int(meta["bp_samples"])

        # host side: decode and read everything now, change things only in commit()
        host_states = {cb.name: decode_host_state(host_saved[cb.name], f"[{cb.name!r}]") for cb in host_cbs}
        tables = {}
        if self.memory:
            try:
                tables = _restore_memory(mngr, step, list(self.memory))
            except _Problem as p:
                raise self._fail(step, p.what, p.err) from p.err
            for name, table in self.memory.items():
                try:
                    table.load_state_dict(tables[name], where=f"memory {name!r}", check_only=True)
                except (TypeError, ValueError) as e:
                    raise self._fail(step, "its memory does not fit this run's table", e) from e

        def commit() -> None:
            for cb in host_cbs:
                try:
                    cb.load_host_state_dict(host_states[cb.name])
                except Exception as e:
                    raise self._fail(step, f"the host-side state of {cb.name!r} does not fit", e) from e
            for name, table in self.memory.items():
                table.load_state_dict(tables[name], where=f"memory {name!r}")

        return ctx.replace(state=state, key=key, bp_samples=bp_samples), commit

    def _check_layout(self, step: int, expected: dict[str, Any], saved: dict[str, Any]) -> None:
        problems = []
        for path in sorted(set(expected) | set(saved)):
            e, s = expected.get(path), saved.get(path)
            if s is None:
                problems.append(f"{path}: in this run ({_describe(e.shape, e.dtype)}), not in the checkpoint")
            elif e is None:
                problems.append(f"{path}: in the checkpoint ({_describe(s.shape, s.dtype)}), not in this run")
            elif tuple(s.shape) != tuple(e.shape) or np.dtype(s.dtype) != np.dtype(e.dtype):
                problems.append(f"{path}: checkpoint {_describe(s.shape, s.dtype)}, this run {_describe(e.shape, e.dtype)}")
        if problems:
            more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise self._fail(step, "its arrays do not fit this run (another network shape?):\n  "
                             + "\n  ".join(problems[:8]) + more)
