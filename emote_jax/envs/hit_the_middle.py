"""HitTheMiddle: the reference's smallest continuous-control test environment.

A ball on a line ``[-10, 10]``. The agent pushes it (changes its velocity) and is rewarded for keeping it
near the middle.

* observation ``[pos, vel]`` (float32, shape ``(2,)``);
* action ``a`` in ``[-1, 1]``, shape ``(1,)``;
* step: ``vel += a; pos += vel``; if ``pos > 10``: ``pos = 10, vel = -vel``; if ``pos < -10``:
  ``pos = -10, vel = -vel`` (an elastic bounce off the walls);
* reward ``-pos**2`` after the update;
* reset: ``pos ~ U[-10, 10)``, ``vel ~ U[-0.25, 0.25)`` from the env's ``np_random`` (seeded by
  ``reset(seed=...)``).

Episode end: the reference returns ``done=True`` (gymnasium: ``terminated``, with ``truncated`` always
False) on the 31st step. We mirror that: ``terminated=True`` after :data:`EPISODE_STEPS` steps, so a SAC
Q target does not bootstrap past the end of an episode, exactly as in the reference's test bar (SAC on 10
envs, mean batch reward >= -5 at bp step 2000). Semantically that end is a time limit; register it with
``gymnasium.make(..., max_episode_steps=...)`` on :class:`HitTheMiddle` with ``episode_steps=None`` if
you want it treated as a truncation instead.

Like the reference, the action is not clipped: an action outside ``[-1, 1]`` is applied as given.
The state is kept in float64 (as the reference does); observations are float32 copies.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

#: Steps per episode (the reference ends its episodes with ``done`` when its step counter exceeds 30).
EPISODE_STEPS = 31
#: The walls.
BOUND = 10.0


class HitTheMiddle(gymnasium.Env):
    """Keep a ball in the middle of ``[-10, 10]`` by changing its velocity (see the module docstring).

    Args:
        episode_steps: steps after which the episode ends with ``terminated=True`` (reference: 31).
            ``None`` for no own end (then wrap it in a ``TimeLimit`` for truncated episodes).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, episode_steps: int | None = EPISODE_STEPS):
        if episode_steps is not None and episode_steps < 1:
            raise ValueError(f"episode_steps must be None or >= 1, got {episode_steps}")
        high = np.array([BOUND, np.finfo(np.float32).max], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.episode_steps = episode_steps
        self._pos = 0.0
        self._vel = 0.0
        self._step = 0

    def _obs(self) -> np.ndarray:
        return np.array([self._pos, self._vel], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pos = float(self.np_random.uniform(-BOUND, BOUND))
        self._vel = float(self.np_random.uniform(-0.25, 0.25))
        self._step = 0
        return self._obs(), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (1,):
            raise ValueError(f"HitTheMiddle expects one action value (shape (1,)), got shape {np.shape(action)}")
        self._vel += float(a[0])
        self._pos += self._vel
        if self._pos > BOUND:
            self._pos = BOUND
            self._vel = -self._vel
        elif self._pos < -BOUND:
            self._pos = -BOUND
            self._vel = -self._vel
        self._step += 1
        terminated = self.episode_steps is not None and self._step >= self.episode_steps
        return self._obs(), float(-self._pos**2), bool(terminated), False, {}
