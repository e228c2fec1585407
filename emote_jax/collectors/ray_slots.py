"""The learner's bookkeeping of its Ray actors: one :class:`_Slot` per actor (its handle, epoch, batch in
flight, agent-id map, restarts), the attributes of :class:`~emote_jax.collectors.ray.RayCollector` that its
parts share (:class:`RayCollectorBase`), the seed of each actor start, and getting the ``ray`` module.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

#: How to get Ray, for the errors that need it.
RAY_EXTRA = "pip install 'emote-jax[ray]'"


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


class RayCollectorBase:
    """The attributes of a :class:`~emote_jax.collectors.ray.RayCollector` (set by its ``__init__``) that its
    parts (:mod:`~emote_jax.collectors.ray_restarts`, :mod:`~emote_jax.collectors.ray_batches`,
    :mod:`~emote_jax.collectors.ray_state`) read and write."""

    name: str
    memory: Any  # the learner's MemoryProxy
    num_actors: int
    params_slot: str
    seed: int
    batch_steps: int
    publish_interval: int
    max_restarts: int
    restart_timeout: float
    out: TextIO | None

    # counters and episode statistics (a local collector's, plus restarts)
    env_steps: int
    vector_steps: int
    episodes_completed: int
    restarts: int
    dropped_batches: int  # batches that arrived out of order or from an old epoch (not stored)
    episode_returns: deque[float]
    episode_lengths: deque[int]
    episode_env_steps: deque[int]

    _slots: list[_Slot]
    _next_agent: int  # the memory's agent id of the next episode an actor starts
    _bp_done: int  # backprop steps done after the warm-up
    _vector_steps_in_training: int  # vector steps stored after the warm-up (what the cap counts)
    _params_ref: Any  # the published parameters (an ObjectRef), None before the first publication
    _params_at: int  # _bp_done when _params_ref was published
    _ray: Any  # the ray module while connected, else None
    _resume_pending: bool  # set by load_host_state_dict: begin_training closes the saved running episodes
