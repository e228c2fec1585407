"""The on-disk format of a training checkpoint: what each step directory holds, and how it is opened.

The format's name and versions, the errors a checkpoint raises, the pickle-free JSON encoding of the
callbacks' host-side state, the memory as an Orbax item (:class:`MemoryCheckpointHandler`), the tree that
``state/`` holds (every callback's state dict and the trainer's part, with the flat paths and CRC-32s
``meta/`` records), and the Orbax ``CheckpointManager`` every reader and writer goes through
(:func:`checkpoint_steps`). The layout itself is described in :mod:`emote_jax.checkpoint`, the public
import path of everything here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import math
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from emote_jax.callback import _Base
from emote_jax.context import Context, PyTree
from emote_jax.memory.export import read_table_state, write_table_state
from emote_jax.memory.table import ReplayTable
from emote_jax.trainer import TRAINER_SLOT

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


def _package_version() -> str:
    try:
        from emote_jax import __version__
    except ImportError:  # a stale editable install that maps emote_jax as a namespace package
        from importlib.metadata import version

        return version("emote-jax")
    return __version__

