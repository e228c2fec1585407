"""How a collector acts: checking what its policy returns, and turning [-1, 1] actions into env actions.

The policy itself is a jitted ``policy(params, obs, key)`` or a :class:`~emote_jax.networks.host.HostPolicy`
(see :class:`~emote_jax.collectors.gym.GymCollector`); these functions are what the collector does around
it, kept apart so that the checks and the rescaling have one home.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium
import jax
import numpy as np

from emote_jax.collectors.spaces import ObservationShapeError, PolicyOutputError


def checked_actions(actions: np.ndarray, expected: tuple[int, ...], vector_step: int, name: str,
                    warned_clip: bool) -> tuple[np.ndarray, bool]:
    """``(actions clipped to [-1, 1] as float32, warned_clip)``: a PolicyOutputError for a wrong shape or a
    non-finite action; one warning (the first time, unless ``warned_clip``) when clipping changed them."""
    if actions.shape != expected:
        raise PolicyOutputError(
            f"the policy returned actions of shape {actions.shape}, expected {expected} "
            f"(num_envs={expected[0]}, action space shape {expected[1:]})"
        )
    if not np.isfinite(actions).all():
        raise PolicyOutputError(f"the policy returned non-finite actions at vector step {vector_step}: {actions}")
    actions = actions.astype(np.float32)
    clipped = np.clip(actions, -1.0, 1.0)
    if not warned_clip and np.abs(clipped - actions).max() > 1e-5:
        warned_clip = True
        warnings.warn(
            f"{name}: the policy returned actions outside [-1, 1] (max |a| = {np.abs(actions).max():.3g}); "
            "they are clipped, and the clipped actions are stored",
            stacklevel=4,
        )
    return clipped, warned_clip


def env_actions(actions: np.ndarray, space: gymnasium.spaces.Box) -> np.ndarray:
    """Actions in [-1, 1] ``(N, *shape)`` rescaled linearly to the bounds of ``space``, in its dtype."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    return (low + (actions.astype(np.float64) + 1.0) * 0.5 * (high - low)).astype(space.dtype)


def observation_shape_error(name: str, obs: Any, num_envs: int, space: gymnasium.Space,
                            e: Exception) -> ObservationShapeError:
    """The error for a policy that cannot act on the env's observations ``obs`` (it raised ``e``)."""
    shapes = jax.tree.map(lambda x: tuple(x.shape), obs)
    return ObservationShapeError(
        f"{name}: the policy cannot act on the env's observations (batched shapes {shapes}, num_envs={num_envs}); "
        f"does the network's input size match the observation space {space}? {type(e).__name__}: {e}"
    )
