"""Soft Actor-Critic: :class:`SACHParams` (its hyperparameters in one place) and :func:`make_sac_callbacks`
(the callback list ``[q1, q2, policy, alpha, q_target]`` built from them).

The callbacks themselves are in :mod:`emote_jax.algorithms.sac_losses` (the batch layout is there too) and
are importable from here as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from emote_jax.algorithms.hl_gauss import HLGaussQNet, HLGaussSupport
from emote_jax.algorithms.nstep import gamma_matrix  # noqa: F401  (its old home)
from emote_jax.algorithms.sac_losses import (LOGP_SOURCES, AlphaLoss, HLGaussQLoss, PolicyLoss, QLoss, QTarget,
                                             Schedule)
from emote_jax.callback import Callback
from emote_jax.networks.encoders import EncodedPolicy, ObsSpec, encoded_sac_networks, encoder_params, example_obs, with_encoder
from emote_jax.networks.sac import GaussianPolicy, QNet

__all__ = ["LOGP_SOURCES", "AlphaLoss", "HLGaussQLoss", "PolicyLoss", "QLoss", "QTarget", "SACHParams", "gamma_matrix",
           "make_sac_callbacks"]


@dataclass(frozen=True)
class SACHParams:
    """SAC's hyperparameters, in one place: what :func:`make_sac_callbacks` builds the callbacks from, and
    where ``SACConfig`` (the ``emote-jax train`` settings) takes its SAC defaults from.

    ``target_entropy`` None means ``-n_actions``; a callable is a schedule of the backprop step.
    """

    hidden_dims: tuple[int, ...] = (256, 256)
    q_hidden_dims: tuple[int, ...] | None = None  # None: hidden_dims
    lr_q: float = 3e-4
    lr_policy: float = 3e-4
    lr_alpha: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    reward_scale: float = 1.0
    initial_alpha: float = 1.0
    max_alpha: float = 0.2
    target_entropy: float | Schedule | None = None
    # no clipping (inf) by default: on HalfCheetah-v5 the critics' gradient norm sits at 60-530 and the
    # reference's clip at 10 (--preset emote; LossCallback's default) held learning back (docs/decisions/0013)
    max_grad_norm: float = math.inf
    # the Q of the policy loss: "min" = min(Q1, Q2) (SAC's paper, sbx, SB3), "q1" = Q1 only (the reference's default)
    policy_q: str = "min"
    # alpha's logp: "updated" = a sample of the updated policy (the reference's; the default: with
    # "policy" HalfCheetah seed 1 stalled at ~1,700, docs/decisions/0015), "policy" = the policy loss's
    # sample (SB3, sbx; one policy forward pass fewer)
    alpha_logp: str = "updated"
    # the policy head's kernels: "orthogonal" (gain 0.01) or "xavier" (xavier-uniform gain 0.01, the reference's)
    policy_head_init: str = "orthogonal"
    # the critics: "mse" (the reference's SAC) or "hl-gauss" (HLGaussQNet over num_bins bins on [v_min, v_max])
    critic: str = "mse"
    num_bins: int = 101
    v_min: float | None = None
    v_max: float | None = None
    hl_sigma_ratio: float = 0.75
    # Dict observations: the vector keys' MLP encoder (() = the identity: the vectors as they are)
    encoder_dims: tuple[int, ...] = ()
    # Dict observations: Q1 and Q2 share one encoder (the reference's SharedEncoderActionValueNet), each
    # critic's update moving it in turn; the policy keeps its own. Needs encoder parameters: an image
    # key, or encoder_dims (docs/decisions/0016)
    shared_encoder: bool = False

    def q_network(self) -> QNet | HLGaussQNet:
        """The critics' network: a :class:`QNet`, or with ``critic="hl-gauss"`` an :class:`HLGaussQNet`."""
        dims = tuple(self.q_hidden_dims or self.hidden_dims)
        if self.critic == "mse":
            return QNet(dims)
        if self.critic == "hl-gauss":
            if self.v_min is None or self.v_max is None:
                raise ValueError(f"critic='hl-gauss' needs v_min and v_max (the range of Q values), got "
                                 f"v_min={self.v_min}, v_max={self.v_max}")
            return HLGaussQNet(HLGaussSupport(self.v_min, self.v_max, self.num_bins, self.hl_sigma_ratio), dims)
        raise ValueError(f"critic: expected 'mse' or 'hl-gauss', got {self.critic!r}")


