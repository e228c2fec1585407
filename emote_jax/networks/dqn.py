"""DQN's network: a Q network over discrete actions, its greedy policy, and the policy's NumPy mirror.

``QNetwork``: obs (B, obs_dim) -> Q values (B, n_actions), a ReLU MLP trunk (the reference's init:
orthogonal kernels with gain sqrt(2), zero biases) and a linear head with gain 1. The greedy action is
``argmax_a Q(obs, a)`` (:func:`greedy_action`); :class:`GreedyHostPolicy` computes the same with NumPy on
a host copy of the parameters (tests/test_dqn.py checks the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from emote_jax.networks.host import HostPolicy, host_dense
from emote_jax.networks.sac import MLP

if TYPE_CHECKING:  # (emote_jax.algorithms imports this module)
    from emote_jax.algorithms.hl_gauss import HLGaussSupport


class QNetwork(nn.Module):
    """Q values of every discrete action: obs (B, obs_dim) -> (B, n_actions)."""

    n_actions: int
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        head = nn.Dense(self.n_actions, kernel_init=nn.initializers.orthogonal(1.0), bias_init=nn.initializers.zeros,
                        name="head")
        return head(MLP(self.hidden_dims)(obs))


class HLGaussQNetwork(nn.Module):
    """An HL-Gauss Q network over discrete actions: a histogram over ``support``'s bins per action.

    ``__call__(obs (B, obs_dim)) -> Q (B, n_actions)``, each the expectation of its histogram, so it drops in
    wherever a :class:`QNetwork` is called (the target, the greedy policy); :meth:`logits` ``-> (B,
    n_actions, N)`` is what the HL-Gauss loss trains. Trunk as :class:`QNetwork`; the head (one ``Dense`` of
    ``n_actions * N`` units, gain 0.01) starts near uniform histograms.
    """

    n_actions: int
    support: "HLGaussSupport"
    hidden_dims: Sequence[int] = (256, 256)

    @nn.compact
    def logits(self, obs: jax.Array) -> jax.Array:
        n = self.support.num_bins
        head = nn.Dense(self.n_actions * n, kernel_init=nn.initializers.orthogonal(0.01),
                        bias_init=nn.initializers.zeros, name="head")
        return head(MLP(self.hidden_dims)(obs)).reshape(obs.shape[0], self.n_actions, n)

    def __call__(self, obs: jax.Array) -> jax.Array:
        probs = jax.nn.softmax(self.logits(obs), axis=-1)
        return probs @ jnp.asarray(self.support.centers)


def greedy_action(q_values: jax.Array) -> jax.Array:
    """``argmax_a Q``: (B, n_actions) -> (B,) int32 (the first of tied actions)."""
    return jnp.argmax(q_values, axis=-1)


def greedy_policy(q_net: QNetwork) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """``(params, obs (N, obs_dim), key) -> actions (N,)``: the greedy (evaluation) policy; ``key`` unused."""

    def act(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        del key
        return greedy_action(q_net.apply(params, obs))

    return act


class GreedyHostPolicy(HostPolicy):
    """NumPy forward pass of a :class:`QNetwork` and its argmax: actions (N,) int64.

    Exploration (epsilon-greedy) is the collector's
    (:class:`~emote_jax.collectors.actions.DiscreteActions`), not the policy's: ``act`` draws nothing.
    """

    def __init__(self, q_net: QNetwork | HLGaussQNetwork):
        if not isinstance(q_net, (QNetwork, HLGaussQNetwork)):
            raise TypeError("GreedyHostPolicy mirrors emote_jax.networks.dqn.QNetwork or HLGaussQNetwork, got "
                            f"{type(q_net).__name__}")
        self.hidden_dims = tuple(int(h) for h in q_net.hidden_dims)
        self.n_actions = int(q_net.n_actions)
        # HL-Gauss: the head has n_actions * N units, Q the expectation of each action's histogram
        self.centers = q_net.support.centers.astype(np.float32) if isinstance(q_net, HLGaussQNetwork) else None
        self.head_units = self.n_actions * (1 if self.centers is None else len(self.centers))

    def to_host(self, params: Any) -> dict[str, Any]:
        """``{"layers": [(W (in, h), b (h,)), ...], "head": (W (h, n_actions), b)}`` as float32 arrays."""
        p = params.get("params", params) if isinstance(params, dict) else params
        where = "GreedyHostPolicy.to_host"
        try:
            layers = [host_dense(p["MLP_0"][f"Dense_{i}"], h, where, f"MLP_0/Dense_{i}")
                      for i, h in enumerate(self.hidden_dims)]
            head = host_dense(p["head"], self.head_units, where, "head")
        except (KeyError, TypeError) as e:
            keys = sorted(p) if isinstance(p, dict) else type(p).__name__
            raise ValueError(f"{where}: expected QNetwork parameters (MLP_0/Dense_0..{len(self.hidden_dims) - 1}, "
                             f"head), got {keys}: missing {e}") from None
        return {"layers": layers, "head": head}

    def q_values(self, host_params: dict[str, Any], obs: Any) -> np.ndarray:
        """Q values (N, n_actions) float32 of observations (N, obs_dim)."""
        x = np.asarray(obs, np.float32)
        n_in = host_params["layers"][0][0].shape[0] if host_params["layers"] else host_params["head"][0].shape[0]
        if x.ndim != 2 or x.shape[1] != n_in:
            raise ValueError(f"GreedyHostPolicy.act: expected observations (N, {n_in}), got shape {x.shape}")
        for w, b in host_params["layers"]:
            x = np.maximum(x @ w + b, 0.0)
        w, b = host_params["head"]
        out = x @ w + b
        if self.centers is None:
            return out
        logits = out.reshape(out.shape[0], self.n_actions, len(self.centers))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ self.centers

    def act(self, host_params: dict[str, Any], obs: Any, rng: np.random.Generator) -> np.ndarray:
        del rng
        return np.argmax(self.q_values(host_params, obs), axis=-1).astype(np.int64)
