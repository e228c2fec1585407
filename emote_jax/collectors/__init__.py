"""Collectors: host callbacks that step environments with the current policy and fill a replay memory.

``gym.py`` holds :class:`GymCollector` (stepping, episodes, acting), ``threaded.py`` its background-thread
variant, ``spaces.py`` the spaces a collector takes and the table spec they give, ``state.py`` its state
for exact resume.
"""

from emote_jax.collectors.gym import GymCollector
from emote_jax.collectors.spaces import (
    OBS_KEY,
    NonFiniteObservationError,
    ObservationShapeError,
    PolicyOutputError,
    memory_spec,
)
from emote_jax.collectors.threaded import ThreadedGymCollector

__all__ = [
    "OBS_KEY",
    "GymCollector",
    "NonFiniteObservationError",
    "ObservationShapeError",
    "PolicyOutputError",
    "ThreadedGymCollector",
    "memory_spec",
]
