"""Reading and checking checkpoints without a run: integrity, damaged steps, and a directory's listing.

The reads a loader shares with :func:`verify_checkpoint` (the metadata checked for format, version and
fields; the array metadata; the arrays and the memory), each failure reported as a :class:`_Problem`;
:func:`_check`, everything wrong with one checkpoint; setting a damaged checkpoint aside as
``<step>.damaged``; and :func:`inspect_checkpoints`, a directory's checkpoints and leftovers with their
sizes, times and check results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from emote_jax.checkpoint_format import (
    CHECKPOINT_FORMAT,
    SUPPORTED_CHECKPOINT_FORMAT_VERSIONS,
    CheckpointNotFoundError,
    MemoryRestore,
    _crc32,
    _flat,
    _package_version,
    _reader,
    checkpoint_steps,
)
from emote_jax.context import PyTree

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

