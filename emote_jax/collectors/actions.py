"""How a collector handles the actions of one kind of action space: what the memory stores, random
warm-up actions, checking what the policy returns, exploration on top of it, and what ``env.step`` takes.

An algorithm says which it uses (``Algorithm.actions`` in :mod:`emote_jax.recipes.common`), so a
collector never looks at the type of the action space itself:

* :class:`BoxActions` (SAC): the policy emits float32 actions in ``[-1, 1]`` of the Box's shape; they
  are clipped, stored as they are and rescaled linearly to the Box bounds for ``env.step``.
* :class:`DiscreteActions` (DQN): the policy emits action indices ``0..n-1``; the memory stores int64
  scalars (``action_shape == ()``); with probability ``epsilon(env_steps)`` an index is replaced by a
  uniform random one (epsilon-greedy), and ``env.step`` gets ``index + space.start``.

Shapes: ``N`` is the number of sub-envs; one stored action has ``shape`` (``(A,)`` for a Box, ``()`` for
a Discrete space).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import gymnasium
import jax
import numpy as np
from gymnasium import spaces

from emote_jax.collectors.acting import checked_actions, env_actions
from emote_jax.collectors.spaces import PolicyOutputError, check_action_space

#: ``count -> value``: an optax schedule (``optax.linear_schedule(1.0, 0.05, 10_000)``).
Schedule = Callable[[Any], Any]


@runtime_checkable
class Actions(Protocol):
    """The collector's action handling for one action space (see the module docstring)."""

    space: gymnasium.Space
    shape: tuple[int, ...]  # of one stored action
    dtype: np.dtype  # of the memory's action column

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n, *shape)`` uniformly random actions (the warm-up's)."""
        ...

    def checked(self, actions: np.ndarray, n: int, vector_step: int, where: str) -> np.ndarray:
        """The policy's ``actions`` for ``n`` sub-envs as the memory stores them, or a PolicyOutputError."""
        ...

    def explore(self, actions: np.ndarray, env_steps: int, rng: np.random.Generator) -> np.ndarray:
        """``actions`` with the exploration the policy does not do itself, at ``env_steps`` env steps."""
        ...

    def to_env(self, actions: np.ndarray) -> Any:
        """Stored actions ``(n, *shape)`` -> what ``env.step`` of a vector env takes."""
        ...


class BoxActions:
    """A Box action space and a policy in ``[-1, 1]`` (SAC's): clip, store float32, rescale to the bounds.

    The policy explores by itself (SAC samples), so :meth:`explore` changes nothing. Clipping that
    changes an action warns once.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, space: gymnasium.Space):
        self.space = check_action_space(space)
        self.shape = tuple(self.space.shape)
        self._warned_clip = False

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(-1.0, 1.0, size=(n, *self.shape)).astype(np.float32)

    def checked(self, actions: np.ndarray, n: int, vector_step: int, where: str) -> np.ndarray:
        clipped, self._warned_clip = checked_actions(actions, (n, *self.shape), vector_step, where, self._warned_clip)
        return clipped

    def explore(self, actions: np.ndarray, env_steps: int, rng: np.random.Generator) -> np.ndarray:
        return actions

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return env_actions(actions, self.space)


class HostSchedule:
    """An optax schedule evaluated on the host, ``block`` steps at a time (one jitted call per block).

    Calling a schedule of jnp ops once per env step would cost a device dispatch each time; this keeps
    the values of the current block of steps as a NumPy array instead. ``value(step)`` is
    ``float(schedule(step))`` in float32.
    """

    def __init__(self, schedule: Schedule, block: int = 4096):
        self.schedule, self.block = schedule, int(block)
        self._values = jax.jit(jax.vmap(schedule))
        self._start: int | None = None
        self._table = np.zeros(0, np.float32)

    def value(self, step: int) -> float:
        start = (int(step) // self.block) * self.block
        if start != self._start:
            steps = np.arange(start, start + self.block, dtype=np.int32)
            self._table = np.asarray(self._values(steps), np.float32).reshape(-1)
            if self._table.shape != (self.block,):
                raise ValueError(f"HostSchedule: expected the schedule to give one value per step, got shape "
                                 f"{self._table.shape} for {self.block} steps")
            self._start = start
        return float(self._table[int(step) - start])


def epsilon_greedy(greedy: np.ndarray, epsilon: float, n_actions: int, rng: np.random.Generator) -> np.ndarray:
    """``greedy`` (N,) with each entry replaced, with probability ``epsilon``, by a uniform index in
    ``[0, n_actions)``. Draws ``N`` uniforms and ``N`` indices from ``rng`` whatever ``epsilon`` is, so the
    generator's stream does not depend on the schedule."""
    explore = rng.random(greedy.shape[0]) < epsilon
    random = rng.integers(0, n_actions, size=greedy.shape[0])
    return np.where(explore, random, greedy).astype(np.int64)


class DiscreteActions:
    """A Discrete action space (DQN's): indices ``0..n-1`` stored as int64 scalars, epsilon-greedy.

    Args:
        space: a ``gymnasium.spaces.Discrete``.
        epsilon: the exploration rate, a float or an optax schedule of the collector's ``env_steps``
            (evaluated with :class:`HostSchedule`). The schedule's position is the collector's
            ``env_steps``, which its checkpoint holds, so a resumed run explores as the straight one.
    """

    dtype = np.dtype(np.int64)
    shape: tuple[int, ...] = ()

    def __init__(self, space: gymnasium.Space, epsilon: float | Schedule = 0.0):
        if not isinstance(space, spaces.Discrete):
            raise TypeError(f"DiscreteActions needs a gymnasium Discrete action space, got {space!r}")
        self.space = space
        self.n = int(space.n)
        self.start = int(space.start)
        #: epsilon as given (a float or an optax schedule): what a device collector evaluates in the step
        self.epsilon_spec = epsilon
        self._schedule = HostSchedule(epsilon) if callable(epsilon) else None
        self._epsilon = None if callable(epsilon) else float(epsilon)

    def epsilon(self, env_steps: int) -> float:
        """The exploration rate after ``env_steps`` env steps."""
        return self._schedule.value(env_steps) if self._schedule is not None else self._epsilon

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.n, size=n).astype(np.int64)

    def checked(self, actions: np.ndarray, n: int, vector_step: int, where: str) -> np.ndarray:
        if actions.shape != (n,):
            raise PolicyOutputError(f"{where}: the policy returned actions of shape {actions.shape}, expected ({n},) "
                                    f"(one action index per sub-env, for Discrete({self.n}))")
        if not np.issubdtype(actions.dtype, np.integer):
            raise PolicyOutputError(f"{where}: the policy returned actions of dtype {actions.dtype}, expected "
                                    f"integer indices in [0, {self.n})")
        bad = (actions < 0) | (actions >= self.n)
        if bad.any():
            raise PolicyOutputError(f"{where}: the policy returned action {actions[bad][0]} at vector step "
                                    f"{vector_step}, expected indices in [0, {self.n})")
        return actions.astype(np.int64)

    def explore(self, actions: np.ndarray, env_steps: int, rng: np.random.Generator) -> np.ndarray:
        return epsilon_greedy(actions, self.epsilon(env_steps), self.n, rng)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        return (np.asarray(actions, np.int64) + self.start).astype(self.space.dtype)
