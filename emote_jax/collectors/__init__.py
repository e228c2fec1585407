"""Collectors: host callbacks that step environments with the current policy and fill a replay memory."""

from emote_jax.collectors.gym import (
    GymCollector,
    NonFiniteObservationError,
    ObservationShapeError,
    PolicyOutputError,
    ThreadedGymCollector,
    memory_spec,
)

__all__ = [
    "GymCollector",
    "NonFiniteObservationError",
    "ObservationShapeError",
    "PolicyOutputError",
    "ThreadedGymCollector",
    "memory_spec",
]
