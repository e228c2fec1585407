"""HL-Gauss critics: Q as a categorical distribution over fixed bins, trained by cross-entropy.

The reference's ``emote.algorithms.hlgauss`` (Imani & White 2018; Farebrother et al. 2024,
arXiv:2403.03950): the value range ``[v_min, v_max]`` is cut into ``num_bins`` equal bins (``num_bins +
1`` edges); a scalar target ``y``, clamped into the range, becomes the histogram of a Gaussian
``N(y, sigma^2)`` restricted to the range, with ``sigma = sigma_ratio * bin width`` (0.75 by default);
the network outputs ``num_bins`` logits and is trained by cross-entropy against that histogram; its Q
value is the expectation ``softmax(logits) @ bin centers``.

A target within about ``4 * sigma`` of an edge loses part of its Gaussian to the truncation, so the
histogram's mean sits slightly inside the range (at the edge itself, about ``0.8 * sigma`` inside): choose
``[v_min, v_max]`` a little wider than the returns the env can give.

Shapes: ``B`` rows, ``N = num_bins``; targets ``(B, 1)`` or ``(B,)``, logits ``(B, N)``, values ``(B, 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from emote_jax.algorithms.importance import window_td_error, window_weights
from emote_jax.context import PyTree
from emote_jax.networks.sac import MLP, _dense


@dataclass(frozen=True)
class HLGaussSupport:
    """The fixed bins of an HL-Gauss critic and the transforms between scalars and histograms.

    Args:
        v_min, v_max: the value range (the outer edges of the first and last bin), ``v_min < v_max``.
        num_bins: number of bins ``N >= 2``.
        sigma_ratio: the Gaussian's standard deviation in bin widths (the reference's ``smoothing_ratio``).
    """

    v_min: float
    v_max: float
    num_bins: int = 101
    sigma_ratio: float = 0.75

    def __post_init__(self) -> None:
        if not (np.isfinite(self.v_min) and np.isfinite(self.v_max) and self.v_min < self.v_max):
            raise ValueError(f"HLGaussSupport: expected finite v_min < v_max, got v_min={self.v_min}, v_max={self.v_max}")
        if int(self.num_bins) != self.num_bins or self.num_bins < 2:
            raise ValueError(f"HLGaussSupport: expected num_bins an int >= 2, got {self.num_bins!r}")
        if not (np.isfinite(self.sigma_ratio) and self.sigma_ratio > 0):
            raise ValueError(f"HLGaussSupport: expected a finite sigma_ratio > 0, got {self.sigma_ratio}")

    @property
    def bin_width(self) -> float:
        return (self.v_max - self.v_min) / self.num_bins

    @property
    def sigma(self) -> float:
        """The Gaussian's standard deviation, ``sigma_ratio * bin_width``."""
        return self.sigma_ratio * self.bin_width

    @property
    def edges(self) -> np.ndarray:
        """``(N + 1,)`` float32 bin edges from ``v_min`` to ``v_max``."""
        return np.linspace(self.v_min, self.v_max, self.num_bins + 1, dtype=np.float32)

    @property
    def centers(self) -> np.ndarray:
        """``(N,)`` float32 bin centers."""
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    def clamp(self, target: jax.Array) -> jax.Array:
        """The target clamped into ``[v_min, v_max]``."""
        return jnp.clip(target, self.v_min, self.v_max)

    def to_probs(self, target: jax.Array) -> jax.Array:
        """Target ``(B, 1)`` or ``(B,)`` -> ``(B, N)`` probabilities (each row sums to 1).

        The target is clamped into the range; bin ``i`` gets the mass of ``N(target, sigma^2)`` between
        its edges, renormalised by the mass inside the range.
        """
        y = self.clamp(jnp.reshape(target, (-1, 1)).astype(jnp.float32))
        cdf = jax.scipy.special.erf((jnp.asarray(self.edges) - y) / (np.sqrt(2.0) * self.sigma))  # (B, N + 1)
        mass = cdf[:, 1:] - cdf[:, :-1]
        return mass / (cdf[:, -1:] - cdf[:, :1])

    def to_value(self, logits: jax.Array) -> jax.Array:
        """Logits ``(B, N)`` -> the expected value ``(B, 1)`` of ``softmax(logits)`` over the centers."""
        return (jax.nn.softmax(logits, axis=-1) @ jnp.asarray(self.centers))[..., None]

    def cross_entropy(self, logits: jax.Array, target: jax.Array) -> jax.Array:
        """Per-row cross-entropy ``(B,)`` of ``softmax(logits)`` against ``to_probs(target)`` (no gradient
        flows into the target)."""
        probs = jax.lax.stop_gradient(self.to_probs(target))
        return -jnp.sum(probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)


class HLGaussQNet(nn.Module):
    """An HL-Gauss action-value network on ``concat(obs, action)``.

    ``__call__(obs (B, obs_dim), action (B, A)) -> Q (B, 1)``, the expectation over the bins, so it drops
    in wherever a :class:`~emote_jax.networks.sac.QNet` is called (the SAC target, the policy loss);
    :meth:`logits` ``-> (B, N)`` is what :class:`HLGaussQLoss` trains. Trunk as ``QNet`` (ReLU,
    orthogonal sqrt(2)); the head starts near zero (gain 0.01), i.e. a near-uniform histogram.
    """

    support: HLGaussSupport
    hidden_dims: Sequence[int] = (256, 256)

    def setup(self) -> None:
        self.trunk = MLP(self.hidden_dims)
        self.head = _dense(self.support.num_bins, 0.01)

    def logits(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.head(self.trunk(jnp.concatenate([obs, action], axis=-1)))

    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        return self.support.to_value(self.logits(obs, action))


def hl_gauss_q_loss(q: HLGaussQNet, params: PyTree, obs: jax.Array, actions: jax.Array, target: jax.Array,
                    weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of ``q``'s histogram at ``(obs (B*T, obs_dim), actions (B*T, A))`` against the
    HL-Gauss histogram of the clamped ``target (B*T, 1)``; aux: the predicted Q's mean.

    With ``weights (B,)`` (prioritized replay, one per rollout window) each row's cross-entropy is weighted
    by its window's weight, and aux also has ``td_error (B,)``: each window's mean ``|Q - clamped target|``.
    """
    logits = q.apply(params, obs, actions, method="logits")  # an HLGaussQNet, or one behind an encoder
    target = jax.lax.stop_gradient(target)
    ce = q.support.cross_entropy(logits, target)[:, None]  # (B*T, 1)
    value = q.support.to_value(logits)
    if weights is None:
        return jnp.mean(ce), {"q_mean": value.mean()}
    loss = jnp.mean(window_weights(weights, ce.shape[0]) * ce)
    return loss, {"q_mean": value.mean(), "td_error": window_td_error(value, q.support.clamp(target), weights.shape[0])}
