"""What runs inside one Ray actor process of a :class:`~emote_jax.collectors.ray.RayCollector`: a vector env
stepped by a :class:`~emote_jax.collectors.gym.GymCollector` whose memory records the ``add``/``interrupt``
calls instead of storing them; the learner asks for them batch by batch.

Ray ships :class:`EnvActor` to the actor processes by reference (``emote_jax.collectors.ray_actor.EnvActor``):
an actor process imports this module, so it must import on its own in a fresh process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from emote_jax.collectors.actions import Actions
from emote_jax.context import PyTree
from emote_jax.memory import AgentObservation
from emote_jax.networks.host import HostPolicy

__all__ = ["EnvActor"]


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
