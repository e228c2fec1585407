"""Algorithms built from callbacks."""

from emote_jax.algorithms.sac import AlphaLoss, PolicyLoss, QLoss, QTarget, SACHParams, gamma_matrix, make_sac_callbacks

__all__ = ["AlphaLoss", "PolicyLoss", "QLoss", "QTarget", "SACHParams", "gamma_matrix", "make_sac_callbacks"]
