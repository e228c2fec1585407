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
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import jax
import numpy as np

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.collectors.actions import Actions
from emote_jax.context import Context, PyTree
from emote_jax.faults import shutdown_requested
from emote_jax.memory import AgentObservation, EpisodeState
from emote_jax.networks.host import HostPolicy

#: How to get Ray, for the errors that need it.
RAY_EXTRA = "pip install 'emote-jax[ray]'"

#: The actor-death errors of Ray that mean "restart": anything else an actor raises is the user's error.
_DEATH_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError",
                 "WorkerCrashedError", "NodeDiedError", "OwnerDiedError")


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"collection on Ray needs the ray package ({e}): {RAY_EXTRA}") from None
    return ray


def actor_seed(seed: int, actor: int, epoch: int) -> int:
    """The env/policy seed of ``actor`` in its ``epoch``-th start: distinct per actor and per restart."""
    return int(np.random.SeedSequence([int(seed), int(actor), int(epoch)]).generate_state(1)[0])


# ---- the actor side ------------------------------------------------------------------------------------


class _Recorder:
    """A stand-in memory for the actor's collector: it records the calls instead of storing them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def add(self, observations: Mapping[int, AgentObservation], actions: Mapping[int, Any]) -> None:
        self.calls.append(("add", dict(observations), {k: np.asarray(v) for k, v in actions.items()}))

    def interrupt(self, agent_ids: Any = None) -> None:
        self.calls.append(("interrupt", [int(a) for a in agent_ids or []]))

    def take(self) -> list[tuple[Any, ...]]:
        calls, self.calls = self.calls, []
        return calls


class EnvActor:
    """What runs in one Ray actor process: a vector env and a GymCollector stepping it (not Ray-specific;
    :class:`RayCollector` wraps it with ``ray.remote``).

    Args:
        make_env: a picklable ``() -> gymnasium.vector.VectorEnv``.
        policy: the :class:`~emote_jax.networks.host.HostPolicy` the actor acts with.
        actions: how its actions are checked, explored and given to the env.
        index: the actor's number (for messages).
    """

    def __init__(self, make_env: Callable[[], Any], policy: HostPolicy, actions: Actions, index: int):
        jax.config.update("jax_platforms", "cpu")  # an actor never takes an accelerator from the learner
        from emote_jax.collectors.gym import GymCollector

        self.index = index
        self.env = make_env()
        self.collector = GymCollector(self.env, policy, _Recorder(), actions=actions, name=f"ray actor {index}")
        self.epoch: int | None = None
        self.seq = 0

    def start(self, epoch: int, seed: int) -> dict[str, Any]:
        """Begin ``epoch``: reset every sub-env with ``seed`` (and reseed the exploration noise)."""
        c = self.collector
        c.seed = seed
        c._rng = np.random.default_rng(seed)
        c._started = False  # nothing of an earlier epoch is handed over: the learner closed those episodes
        c._reset(seed)
        c._started = True
        c.memory.take()
        self.epoch, self.seq = epoch, 0
        return {"pid": os.getpid(), "num_envs": c.num_envs}

    def collect(self, epoch: int, seq: int, steps: int, params: PyTree | None, env_steps: int) -> dict[str, Any]:
        """``steps`` vector steps with ``params`` (None: uniform random actions); the recorded memory calls.

        ``env_steps`` is the learner's count, where the exploration schedule (e.g. epsilon) stands. A process
        that Ray restarted between two batches has not started any epoch: it answers ``{"fresh": True}``."""
        if self.epoch is None:
            return {"fresh": True, "pid": os.getpid()}
        if epoch != self.epoch or seq != self.seq:
            raise RuntimeError(f"ray actor {self.index}: asked for batch {seq} of epoch {epoch}, "
                               f"expected batch {self.seq} of epoch {self.epoch}")
        c = self.collector
        c.env_steps = int(env_steps)
        done_before = c.episodes_completed
        for _ in range(steps):
            c._step(params)
        n_done = c.episodes_completed - done_before
        episodes = list(zip(list(c.episode_returns)[len(c.episode_returns) - n_done:],
                            list(c.episode_lengths)[len(c.episode_lengths) - n_done:])) if n_done else []
        self.seq += 1
        return {"epoch": epoch, "seq": seq, "calls": c.memory.take(), "vector_steps": steps, "episodes": episodes}

    def flush(self, epoch: int) -> dict[str, Any]:
        """Close every running episode as interrupted (with its last observation); the memory calls."""
        if epoch != self.epoch:
            return {"epoch": epoch, "calls": []}
        self.collector._flush()
        return {"epoch": epoch, "calls": self.collector.memory.take()}

    def pid(self) -> int:
        """The actor's process id (to watch it, or to kill it in a test)."""
        return os.getpid()

    def close(self) -> None:
        self.env.close()


