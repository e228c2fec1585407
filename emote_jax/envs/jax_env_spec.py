"""What a JAX-native environment is (:class:`JaxEnv`: pure ``reset``/``step`` functions and the spaces) and
which env ids name one. The envs themselves are in :mod:`emote_jax.envs.jax_env` (``jax:``, ``gymnax:``)
and :mod:`emote_jax.envs.brax_env` (``brax:``); this module is what both build on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gymnasium
import jax

from emote_jax.context import PyTree

#: ``key -> (env state, obs (obs_dim,))``.
Reset = Callable[[jax.Array], tuple[PyTree, jax.Array]]
#: ``(env state, action (A,), key) -> (env state, obs (obs_dim,), reward (), terminated () bool)``.
Step = Callable[[PyTree, jax.Array, jax.Array], tuple[PyTree, jax.Array, jax.Array, jax.Array]]

#: The prefixes of JAX-native env ids.
JAX_PREFIX, GYMNAX_PREFIX, BRAX_PREFIX = "jax:", "gymnax:", "brax:"


@dataclass(frozen=True)
class JaxEnv:
    """One JAX-native environment.

    Attributes:
        id: the id it was made from (``"jax:Pendulum-v1"``).
        reset: ``key -> (state, obs (obs_dim,) float32)``.
        step: ``(state, action (A,) in the action space's units, key) -> (state, obs, reward () float32,
            terminated () bool)``; no time limit, no autoreset (the collector adds both).
        observation_space: a flat float32 ``Box`` ``(obs_dim,)``.
        action_space: a ``Box`` ``(A,)`` (the policy's ``[-1, 1]`` is scaled into it by the collector) or a
            ``Discrete`` (``step`` takes an int).
        max_episode_steps: the time limit: the collector truncates an episode after this many steps.
    """

    id: str
    reset: Reset
    step: Step
    observation_space: gymnasium.spaces.Box
    action_space: gymnasium.spaces.Box | gymnasium.spaces.Discrete
    max_episode_steps: int

    @property
    def gymnasium_id(self) -> str | None:
        """The gymnasium env this one ports (same dynamics), or None."""
        return self.id[len(JAX_PREFIX):] if self.id.startswith(JAX_PREFIX) else None


def is_jax_env_id(env_id: str) -> bool:
    """Whether ``env_id`` names a JAX-native env (``jax:...``, ``brax:...`` or ``gymnax:...``)."""
    return env_id.startswith((JAX_PREFIX, GYMNAX_PREFIX, BRAX_PREFIX))


def has_gymnasium_twin(env_id: str) -> bool:
    """Whether ``env_id`` runs as a gymnasium env on the host: a gymnasium id, or a ``jax:`` port of one
    (evaluated, filmed and exported on the original). ``brax:`` and ``gymnax:`` envs have none: they are
    evaluated on the device."""
    return not env_id.startswith((GYMNAX_PREFIX, BRAX_PREFIX))
