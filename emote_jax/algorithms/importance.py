"""Importance-weighted regression losses for prioritized replay (docs/decisions/0009-pluggable-sampling.md).

A prioritized sampler puts ``weights`` (B,) into the batch, one per rollout window; a loss over the B*T
rows of the windows weights each row by its window's weight and reports one ``|TD error|`` per window
(the mean over its T rows), which the priority updater turns into the window's new priority.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def window_weights(weights: jax.Array, rows: int) -> jax.Array:
    """(B,) window weights -> (B*T, 1) row weights, for ``rows = B*T`` rows rollout-major."""
    b = weights.shape[0]
    if rows % b:
        raise ValueError(f"expected B*T rows for {b} window weights, got {rows} rows")
    return jnp.repeat(weights, rows // b)[:, None]


def window_td_error(q: jax.Array, target: jax.Array, num_windows: int) -> jax.Array:
    """(B,) mean ``|q - target|`` over the T rows of each window; q and target (B*T, 1)."""
    return jax.lax.stop_gradient(jnp.abs(q - target).reshape(num_windows, -1).mean(axis=1))


def weighted_mse(q: jax.Array, target: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``mean(w * (q - target)^2)`` over the rows, w each row's window weight, and the (B,) |TD errors|.

    Args:
        q, target: (B*T, 1).
        weights: (B,) importance weights of the windows.
    """
    w = window_weights(weights, q.shape[0])
    return jnp.mean(w * (q - target) ** 2), window_td_error(q, target, weights.shape[0])
