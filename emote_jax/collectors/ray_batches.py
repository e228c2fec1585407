"""Batches between the Ray actors and the learner's memory: publishing the policy's parameters, asking idle
actors for batches under the cap, storing the batches that are done in order (each actor's memory calls
replayed with its agent ids mapped to the memory's), and driving the actors until the warm-up is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from emote_jax.callback import TrainingShutdownException
from emote_jax.collectors.ray_restarts import RayRestarts, _is_death
from emote_jax.collectors.ray_slots import _Slot
from emote_jax.context import Context
from emote_jax.faults import shutdown_requested
from emote_jax.memory import EpisodeState


class RayBatches(RayRestarts):
    """The batch flow of :class:`~emote_jax.collectors.ray.RayCollector` (an actor found dead here goes to
    :meth:`~emote_jax.collectors.ray_restarts.RayRestarts._lost`)."""

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
