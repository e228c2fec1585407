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

Where the code lives (this module is the public import path of all of it):
:mod:`emote_jax.checkpoint_format` (the format, its errors, host-state encoding, the memory as an Orbax
item), :mod:`emote_jax.checkpoint_integrity` (:func:`verify_checkpoint`, damaged steps,
:func:`inspect_checkpoints`), :mod:`emote_jax.checkpointer` (:class:`Checkpointer`) and
:mod:`emote_jax.checkpoint_loader` (:class:`CheckpointLoader`).

Why the v0 ``CheckpointManager`` API and what exact resume means: docs/decisions/0003 and 0004.
"""

from __future__ import annotations

from emote_jax import checkpoint_format as _format
from emote_jax.checkpoint_format import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    SUPPORTED_CHECKPOINT_FORMAT_VERSIONS,
    CheckpointDamagedError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    MemoryCheckpointHandler,
    MemoryRestore,
    MemorySave,
    checkpoint_steps,
    decode_host_state,
    encode_host_state,
    latest_checkpoint_step,
)
from emote_jax.checkpoint_integrity import DAMAGED_SUFFIX, CheckpointInfo, inspect_checkpoints, verify_checkpoint
from emote_jax.checkpoint_loader import CheckpointLoader
from emote_jax.checkpointer import Checkpointer

#: Private, but imported from here (tests/test_sac_options.py).
_saveable = _format._saveable

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "DAMAGED_SUFFIX",
    "SUPPORTED_CHECKPOINT_FORMAT_VERSIONS",
    "CheckpointDamagedError",
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointLoader",
    "CheckpointNotFoundError",
    "CheckpointSkippedWarning",
    "Checkpointer",
    "MemoryCheckpointHandler",
    "MemoryRestore",
    "MemorySave",
    "checkpoint_steps",
    "decode_host_state",
    "encode_host_state",
    "inspect_checkpoints",
    "latest_checkpoint_step",
    "verify_checkpoint",
]
