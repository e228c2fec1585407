"""The :class:`CheckpointLoader`: a host callback that restores a checkpoint before training.

It picks the checkpoint (the asked step, or the newest that passes its integrity check), reads and checks
everything against the running state (names, array shapes and dtypes, CRC-32s, host-side state, memory)
before anything changes, then commits; later checkpoints that failed their check are set aside and named
in a :class:`~emote_jax.checkpoint_format.CheckpointSkippedWarning` each.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np
import orbax.checkpoint as ocp

from emote_jax.callback import HostCallback, _Base
from emote_jax.checkpoint_format import (
    CheckpointDamagedError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSkippedWarning,
    _check_callbacks,
    _flat,
    _has_host_state,
    _reader,
    _state_tree,
    _tables,
    decode_host_state,
)
from emote_jax.checkpoint_integrity import (
    _check,
    _crc_problems,
    _Problem,
    _read_meta,
    _restore_arrays,
    _restore_memory,
    _saved_abstract,
    _saved_tree,
    _set_aside,
)
from emote_jax.context import Context, PyTree
from emote_jax.memory.table import ReplayTable
from emote_jax.trainer import TRAINER_SLOT, _check_same_state


def _abstract(tree: PyTree) -> PyTree:
    """ShapeDtypeStructs with the shardings of the running arrays (default device for host arrays)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x: Any) -> jax.ShapeDtypeStruct:
        x_arr = x if isinstance(x, jax.Array) else np.asarray(x)
        return jax.ShapeDtypeStruct(x_arr.shape, x_arr.dtype, sharding=getattr(x_arr, "sharding", default))

    return jax.tree.map(one, tree)


def _describe(shape: Any, dtype: Any) -> str:
    return f"{np.dtype(dtype)}{list(shape)}"


def _texts(failed: Mapping[int, Sequence[_Problem]]) -> dict[int, list[str]]:
    return {s: [str(p) for p in problems] for s, problems in failed.items()}


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
