"""Collection on Ray: actor processes step gymnasium vector envs with the host policy; the learner (one JAX
process) publishes the policy's parameters to them and writes what they report into its one memory.

Data flow::

    learner end_cycle --ray.put(params)--> actor i: GymCollector stepping, memory calls recorded
    actor i --batch (epoch, seq, memory calls, episodes)--> learner: agent ids remapped -> MemoryProxy

Each actor runs a :class:`~emote_jax.collectors.gym.GymCollector` over its own vector env, with a memory
that records the ``add``/``interrupt`` calls instead of storing them, so stepping, autoreset handling,
exploration and episode bookkeeping are the local collector's, unchanged. The learner replays the recorded
calls into its :class:`~emote_jax.memory.MemoryProxy` with the actor's agent ids mapped to ids unique over
actors and restarts: the memory, loader, warm-up, losses and checkpoints do not know Ray is there.

Flow control is the threaded collector's cap: while the trainer has done ``b`` backprop steps after the
warm-up, the vector steps received plus those in flight may pass ``max_env_steps_per_bp_step * (b + 1)``
by at most one batch. The learner never waits for an actor during training: it takes the batches that
are ready (``ray.wait`` with no timeout) after each backprop step.

Faults: an actor whose process dies is restarted by Ray (``max_restarts``); the learner closes its running
episodes as interrupted (``MemoryProxy.interrupt``: the last stored transition ends a truncated episode),
starts a new *epoch* of that actor with a fresh seed and counts the restart. Every batch carries its
actor's epoch and sequence number; the learner stores a batch only if it is the next one of the actor's
current epoch, so nothing is stored twice, and everything in a batch it received is stored. A batch lost
with its process was never reported. docs/decisions/0014-ray-collection.md says why it is built this way.

The learner side is :class:`RayCollector` in parts: :mod:`~emote_jax.collectors.ray_actor` is what runs in
an actor process (:class:`EnvActor`), :mod:`~emote_jax.collectors.ray_slots` the learner's record of each
actor, :mod:`~emote_jax.collectors.ray_restarts` actor starts and faults, :mod:`~emote_jax.collectors.ray_batches`
the batch flow, :mod:`~emote_jax.collectors.ray_state` the checkpointed state; this module holds the
constructor, the connection to Ray and the trainer hooks.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TextIO

import numpy as np

from emote_jax.callback import HostCallback
from emote_jax.collectors.actions import Actions
from emote_jax.collectors.ray_actor import EnvActor
from emote_jax.collectors.ray_batches import RayBatches
from emote_jax.collectors.ray_slots import RAY_EXTRA, _Slot, actor_seed, import_ray
from emote_jax.collectors.ray_state import RayCheckpointState
from emote_jax.context import Context
from emote_jax.networks.host import HostPolicy

__all__ = ["RAY_EXTRA", "EnvActor", "RayCollector", "actor_seed", "import_ray"]


class RayCollector(RayBatches, RayCheckpointState, HostCallback):
    """Collects with ``num_actors`` Ray actors, each stepping its own vector env (``make_env()``).

    Args:
        make_env: a picklable ``() -> gymnasium.vector.VectorEnv`` (e.g. ``functools.partial`` of a
            module-level function); each actor calls it once. One env is also made here, and closed, to
            read the spaces.
        policy: a :class:`~emote_jax.networks.host.HostPolicy` (the NumPy mirror of the acting network);
            actors act on the host with a copy of the parameters.
        memory: the learner's ``MemoryProxy``.
        num_actors: how many actor processes.
        params_slot: the state slot whose ``"params"`` the policy acts with.
        warmup_steps: vector steps (summed over actors) taken in ``begin_training``, before the first update.
        random_warmup: take the warm-up steps with uniform random actions.
        seed: actor ``i`` in its ``e``-th start is seeded with :func:`actor_seed` ``(seed, i, e)``.
        max_env_steps_per_bp_step: the cap, in vector steps (summed over actors) per backprop step after
            the warm-up; None: no cap.
        batch_steps: vector steps per batch an actor reports (also the most the cap is passed by).
        publish_interval: backprop steps between two publications of the parameters (a ``ray.put`` when a
            batch is asked for and the parameters are older than this).
        max_restarts: how often Ray restarts each actor's process; past that the actor is dropped, and the
            run stops once none is left.
        address: the Ray cluster to join (``"auto"``, ``"ray://host:10001"``); None starts a new local Ray.
            Either way ``end_training`` stops (or leaves) it again; if this process already called
            ``ray.init``, that Ray is used and left running.
        actor_options: extra ``ray.remote`` options of the actors (``num_cpus`` defaults to 1).
        actions: the :class:`~emote_jax.collectors.actions.Actions` of the env's action space; None: a
            :class:`~emote_jax.collectors.actions.BoxActions` of it.
        out: where the lines about actor restarts go (None: standard error).
        flush_timeout: seconds ``end_training`` waits for the actors' last batches before it closes
            their episodes without them.
        restart_timeout: seconds an actor that died may take to come back before it is dropped.

    Counters and statistics are the local collector's (``env_steps``, ``vector_steps``,
    ``episodes_completed``, ``episode_returns``, ``episode_lengths``, ``episode_env_steps``), plus
    ``restarts`` and, per actor, :meth:`actor_stats`.
    """

    collects_in_background = False  # fill() drives the actors itself and returns when the memory is ready

    def __init__(
        self,
        make_env: Callable[[], Any],
        policy: HostPolicy,
        memory: Any,
        *,
        num_actors: int = 2,
        params_slot: str = "policy",
        warmup_steps: int = 0,
        random_warmup: bool = False,
        seed: int = 0,
        max_env_steps_per_bp_step: float | None = 1.0,
        batch_steps: int = 8,
        publish_interval: int = 1,
        max_restarts: int = 3,
        address: str | None = None,
        actor_options: Mapping[str, Any] | None = None,
        actions: Actions | None = None,
        episode_history: int = 1000,
        out: TextIO | None = None,
        flush_timeout: float = 30.0,
        restart_timeout: float = 300.0,
        name: str = "collector",
        order: int = 0,
    ):
        super().__init__(name=name, order=order, cycle=1)
        where = "RayCollector"
        if not isinstance(policy, HostPolicy):
            raise TypeError(f"{where}: expected a HostPolicy (the actors act with NumPy on the host; --act-on-device "
                            f"does not apply), got {type(policy).__name__}")
        checks = [("num_actors", num_actors >= 1, ">= 1"), ("warmup_steps", warmup_steps >= 0, ">= 0"),
                  ("batch_steps", batch_steps >= 1, ">= 1"), ("publish_interval", publish_interval >= 1, ">= 1"),
                  ("max_restarts", max_restarts >= 0, ">= 0"),
                  ("max_env_steps_per_bp_step", max_env_steps_per_bp_step is None or max_env_steps_per_bp_step > 0,
                   "None or > 0"), ("flush_timeout", flush_timeout >= 0, ">= 0"),
                  ("restart_timeout", restart_timeout > 0, "> 0")]
        for arg, ok, expected in checks:
            if not ok:
                raise ValueError(f"{where}: expected {arg} {expected}, got {locals()[arg]!r}")
        if not callable(make_env):
            raise TypeError(f"{where}: expected make_env to be a callable returning a vector env, "
                            f"got {type(make_env).__name__}")
        probe = make_env()
        try:
            from emote_jax.collectors.actions import BoxActions

            self.actions: Actions = BoxActions(probe.single_action_space) if actions is None else actions
            if self.actions.space != probe.single_action_space:
                raise ValueError(f"{where}: actions handles {self.actions.space!r}, not the env's "
                                 f"{probe.single_action_space!r}")
            self.num_envs = int(probe.num_envs)
        finally:
            probe.close()
        self.make_env, self.policy, self.memory = make_env, policy, memory
        self.num_actors, self.params_slot = int(num_actors), params_slot
        self.warmup_steps, self.random_warmup, self.seed = int(warmup_steps), random_warmup, int(seed)
        self.max_env_steps_per_bp_step = max_env_steps_per_bp_step
        self.batch_steps, self.publish_interval = int(batch_steps), int(publish_interval)
        self.max_restarts, self.address = int(max_restarts), address
        self.actor_options = {"num_cpus": 1, **dict(actor_options or {})}
        self.out, self.flush_timeout, self.restart_timeout = out, float(flush_timeout), float(restart_timeout)

        self.episode_returns: deque[float] = deque(maxlen=episode_history)
        self.episode_lengths: deque[int] = deque(maxlen=episode_history)
        self.episode_env_steps: deque[int] = deque(maxlen=episode_history)
        self.episodes_completed = 0
        self.env_steps = 0
        self.vector_steps = 0
        self.restarts = 0
        self.dropped_batches = 0  # batches that arrived out of order or from an old epoch (not stored)
        self._slots = [_Slot(i) for i in range(self.num_actors)]
        self._next_agent = 0
        self._bp_done = 0
        self._vector_steps_in_training = 0
        self._params_ref: Any = None
        self._params_at = -1  # _bp_done when _params_ref was published
        self._ray: Any = None
        self._owns_ray = False
        self._started = False
        self._resume_pending = False
        self._error: BaseException | None = None

    # ---- Ray ---------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray = import_ray()
        if not ray.is_initialized():  # else: the caller's Ray (a notebook, a test), left running at the end
            with warnings.catch_warnings():  # Ray starts its services with fork+exec, which JAX warns about
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
                ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
            self._owns_ray = True  # a local Ray is stopped, a cluster only disconnected, by stop()
        remote = ray.remote(max_restarts=self.max_restarts, max_task_retries=0, **self.actor_options)(EnvActor)
        for s in self._slots:
            if s.handle is None:
                s.handle = remote.remote(self.make_env, self.policy, self.actions, s.index)

    # ---- hooks ---------------------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        self._connect()
        resumed, self._resume_pending = self._resume_pending, False
        if resumed:  # the checkpoint's running episodes belong to actors that are gone
            self.memory.interrupt(None)
            for s in self._slots:
                s.epoch += 1
        else:
            self._bp_done = 0
            self._vector_steps_in_training = 0
        for s in self._slots:
            s.running.clear()
            s.starting, s.lost_at = None, 0.0
            self._start_actor(s)  # the batches asked for next queue behind it
        self._started = True
        self._params_ref = None
        if not resumed and self.warmup_steps:
            self._collect_until(ctx, lambda n: n >= self.warmup_steps, not self.random_warmup, "warm-up")

    def fill(self, ctx: Context, ready: Callable[[], bool], max_vector_steps: int) -> int:
        """More warm-up steps from the actors (past the cap) until ``ready()``; the vector steps taken."""
        if not self._started:
            raise RuntimeError(f"{self.name}: fill called before begin_training")
        return self._collect_until(ctx, lambda _: ready(), not self.random_warmup, "warm-up", max_vector_steps)

    def raise_if_failed(self) -> None:
        """Nothing to re-raise: actor failures surface from the hooks themselves."""

    def end_cycle(self, ctx: Context) -> None:
        if not self._started:
            raise RuntimeError(f"{self.name}: end_cycle called before begin_training")
        self._bp_done += 1
        cap = self.max_env_steps_per_bp_step
        allowed = None if cap is None else cap * (self._bp_done + 1)
        self._vector_steps_in_training += self._pump(ctx, 0.0, True, allowed)

    def end_training(self, ctx: Context) -> None:
        if self._ray is None:
            return
        try:
            if self._started:
                self._finish()
        finally:
            self._started = False
            self.stop()

    def _finish(self) -> None:
        """Store the batches in flight, then the actors' running episodes closed as interrupted; what does
        not come within ``flush_timeout`` is closed here without its last step."""
        deadline = time.monotonic() + self.flush_timeout
        ray = self._ray
        while any(s.alive and s.inflight is not None for s in self._slots) and time.monotonic() < deadline:
            for s, result in self._finished(0.1):
                s.inflight, s.inflight_steps = None, 0
                if isinstance(result, BaseException) or result.get("fresh"):  # gone: close its episodes here
                    self.memory.interrupt(list(s.running.values()))
                    s.running.clear()
                    s.alive = False
                else:
                    self._vector_steps_in_training += self._ingest(s, result)
        live = [s for s in self._slots if s.alive and s.inflight is None and not s.lost_at]
        refs = {s.handle.flush.remote(s.epoch): s for s in live}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic())) \
            if refs else ([], [])
        for ref in ready:
            s = refs[ref]
            try:
                self._replay(s, ray.get(ref)["calls"])
            except Exception:  # noqa: BLE001  (a dead actor: its episodes are closed below)
                pass
        for s in self._slots:  # whatever did not come back
            if s.running:
                self.memory.interrupt(list(s.running.values()))
                s.running.clear()

    def stop(self) -> None:
        """Kill the actors and, if this collector started Ray, shut it down (idempotent)."""
        ray = self._ray
        if ray is None:
            return
        closing = [s.handle.close.remote() for s in self._slots if s.handle is not None and s.alive and not s.lost_at]
        if closing:  # each actor closes its env first (an async vector env's workers are its children)
            ray.wait(closing, num_returns=len(closing), timeout=5.0)
        for s in self._slots:
            if s.handle is not None:
                try:
                    ray.kill(s.handle, no_restart=True)
                except Exception:  # noqa: BLE001  (already gone)
                    pass
                s.handle, s.inflight, s.inflight_steps = None, None, 0
        self._params_ref = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        self._ray = None

    # ---- what loggers read -----------------------------------------------------------------------------------
    def actor_stats(self) -> list[dict[str, float]]:
        """Per actor: env steps stored, restarts, whether it is alive, mean return of its last 100 episodes."""
        return [{"env_steps": float(s.env_steps), "restarts": float(s.restarts), "alive": float(s.alive),
                 "episode_return": float(np.mean(s.returns)) if s.returns else math.nan} for s in self._slots]

    def metric_sources(self) -> list[Any]:
        """The logger sources of this collector: per-actor env steps/s, returns and restarts."""
        from emote_jax.logging.sources import RayActorMetrics

        return [RayActorMetrics(self)]
