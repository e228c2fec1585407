"""What a collector takes from a gymnasium env and hands on: the spaces it accepts, the replay-table
spec they give, observations as float32 dicts, and the errors when an env or a policy does not fit."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

#: The array key under which a Box observation is stored.
OBS_KEY = "obs"


class NonFiniteObservationError(ValueError):
    """A sub-env returned an observation (or reward) that is NaN or infinite."""


class ObservationShapeError(ValueError):
    """The policy cannot take the env's observations (their shape does not match the network)."""


class PolicyOutputError(ValueError):
    """The policy returned actions of the wrong shape, or non-finite actions."""


# ---- spaces ------------------------------------------------------------------------------------------


def check_action_space(space: gymnasium.Space) -> spaces.Box:
    if not isinstance(space, spaces.Box):
        raise TypeError(
            f"this collector needs a continuous Box action space (SAC's policy outputs actions in [-1, 1] "
            f"that are rescaled to the Box bounds); the environment's single action space is {space!r}"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(
            f"the Box action space needs finite bounds to rescale the policy's [-1, 1] actions; got "
            f"low={space.low}, high={space.high}"
        )
    return space


def obs_keys(space: gymnasium.Space) -> dict[str, tuple[int, ...]]:
    """``key -> unbatched shape`` of the arrays stored for an observation space."""
    if isinstance(space, spaces.Box):
        return {OBS_KEY: tuple(space.shape)}
    if isinstance(space, spaces.Dict) and all(isinstance(s, spaces.Box) for s in space.spaces.values()):
        return {k: tuple(s.shape) for k, s in space.spaces.items()}
    raise TypeError(
        f"this collector needs a Box observation space or a Dict of Boxes; the environment's single "
        f"observation space is {space!r}"
    )


def obs_dtypes(space: gymnasium.Space) -> dict[str, np.dtype]:
    """``key -> dtype`` of the arrays stored for an observation space: uint8 for a uint8 image (a rank-3
    Box of uint8, kept as the env gives it and scaled by the network's encoder), float32 for the rest."""
    subspaces = space.spaces if isinstance(space, spaces.Dict) else {OBS_KEY: space}
    return {k: np.dtype(np.uint8) if len(s.shape) == 3 and s.dtype == np.uint8 else np.dtype(np.float32)
            for k, s in subspaces.items() if k in obs_keys(space)}


def memory_spec(env: gymnasium.vector.VectorEnv,
                actions: Any = None) -> tuple[dict[str, tuple[tuple[int, ...], type]], tuple[int, ...]]:
    """``(observation_spec, action_shape)`` for a ``ReplayTable`` that a collector over ``env`` fills.

    A Box observation space gives ``{"obs": (shape, np.float32)}``; a Dict of Boxes one entry per key
    (uint8 for a uint8 image key: :func:`obs_dtypes`).
    ``actions`` (the collector's :class:`~emote_jax.collectors.actions.Actions`; its ``dtype`` is the
    table's ``action_dtype``) gives the action shape; None: a Box action space's shape.
    """
    keys = obs_keys(env.single_observation_space)
    action_shape = tuple(check_action_space(env.single_action_space).shape) if actions is None else tuple(actions.shape)
    dtypes = obs_dtypes(env.single_observation_space)
    return {k: (shape, dtypes[k].type) for k, shape in keys.items()}, action_shape


# ---- observations --------------------------------------------------------------------------------------


def obs_dict(obs: Any, keys: dict[str, tuple[int, ...]], dict_obs: bool,
             dtypes: dict[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """An env observation (batched or single) -> ``{key: array}`` (fresh arrays) of ``dtypes[key]``
    (:func:`obs_dtypes`; None: all float32)."""
    raw = {k: obs[k] for k in keys} if dict_obs else {OBS_KEY: obs}
    return {k: np.array(v, dtype=np.float32 if dtypes is None else dtypes[k]) for k, v in raw.items()}


def check_finite(obs: dict[str, np.ndarray], vector_step: int, where: str, rows: Any = None) -> None:
    """Raise NonFiniteObservationError naming the first sub-env (of ``rows``) with a non-finite observation."""
    for k, v in obs.items():
        bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
        if rows is not None:
            bad &= rows
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise NonFiniteObservationError(
                f"sub-env {i} returned a non-finite observation {k!r} at vector step {vector_step} ({where}): {v[i]}"
            )


def check_single_finite(obs: dict[str, np.ndarray], i: int, vector_step: int, where: str) -> None:
    """Raise NonFiniteObservationError if the single observation ``obs`` of sub-env ``i`` is not finite."""
    for k, v in obs.items():
        if not np.isfinite(v).all():
            raise NonFiniteObservationError(
                f"sub-env {i} returned a non-finite observation {k!r} at vector step {vector_step} ({where}): {v}"
            )