# ---- the learner side ------------------------------------------------------------------------------------


@dataclass
class _Slot:
    """The learner's view of one actor."""

    index: int
    handle: Any = None
    epoch: int = 0
    seq: int = 0  # the next batch the learner will store
    inflight: Any = None  # the ObjectRef of the batch being collected
    inflight_steps: int = 0
    running: dict[int, int] = field(default_factory=dict)  # the actor's agent id -> the memory's
    restarts: int = 0
    alive: bool = True
    starting: Any = None  # the ObjectRef of a start call after a death, until it succeeds
    retry_at: float = 0.0  # when to ask a restarting actor to start again
    lost_at: float = 0.0  # when its process was found dead
    env_steps: int = 0
    returns: deque = field(default_factory=lambda: deque(maxlen=100))


def _is_death(e: BaseException) -> bool:
    """Whether ``e`` says the actor's process is gone (Ray restarts it), not that its code raised."""
    return any(cls.__name__ in _DEATH_ERRORS for cls in type(e).__mro__)


class RayCollector(HostCallback):
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

    def _start_actor(self, s: _Slot) -> Any:
        """Begin a new epoch of actor ``s`` (fresh seed, no episode carried over); the start call's ref."""
        s.seq, s.inflight, s.inflight_steps = 0, None, 0
        return s.handle.start.remote(s.epoch, actor_seed(self.seed, s.index, s.epoch))

    def _say(self, line: str) -> None:
        print(f"emote_jax: {self.name}: {line}", file=self.out or sys.stderr, flush=True)

    # ---- batches -------------------------------------------------------------------------------------------
    def _publish(self, ctx: Context) -> Any:
        if self._params_ref is None or self._bp_done - self._params_at >= self.publish_interval:
            slot = ctx.slot(self.params_slot)
            if not isinstance(slot, Mapping) or "params" not in slot:
                raise KeyError(f"{self.name}: state slot {self.params_slot!r} has no 'params'")
            host = jax.tree.map(lambda x: np.array(x, copy=True), slot["params"])
            self._params_ref = self._ray.put(host)
            self._params_at = self._bp_done
        return self._params_ref

    def _submit(self, s: _Slot, ctx: Context, policy: bool, steps: int) -> None:
        params = self._publish(ctx) if policy else None
        s.inflight = s.handle.collect.remote(s.epoch, s.seq, steps, params, self.env_steps)
        s.inflight_steps = steps

    def _ingest(self, s: _Slot, batch: Mapping[str, Any]) -> int:
        """Store one batch of actor ``s`` (if it is its next one); the vector steps it brought."""
        if batch["epoch"] != s.epoch or batch.get("seq", s.seq) != s.seq:
            self.dropped_batches += 1
            return 0
        self._replay(s, batch["calls"])  # counts the transitions stored (the actor's own count runs one ahead)
        s.seq += 1
        self.vector_steps += int(batch.get("vector_steps", 0))
        for ret, length in batch.get("episodes", []):
            self.episode_returns.append(float(ret))
            self.episode_lengths.append(int(length))
            self.episode_env_steps.append(self.env_steps)
            s.returns.append(float(ret))
            self.episodes_completed += 1
        return int(batch.get("vector_steps", 0))

    def _replay(self, s: _Slot, calls: list[tuple[Any, ...]]) -> int:
        """The actor's memory calls, with its agent ids mapped to the memory's (fresh ids for new episodes);
        the transitions they stored, added to ``env_steps``.

        An actor counts a step when it takes it, but the transition reaches the memory with the agent's
        next call (its reward travels with the next observation), so a dead actor's last step per running
        episode was counted there and never stored: counting here keeps ``env_steps == len(table)``."""
        stored = 0
        for call in calls:
            if call[0] == "interrupt":
                self.memory.interrupt([s.running.pop(a) for a in call[1] if a in s.running])
                continue
            _, observations, actions = call
            obs, acts, ended = {}, {}, []
            for local, o in observations.items():
                if o.episode_state == EpisodeState.INITIAL:
                    if local in s.running:
                        raise RuntimeError(f"{self.name}: actor {s.index} started agent {local} twice")
                    s.running[local] = self._next_agent
                    self._next_agent += 1
                elif local not in s.running:
                    raise RuntimeError(f"{self.name}: actor {s.index} reported a step of agent {local}, which has "
                                       "no running episode here")
                agent = s.running[local]
                obs[agent] = o
                if local in actions:
                    acts[agent] = actions[local]
                if o.episode_state in (EpisodeState.TERMINAL, EpisodeState.INTERRUPTED):
                    ended.append(local)
            self.memory.add(obs, acts)
            stored += sum(1 for o in obs.values() if o.episode_state != EpisodeState.INITIAL)
            for local in ended:
                del s.running[local]
        self.env_steps += stored
        s.env_steps += stored
        return stored

    def _lost(self, s: _Slot, e: BaseException) -> None:
        """Actor ``s``'s process died: close its episodes, count the restart (or drop it past
        ``max_restarts``) and wait for Ray to bring it back (:meth:`_recover`)."""
        ids = list(s.running.values())
        self.memory.interrupt(ids)
        s.running.clear()
        s.inflight, s.inflight_steps = None, 0
        s.restarts += 1
        self.restarts += 1
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if s.restarts > self.max_restarts:
            self._drop(s, f"died and has used its {self.max_restarts} restarts ({len(ids)} running episodes closed "
                          f"as interrupted; {type(e).__name__}: {detail[:200]})", e)
            return
        s.epoch, s.seq = s.epoch + 1, 0
        s.lost_at = s.retry_at = time.monotonic()
        s.starting = None
        self._say(f"actor {s.index} died ({type(e).__name__}); Ray restarts it (restart {s.restarts} of "
                  f"{self.max_restarts}); {len(ids)} running episodes closed as interrupted")

    def _drop(self, s: _Slot, why: str, e: BaseException | None = None) -> None:
        s.alive, s.starting = False, None
        self._say(f"actor {s.index} {why}; dropped")
        if not any(x.alive for x in self._slots):
            raise RuntimeError(f"{self.name}: all {self.num_actors} Ray actors are gone; the last: "
                               f"actor {s.index} {why}") from e

    def _recover(self) -> None:
        """Ask each actor Ray is restarting to start its new epoch, until one call succeeds; a restart that
        takes longer than ``restart_timeout`` drops the actor."""
        now = time.monotonic()
        for s in self._slots:
            if not s.alive or s.lost_at == 0.0:
                continue
            if s.starting is not None:
                ready, _ = self._ray.wait([s.starting], timeout=0)
                if not ready:
                    continue
                try:
                    self._ray.get(ready[0])
                    s.starting, s.lost_at = None, 0.0  # back: it gets a batch to collect below
                    continue
                except Exception as e:  # noqa: BLE001  (still restarting, or gone for good)
                    if getattr(e, "actor_init_failed", False):
                        raise RuntimeError(f"{self.name}: ray actor {s.index} could not be recreated: {e}") from e
                    s.starting, s.retry_at = None, now + 0.5
            if now - s.lost_at > self.restart_timeout:
                self._drop(s, f"was not back {self.restart_timeout:.0f} s after it died")
            elif s.starting is None and now >= s.retry_at:
                s.starting = self._start_actor(s)

    def _finished(self, timeout: float) -> list[tuple[_Slot, Any]]:
        """``(slot, batch or exception)`` of the batches done within ``timeout`` seconds."""
        refs = {s.inflight: s for s in self._slots if s.alive and s.inflight is not None}
        if not refs:
            return []
        ready, _ = self._ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        out = []
        for ref in ready:
            s = refs[ref]
            try:
                out.append((s, self._ray.get(ref)))
            except Exception as e:  # noqa: BLE001  (sorted below: a death restarts, anything else stops training)
                out.append((s, e))
        return out

    def _pump(self, ctx: Context, timeout: float, policy: bool, allowed: float | None) -> int:
        """Store the batches that are done (waiting at most ``timeout`` s for one), then ask idle actors for
        more while the vector steps received or in flight are below ``allowed`` (None: no cap).
        Returns the vector steps stored."""
        got = 0
        self._recover()
        for s, result in self._finished(timeout):
            s.inflight, s.inflight_steps = None, 0
            if isinstance(result, BaseException):
                if getattr(result, "actor_init_failed", False):  # its __init__ raised: a restart would too
                    raise RuntimeError(
                        f"{self.name}: ray actor {s.index} could not be created (is make_env importable in a fresh "
                        f"process, e.g. a module-level function of an installed package?): {result}") from result
                if not _is_death(result):
                    raise RuntimeError(f"{self.name}: ray actor {s.index} failed: {result}") from result
                self._lost(s, result)
                continue
            if result.get("fresh"):  # it died between two batches and Ray restarted it: the same as a death
                self._lost(s, RuntimeError(f"actor {s.index}'s process was restarted (pid {result.get('pid')})"))
                continue
            got += self._ingest(s, result)
        for s in self._slots:
            if not s.alive or s.inflight is not None or s.lost_at:
                continue
            if allowed is not None:
                counted = self._vector_steps_in_training + sum(x.inflight_steps for x in self._slots)
                if counted >= allowed:
                    break
            self._submit(s, ctx, policy, self.batch_steps)
        return got

    def _collect_until(self, ctx: Context, done: Callable[[int], bool], policy: bool, what: str,
                       max_vector_steps: int | None = None) -> int:
        """Drive the actors (no cap) until ``done(vector steps stored)``; a shutdown ends it."""
        taken = 0
        while not done(taken):
            signal = shutdown_requested()
            if signal is not None:
                raise TrainingShutdownException(f"{self.name}: {what}: stopped by {signal}")
            if max_vector_steps is not None and taken >= max_vector_steps:
                raise RuntimeError(f"{self.name}: after {taken} extra warm-up vector steps the memory still cannot "
                                   "give a batch; expected it to fill. Is the memory storing what the actors report?")
            taken += self._pump(ctx, 0.1, policy, None)
        return taken

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

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def host_state_dict(self) -> dict[str, Any]:
        """Counters, episode statistics, each actor's epoch and restarts, the memory's running episodes."""
        return {
            "version": 1, "kind": "ray", "num_actors": self.num_actors,
            "counters": {"env_steps": self.env_steps, "vector_steps": self.vector_steps,
                         "episodes_completed": self.episodes_completed, "restarts": self.restarts,
                         "bp_done": self._bp_done, "vector_steps_in_training": self._vector_steps_in_training,
                         "next_agent": self._next_agent},
            "epochs": [s.epoch for s in self._slots], "actor_restarts": [s.restarts for s in self._slots],
            "actor_env_steps": [s.env_steps for s in self._slots],
            "episode_returns": list(self.episode_returns), "episode_lengths": list(self.episode_lengths),
            "episode_env_steps": list(self.episode_env_steps),
            "memory": self.memory.state_dict() if hasattr(self.memory, "state_dict") else None,
        }

    def load_host_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`host_state_dict` (checked first, unchanged on error); the next ``begin_training``
        closes the checkpoint's running episodes and starts every actor on a new epoch (fresh seeds)."""
        where = f"{self.name}.load_host_state_dict"
        if state.get("version") != 1 or state.get("kind") != "ray":
            raise ValueError(f"{where}: expected a Ray collector's state (version 1), got kind {state.get('kind')!r} "
                             f"version {state.get('version')!r}; was the checkpoint written with a local collector?")
        if state.get("num_actors") != self.num_actors:
            raise ValueError(f"{where}: expected the state of {self.num_actors} actors, "
                             f"got {state.get('num_actors')!r} "
                             "(resume with the --ray-actors of the checkpointed run)")
        try:
            c = {k: int(v) for k, v in state["counters"].items()}
            epochs = [int(e) for e in state["epochs"]]
            restarts = [int(r) for r in state["actor_restarts"]]
            actor_env = [int(n) for n in state["actor_env_steps"]]
            if not len(epochs) == len(restarts) == len(actor_env) == self.num_actors:
                raise ValueError(f"expected per-actor lists of length {self.num_actors}")
            if state.get("memory") is not None and hasattr(self.memory, "load_state_dict"):
                self.memory.load_state_dict(state["memory"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the saved state does not fit this collector: {type(e).__name__}: {e}") from e
        self.env_steps, self.vector_steps = c["env_steps"], c["vector_steps"]
        self.episodes_completed, self.restarts = c["episodes_completed"], c["restarts"]
        self._bp_done, self._vector_steps_in_training = c["bp_done"], c["vector_steps_in_training"]
        self._next_agent = c["next_agent"]
        for s, e, r, n in zip(self._slots, epochs, restarts, actor_env):
            s.epoch, s.restarts, s.env_steps = e, r, n
        for dq, k in ((self.episode_returns, "episode_returns"), (self.episode_lengths, "episode_lengths"),
                      (self.episode_env_steps, "episode_env_steps")):
            dq.clear()
            dq.extend(state.get(k, []))
        self._resume_pending = True
