"""Environments for tests and examples.

Importing this package registers ``"HitTheMiddle-v0"`` with gymnasium (idempotently), so that
``gymnasium.make("HitTheMiddle-v0")`` and ``gymnasium.make_vec("HitTheMiddle-v0", num_envs=10)`` work.
"""

import gymnasium

from emote_jax.envs.hit_the_middle import EPISODE_STEPS, HitTheMiddle

HIT_THE_MIDDLE_ID = "HitTheMiddle-v0"


def register_envs() -> None:
    """Register the environments of this package with gymnasium; a second call does nothing."""
    if HIT_THE_MIDDLE_ID not in gymnasium.registry:
        gymnasium.register(id=HIT_THE_MIDDLE_ID, entry_point="emote_jax.envs.hit_the_middle:HitTheMiddle")


register_envs()

__all__ = ["EPISODE_STEPS", "HIT_THE_MIDDLE_ID", "HitTheMiddle", "register_envs"]
