"""Algorithms built from callbacks. ``QLoss`` and ``QTarget`` here are SAC's; DQN's are
``emote_jax.algorithms.dqn.QLoss`` and ``QTarget`` (as in the reference's ``emote.algorithms.dqn``)."""

from emote_jax.algorithms.dqn import DQNHParams, make_dqn_callbacks
from emote_jax.algorithms.sac import AlphaLoss, PolicyLoss, QLoss, QTarget, SACHParams, gamma_matrix, make_sac_callbacks

__all__ = ["AlphaLoss", "DQNHParams", "PolicyLoss", "QLoss", "QTarget", "SACHParams", "gamma_matrix", "make_dqn_callbacks",
           "make_sac_callbacks"]
