"""The vocabulary shared by collectors and the memory: agent ids, episode states, observations."""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

#: Identifies one agent (one sub-environment of a vector env, one actor in a game). An agent runs one
#: episode at a time; vector env wrappers typically hand out a fresh id for every new episode.
AgentId = int


class EpisodeState(enum.IntEnum):
    """Where an agent is in its episode when it sends an :class:`AgentObservation`.

    * ``INITIAL``: the first observation of a new episode (no reward yet).
    * ``RUNNING``: the reward of the previous action and the next observation.
    * ``TERMINAL``: the episode truly terminated (the environment reached an absorbing state); the value
      of the final observation is not bootstrapped (``masks == 0``).
    * ``INTERRUPTED``: the episode was cut short (time-limit truncation, or the collector stopping); the
      final observation is still bootstrapped (``masks == 1``).
    """

    INITIAL = 0
    RUNNING = 1
    TERMINAL = 2
    INTERRUPTED = 3


@dataclass(frozen=True)
class AgentObservation:
    """One agent's observation at one step.

    Attributes:
        episode_state: see :class:`EpisodeState`.
        array_data: one *unbatched* observation per key, e.g. ``{"obs": array of shape (3,)}``. The keys,
            shapes and dtypes must match the table's ``observation_spec``.
        reward: the reward of the previous action; ``None`` for ``INITIAL`` (required otherwise).
    """

    episode_state: EpisodeState
    array_data: dict[str, np.ndarray]
    reward: float | None = None
