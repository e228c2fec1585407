"""The threaded variant of :class:`~emote_jax.collectors.gym.GymCollector`: the same stepping, on a
background thread, capped at a ratio of env steps to backprop steps."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.collectors.actions import Actions
from emote_jax.collectors.gym import GymCollector, Policy
from emote_jax.context import Context, PyTree


class ThreadedGymCollector(GymCollector):
    """Like :class:`GymCollector`, but collects continuously on a background thread.

    ``begin_training`` resets, validates and takes the warm-up steps on the training thread (so the
    memory holds them before the first batch), then starts the thread. Every ``param_sync_interval``
    backprop steps ``end_cycle`` hands the thread a copy of the policy parameters
    (``jax.tree.map(jnp.copy, params)``, waited on), so the thread never reads buffers that the next
    compiled call donates.

    ``max_env_steps_per_bp_step`` (None: no limit) throttles the thread: after the warm-up it takes at
    most ``max_env_steps_per_bp_step * (b + 1)`` vector steps while the trainer has finished ``b``
    backprop steps, so it cannot race arbitrarily far ahead of training (nor behind: it is a cap, not a
    rate).

    An exception on the thread (from the env, the policy or the memory) stops collection; it is re-raised
    from the next host hook on the training thread (``begin_cycle``, ``end_cycle`` or ``end_training``),
    so training stops with it. ``end_training`` stops and joins the thread (waiting at most
    ``join_timeout`` seconds), closes running episodes as INTERRUPTED, and closes the env only if
    ``close_env``.

    The memory is written from the thread while the loader samples on the training thread: the table
    must tolerate that (guard it with a lock).
    """

    def __init__(
        self,
        env: gymnasium.vector.VectorEnv,
        policy: Policy,
        memory: Any,
        params_slot: str = "policy",
        warmup_steps: int = 0,
        *,
        param_sync_interval: int = 1,
        max_env_steps_per_bp_step: float | None = None,
        random_warmup: bool = False,
        seed: int = 0,
        episode_history: int = 1000,
        close_env: bool = False,
        join_timeout: float = 60.0,
        name: str = "collector",
        order: int = 0,
        actions: Actions | None = None,
    ):
        super().__init__(
            env,
            policy,
            memory,
            params_slot=params_slot,
            warmup_steps=warmup_steps,
            random_warmup=random_warmup,
            seed=seed,
            episode_history=episode_history,
            close_env=close_env,
            name=name,
            order=order,
            actions=actions,
        )
        if param_sync_interval < 1:
            raise ValueError(f"param_sync_interval must be >= 1, got {param_sync_interval}")
        if max_env_steps_per_bp_step is not None and not (max_env_steps_per_bp_step > 0):
            raise ValueError(f"max_env_steps_per_bp_step must be None or > 0, got {max_env_steps_per_bp_step}")
        self.param_sync_interval = int(param_sync_interval)
        self.max_env_steps_per_bp_step = max_env_steps_per_bp_step
        self.join_timeout = join_timeout
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread_params: PyTree = None
        self._bp_done = 0
        self._error: BaseException | None = None
        self._error_raised = False
        self._step_lock = threading.Lock()
        self._fill_ready: Callable[[], bool] | None = None

    # ---- thread ----------------------------------------------------------------------------------
    def _may_step(self) -> bool:
        if self.max_env_steps_per_bp_step is None:
            return True
        return self._vector_steps_in_training < self.max_env_steps_per_bp_step * (self._bp_done + 1)

    def _next_step(self) -> str | None:
        """``"fill"`` (a warm-up step past the cap, not counted against it), ``"train"``, or None (wait)."""
        if self._fill_ready is not None:
            if not self._fill_ready():
                return "fill"
            self._fill_ready = None
        return "train" if self._may_step() else None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._stop.is_set() and (kind := self._next_step()) is None:
                        self._cond.wait(timeout=0.1)
                    if self._stop.is_set():
                        break
                    params = self._thread_params
                with self._step_lock:  # a checkpoint snapshots between two steps, never during one
                    if kind == "fill":
                        self._step(None if self.random_warmup else params)
                    else:
                        self._step(params)
                        self._vector_steps_in_training += 1
        except BaseException as e:  # handed to the training thread
            self._error = e

    collects_in_background = True

    def fill(self, ctx: Context, ready: Callable[[], bool], max_vector_steps: int) -> int:
        """Let the thread take warm-up steps past its cap until ``ready()``, and return at once (0).

        The caller waits (:class:`~emote_jax.memory.MemoryWarmup` does, watching for a shutdown and for
        an error of the thread); the fill steps do not count against ``max_env_steps_per_bp_step``.
        """
        del ctx, max_vector_steps
        with self._cond:
            self._fill_ready = ready
            self._cond.notify_all()
        return 0

    def checkpoint_lock(self) -> Any:
        """Held while a checkpoint snapshots this collector and the memory: the thread waits between steps."""
        return self._step_lock

    def _copy_params(self, ctx: Context) -> PyTree:
        if self._host_policy is not None:  # a host policy acts on NumPy arrays: copy them to the host here
            return jax.tree.map(lambda x: np.array(x, copy=True), self._params(ctx))  # a copy, not a view
        return jax.block_until_ready(jax.tree.map(jnp.copy, self._params(ctx)))

    def raise_if_failed(self) -> None:
        """Re-raise (once) the error that stopped the collection thread, if any."""
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    # ---- hooks -----------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: begin_training called while the collector thread is running")
        self._stop.clear()
        self._error = None
        self._error_raised = False
        self._bp_done = 0
        self._vector_steps_in_training = 0
        self._fill_ready = None
        self._start(ctx)
        self._thread_params = self._copy_params(ctx)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-thread", daemon=True)
        self._thread.start()

    def begin_cycle(self, ctx: Context) -> None:
        self.raise_if_failed()

    def end_cycle(self, ctx: Context) -> None:
        self.raise_if_failed()
        sync = (self._bp_done + 1) % self.param_sync_interval == 0
        params = self._copy_params(ctx) if sync else None
        with self._cond:  # the thread sees the new step budget and the new params together
            self._bp_done += 1
            if sync:
                self._thread_params = params
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop and join the collection thread (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            if self._thread.is_alive():
                warnings.warn(
                    f"{self.name}: the collector thread did not stop within {self.join_timeout} s "
                    "(a sub-env step is hanging?); leaving it running as a daemon",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._thread = None
                self._started = False
                return
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the collection thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def end_training(self, ctx: Context) -> None:
        try:
            self.stop()
            if self._thread is None:  # joined: the episode bookkeeping is ours again
                try:
                    self._flush()
                except Exception:
                    if self._error is None:
                        raise  # otherwise the thread's error is the one to report
            self.raise_if_failed()
        finally:
            if self.close_env:
                self.env.close()