def make_sac_callbacks(
    *,
    obs_dim: int | ObsSpec,
    n_actions: int,
    key: jax.Array,
    hp: SACHParams | None = None,
    obs_key: str | None = "obs",
    data_group: str = "default",
    **hparams: Any,
) -> tuple[list[Callback], GaussianPolicy | EncodedPolicy]:
    """The standard SAC callback list ``[q1, q2, policy, alpha, q_target]`` and the policy network.

    Hyperparameters come from ``hp`` (default :class:`SACHParams()`), with any of its fields overridden by
    keyword (``make_sac_callbacks(..., hidden_dims=(64, 64), gamma=0.9)``).
    Networks are the reference's (:mod:`emote_jax.networks.sac`); parameters are initialised from ``key``.
    Slot names: "q1", "q2", "policy", "alpha", "q_target".

    ``obs_dim`` an :data:`~emote_jax.networks.encoders.ObsSpec` (``{key: (shape, dtype)}``): Dict
    observations; the networks get per-key encoders in front of their trunks
    (:func:`~emote_jax.networks.encoders.encoded_sac_networks`) and take the whole observation dict.
    """
    unknown = sorted(set(hparams) - {f.name for f in dataclasses.fields(SACHParams)})
    if unknown:
        raise TypeError(f"make_sac_callbacks got unexpected keyword(s) {unknown}; expected SACHParams fields "
                        f"{[f.name for f in dataclasses.fields(SACHParams)]}, obs_key or data_group")
    hp = dataclasses.replace(hp or SACHParams(), **hparams)
    dict_obs = isinstance(obs_dim, Mapping)
    if (not dict_obs and obs_dim < 1) or n_actions < 1:
        raise ValueError(f"obs_dim and n_actions must be >= 1, got {obs_dim} and {n_actions}")
    if hp.policy_q not in ("min", "q1"):
        raise ValueError(f"policy_q: expected 'min' (min(Q1, Q2)) or 'q1' (Q1 only), got {hp.policy_q!r}")
    if hp.alpha_logp not in LOGP_SOURCES:
        raise ValueError(f"alpha_logp: expected 'policy' (the policy loss's sample) or 'updated' (a sample of "
                         f"the updated policy), got {hp.alpha_logp!r}")
    q_net = hp.q_network()
    q_loss = HLGaussQLoss if hp.critic == "hl-gauss" else QLoss
    policy_net = GaussianPolicy(n_actions, tuple(hp.hidden_dims), hp.policy_head_init)
    if not dict_obs and (hp.encoder_dims or hp.shared_encoder):
        raise ValueError(f"encoder_dims={tuple(hp.encoder_dims)} and shared_encoder={hp.shared_encoder} apply to Dict "
                         f"observations (their per-key encoders); this observation is a flat vector of {obs_dim}: "
                         "leave them at () and False")
    if dict_obs:  # per-key encoders in front of the trunks; the losses take the observation dict
        policy_net, q_net = encoded_sac_networks(obs_dim, policy_net, q_net, tuple(hp.encoder_dims))
        obs_key = None
        if hp.shared_encoder and not q_net.encoder.has_params:
            raise ValueError("shared_encoder=True: the critics' encoder has no parameters to share (vector keys are "
                             "passed through as they are); add an image key, or give the vector keys an MLP "
                             "encoder with encoder_dims (--encoder-dims 64)")
    k1, k2, k3 = jax.random.split(key, 3)
    obs0, act0 = example_obs(obs_dim), jnp.zeros((1, n_actions))
    q1_params, q2_params = q_net.init(k1, obs0, act0), q_net.init(k2, obs0, act0)
    if hp.shared_encoder:  # one encoder: Q2 starts from Q1's (a copy: two slots never alias one buffer)
        q2_params = with_encoder(q2_params, jax.tree.map(jnp.array, encoder_params(q1_params)))
    policy_params = policy_net.init(k3, obs0)
    common = dict(obs_key=obs_key, data_group=data_group, max_grad_norm=hp.max_grad_norm)
    q_target = QTarget(q=q_net, policy=policy_net, gamma=hp.gamma, tau=hp.tau, reward_scale=hp.reward_scale,
                       obs_key=obs_key, data_group=data_group)
    q_target.init_targets(q1_params, q2_params)
    callbacks: list[Callback] = [
        q_loss(name="q1", q=q_net, params=q1_params, lr=hp.lr_q, shares_encoder_with=("q2",) if hp.shared_encoder else (),
               **common),
        q_loss(name="q2", q=q_net, params=q2_params, lr=hp.lr_q, shares_encoder_with=("q1",) if hp.shared_encoder else (),
               **common),
        PolicyLoss(policy=policy_net, q=q_net, params=policy_params, lr=hp.lr_policy,
                   q2=None if hp.policy_q == "q1" else "q2", **common),
        AlphaLoss(policy=policy_net, n_actions=n_actions, initial_alpha=hp.initial_alpha, max_alpha=hp.max_alpha,
                  target_entropy=hp.target_entropy, lr=hp.lr_alpha, logp_source=hp.alpha_logp, **common),
        q_target,
    ]
    return callbacks, policy_net
