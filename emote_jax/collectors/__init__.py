"""Collectors: host callbacks that step environments with the current policy and fill a replay memory.

``gym.py`` holds :class:`GymCollector` (stepping, episodes, acting), ``threaded.py`` its background-thread
variant, ``ray.py`` :class:`RayCollector` (Ray actor processes step the envs for the learner's memory),
``spaces.py`` the spaces a collector takes and the table spec they give, ``actions.py`` how it handles an
algorithm's actions (Box or Discrete), ``state.py`` its state for exact resume.
"""

from emote_jax.collectors.actions import Actions, BoxActions, DiscreteActions
from emote_jax.collectors.gym import GymCollector
from emote_jax.collectors.spaces import (
    OBS_KEY,
    NonFiniteObservationError,
    ObservationShapeError,
    PolicyOutputError,
    memory_spec,
)
from emote_jax.collectors.ray import RayCollector
from emote_jax.collectors.threaded import ThreadedGymCollector

__all__ = [
    "OBS_KEY",
    "Actions",
    "BoxActions",
    "DiscreteActions",
    "GymCollector",
    "NonFiniteObservationError",
    "ObservationShapeError",
    "PolicyOutputError",
    "RayCollector",
    "ThreadedGymCollector",
    "memory_spec",
]
