"""Dict-observation environments: Pendulum with its angle and velocity as two keys, and HitTheMiddle with
its position as a small uint8 image.

* :class:`DictPendulum` (``"DictPendulum-v0"``, 200-step time limit as Pendulum-v1):
  ``{"angle": [cos th, sin th] (2,) float32, "velocity": [th_dot] (1,) float32}``; actions, rewards and
  dynamics are Pendulum-v1's (``gymnasium.make("DictPendulum-v0", g=9.81)`` passes ``g`` on).
* :class:`PixelHitTheMiddle` (``"PixelHitTheMiddle-v0"``): :class:`~emote_jax.envs.hit_the_middle.HitTheMiddle`
  observed as ``{"velocity": [vel] (1,) float32, "position": (8, 8, 1) uint8}``, the image all zeros but
  the pixel of the ball's position bin (64 bins over [-10, 10], row-major), which is 255.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.pendulum import PendulumEnv

from emote_jax.envs.hit_the_middle import BOUND, EPISODE_STEPS, HitTheMiddle

#: The side of :class:`PixelHitTheMiddle`'s image.
PIXELS = 8


class DictPendulum(gymnasium.ObservationWrapper):
    """Pendulum-v1 with a Dict observation ``{"angle": (2,), "velocity": (1,)}`` (see the module docstring)."""

    def __init__(self, **kwargs: Any):
        super().__init__(PendulumEnv(**kwargs))
        inner = self.env.observation_space
        self.observation_space = spaces.Dict({
            "angle": spaces.Box(inner.low[:2], inner.high[:2], dtype=np.float32),
            "velocity": spaces.Box(inner.low[2:], inner.high[2:], dtype=np.float32),
        })

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        obs = np.asarray(observation, np.float32)
        return {"angle": obs[:2].copy(), "velocity": obs[2:].copy()}


def position_image(pos: float) -> np.ndarray:
    """``(8, 8, 1)`` uint8: 255 at the bin of ``pos`` in [-10, 10] (64 bins, row-major), 0 elsewhere."""
    b = int(np.clip((pos + BOUND) / (2 * BOUND) * PIXELS * PIXELS, 0, PIXELS * PIXELS - 1))
    img = np.zeros((PIXELS, PIXELS, 1), np.uint8)
    img[b // PIXELS, b % PIXELS, 0] = 255
    return img


class PixelHitTheMiddle(gymnasium.ObservationWrapper):
    """HitTheMiddle observed as ``{"velocity": (1,) float32, "position": (8, 8, 1) uint8}``."""

    def __init__(self, episode_steps: int | None = EPISODE_STEPS):
        super().__init__(HitTheMiddle(episode_steps))
        self.observation_space = spaces.Dict({
            "velocity": spaces.Box(-np.inf, np.inf, (1,), np.float32),
            "position": spaces.Box(0, 255, (PIXELS, PIXELS, 1), np.uint8),
        })

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        pos, vel = float(observation[0]), float(observation[1])
        return {"velocity": np.array([vel], np.float32), "position": position_image(pos)}
