"""Environments for tests and examples.

Importing this package registers ``"HitTheMiddle-v0"``, ``"DictPendulum-v0"`` and ``"PixelHitTheMiddle-v0"``
(Dict observations: :mod:`emote_jax.envs.dict_obs`) with gymnasium (idempotently), so that
``gymnasium.make("HitTheMiddle-v0")`` and ``gymnasium.make_vec("HitTheMiddle-v0", num_envs=10)`` work.
"""

import gymnasium

from emote_jax.envs.hit_the_middle import EPISODE_STEPS, HitTheMiddle

HIT_THE_MIDDLE_ID = "HitTheMiddle-v0"
DICT_PENDULUM_ID = "DictPendulum-v0"
PIXEL_HIT_THE_MIDDLE_ID = "PixelHitTheMiddle-v0"


def register_envs() -> None:
    """Register the environments of this package with gymnasium; a second call does nothing."""
    if HIT_THE_MIDDLE_ID not in gymnasium.registry:
        gymnasium.register(id=HIT_THE_MIDDLE_ID, entry_point="emote_jax.envs.hit_the_middle:HitTheMiddle")
    if DICT_PENDULUM_ID not in gymnasium.registry:  # Pendulum-v1's time limit
        gymnasium.register(id=DICT_PENDULUM_ID, entry_point="emote_jax.envs.dict_obs:DictPendulum", max_episode_steps=200)
    if PIXEL_HIT_THE_MIDDLE_ID not in gymnasium.registry:
        gymnasium.register(id=PIXEL_HIT_THE_MIDDLE_ID, entry_point="emote_jax.envs.dict_obs:PixelHitTheMiddle")


register_envs()

__all__ = ["DICT_PENDULUM_ID", "EPISODE_STEPS", "HIT_THE_MIDDLE_ID", "PIXEL_HIT_THE_MIDDLE_ID", "HitTheMiddle",
           "register_envs"]
