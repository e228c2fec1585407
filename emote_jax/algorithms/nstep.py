"""n-step returns through a gamma matrix (the reference's ``emote/utils/gamma_matrix.py``), shared by
every Q target (SAC's, DQN's).

For ``B`` rollouts of length ``T`` with rewards ``(B, T)`` and a bootstrap value ``(B, 1)`` after each
rollout's last step, the target at position ``i`` is
``sum_{j>=i} gamma^(j-i) r_j + gamma^(T-i) * bootstrap``: one matrix product ``[rewards, bootstrap] @ G``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def gamma_matrix(gamma: float, rollout_length: int) -> np.ndarray:
    """(T+1, T) matrix G with ``G[j, i] = gamma**(j - i)`` for ``j >= i``, else 0.

    For ``R = concat(rewards (B, T), bootstrap (B, 1))``, ``R @ G`` is the n-step discounted return at
    every position of the rollout: ``sum_{j>=i} gamma^(j-i) r_j + gamma^(T-i) * bootstrap``.
    """
    t = rollout_length
    j = np.arange(t + 1)[:, None]
    i = np.arange(t)[None, :]
    return np.where(j >= i, float(gamma) ** np.maximum(j - i, 0), 0.0).astype(np.float32)


def traced_gamma_matrix(gamma: jax.Array, rollout_length: int) -> jax.Array:
    """:func:`gamma_matrix` for a traced ``gamma`` (a hyperparameter in the state: changing it does not
    recompile); ``rollout_length`` is static. (T+1, T) float32."""
    t = rollout_length
    g = gamma ** jnp.arange(t + 1, dtype=jnp.float32)
    j, i = jnp.arange(t + 1)[:, None], jnp.arange(t)[None, :]
    return jnp.where(j >= i, g[jnp.clip(j - i, 0, t)], 0.0)


def discount(rewards: jax.Array, bootstrap: jax.Array, gamma: jax.Array) -> jax.Array:
    """n-step returns ``(B, T)`` of ``rewards (B, T)`` with ``bootstrap (B, 1)`` after the last step.

    ``bootstrap`` must already be masked (zero after a true termination); the caller scales rewards.
    """
    return jnp.concatenate([rewards, bootstrap], axis=1) @ traced_gamma_matrix(gamma, rewards.shape[1])
