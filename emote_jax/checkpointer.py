"""The :class:`Checkpointer`: a host callback that writes a checkpoint every N backprop steps and at the end.

Each save snapshots the callbacks' slots, their host-side state and the replay tables (under each
callback's ``checkpoint_lock``), refuses non-finite state, and writes one Orbax step directory in the
format of :mod:`emote_jax.checkpoint_format`; retention keeps the last ``keep`` and the best by a metric.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint._src.checkpoint_managers import preservation_policy as preservation

from emote_jax.callback import HostCallback, _Base
from emote_jax.checkpoint_format import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    MemorySave,
    _check_callbacks,
    _crc32,
    _flat,
    _has_host_state,
    _manager,
    _package_version,
    _saveable,
    _state_tree,
    _tables,
    encode_host_state,
)
from emote_jax.context import Context
from emote_jax.faults import NONFINITE_SUFFIX, NonFiniteError
from emote_jax.memory.export import CallEndSchedule, completed_steps
from emote_jax.memory.table import ReplayTable
from emote_jax.trainer import TRAINER_SLOT


def _flagged(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if k.endswith(NONFINITE_SUFFIX) and np.any(np.asarray(v) > 0)]


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
