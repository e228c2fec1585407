"""The reference's SAC networks in Flax Linen: MLP trunks, a tanh-squashed Gaussian policy, a Q net.

Inits as the reference: ReLU trunks with orthogonal kernels (gain sqrt(2)) and zero biases, the policy
head with gain 0.01, the Q head with gain 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
MEAN_CLAMP = 5.0


def _dense(features: int, gain: float, name: str | None = None) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros, name=name)


class MLP(nn.Module):
    """ReLU MLP trunk: (B, in) -> (B, hidden_dims[-1])."""

    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for h in self.hidden_dims:
            x = nn.relu(_dense(h, jnp.sqrt(2.0))(x))
        return x


class QNet(nn.Module):
    """Action-value network: Q(obs (B, obs_dim), action (B, A)) -> (B, 1), on concat(obs, action)."""

    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        x = MLP(self.hidden_dims)(jnp.concatenate([obs, action], axis=-1))
        return _dense(1, 1.0, name="head")(x)


class GaussianPolicy(nn.Module):
    """Policy head: obs (B, obs_dim) -> (mean (B, A) clamped to +-5, std (B, A) = exp(clamp(log_std, -20, 2))).

    Sample with :func:`sample_action`; the deterministic (evaluation) action is :func:`mode_action`.
    """

    action_dim: int
    hidden_dims: Sequence[int] = (256, 256)
    #: The mean and log-std layers' kernels: ``"orthogonal"`` (gain 0.01, the default) or ``"xavier"``
    #: (xavier-uniform, gain 0.01: the reference's ``GaussianPolicyHead``). Biases start at zero either way.
    head_init: str = "orthogonal"

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = MLP(self.hidden_dims)(obs)
        mean = jnp.clip(self._head("mean")(h), -MEAN_CLAMP, MEAN_CLAMP)
        log_std = jnp.clip(self._head("log_std")(h), LOG_STD_MIN, LOG_STD_MAX)
        return mean, jnp.exp(log_std)

    def _head(self, name: str) -> nn.Dense:
        if self.head_init == "orthogonal":
            return _dense(self.action_dim, 0.01, name=name)
        if self.head_init == "xavier":  # variance_scaling(gain**2, fan_avg, uniform) is xavier_uniform(gain)
            init = nn.initializers.variance_scaling(0.01**2, "fan_avg", "uniform")
            return nn.Dense(self.action_dim, kernel_init=init, bias_init=nn.initializers.zeros, name=name)
        raise ValueError(f"GaussianPolicy: expected head_init 'orthogonal' or 'xavier', got {self.head_init!r}")


def squashed_log_prob(u: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Log-density of ``tanh(u)`` for ``u ~ N(mean, std)``: (B, A) -> (B, 1).

    ``sum(log N(u)) - sum(2 * (log 2 - u - softplus(-2u)))``, the numerically stable form of
    ``log(1 - tanh(u)^2)`` that the reference uses.
    """
    z = (u - mean) / std
    normal = -0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi)
    correction = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.sum(normal - correction, axis=-1, keepdims=True)


def sample_action(mean: jax.Array, std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample: ``(tanh(mean + std * eps) (B, A), log_prob (B, 1))``."""
    u = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    return jnp.tanh(u), squashed_log_prob(u, mean, std)


def mode_action(mean: jax.Array) -> jax.Array:
    """The deterministic (evaluation) action ``tanh(mean)``: (B, A)."""
    return jnp.tanh(mean)
