"""Soft Actor-Critic as the reference defines it: QLoss (x2), QTarget, PolicyLoss, AlphaLoss.

Batch layout (``ctx.batch[data_group]``), for ``B`` rollouts of length ``T``, rows rollout-major::

    observation:      {obs_key: (B*T, obs_dim)}
    next_observation: {obs_key: (B, obs_dim)}      the observation after each rollout's last step
    actions:          (B*T, A)                     in [-1, 1], as the policy emitted them
    rewards:          (B*T, 1)
    masks:            (B, 1)                       0 iff the rollout ends in a true termination

Within one step every ``begin_batch`` runs first (QTarget writes ``q_target`` (B*T, 1) into the batch),
then the backward passes in list order (Q1, Q2, policy, alpha): the policy is updated against the
already updated Q1/Q2, and alpha sees the updated policy. QTarget's ``end_batch`` Polyak-updates the
target networks after every batch.

The bootstrap is masked by true termination only: time-limit truncation keeps it (the reference
treats truncation as termination; that is a bug we do not reproduce).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emote_jax.algorithms.hl_gauss import HLGaussQNet, HLGaussSupport, hl_gauss_q_loss
from emote_jax.algorithms.importance import weighted_mse
from emote_jax.algorithms.nstep import discount, gamma_matrix  # noqa: F401  (gamma_matrix: its old home)
from emote_jax.callback import Callback
from emote_jax.context import Context, PyTree
from emote_jax.loss import LossCallback
from emote_jax.networks.encoders import EncodedPolicy, ObsSpec, encoded_sac_networks, example_obs
from emote_jax.networks.sac import GaussianPolicy, QNet, sample_action

Schedule = Callable[[jax.Array], jax.Array]


def _obs(batch: PyTree, key: str, obs_key: str | None) -> jax.Array | dict[str, jax.Array]:
    """``batch[key][obs_key]``; ``obs_key=None``: the whole observation dict (Dict observations)."""
    return batch[key] if obs_key is None else batch[key][obs_key]


def _rows(obs: jax.Array | dict[str, jax.Array]) -> int:
    """The leading (batch) size of an observation array or dict."""
    return jax.tree.leaves(obs)[0].shape[0]


def _ln_alpha(ctx: Context, alpha_name: str) -> jax.Array:
    return ctx.slot(alpha_name)["params"]["ln_alpha"]


class QLoss(LossCallback):
    """Mean squared error of ``Q(obs, a)`` against ``q_target`` written by :class:`QTarget`; with ``weights``
    in the batch (prioritized replay) importance-weighted, and it reports the per-window ``td_error``."""

    def __init__(self, *, name: str, q: Any, params: PyTree, lr: float = 3e-4, obs_key: str | None = "obs", **kw: Any):
        super().__init__(name=name, network=q, params=params, lr=lr, **kw)
        self.obs_key = obs_key

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch = ctx.batch[self.data_group]
        q = self.network.apply(params, _obs(batch, "observation", self.obs_key), batch["actions"])
        target = jax.lax.stop_gradient(batch["q_target"])
        if "weights" in batch:  # prioritized replay: importance weights in, per-window |TD errors| out
            loss, td_error = weighted_mse(q, target, batch["weights"])
            return loss, {"q_mean": q.mean(), "td_error": td_error}
        return jnp.mean((q - target) ** 2), {"q_mean": q.mean()}


class HLGaussQLoss(QLoss):
    """Cross-entropy of an :class:`~emote_jax.algorithms.hl_gauss.HLGaussQNet`'s histogram against the
    HL-Gauss histogram of the clamped ``q_target`` (the reference's ``emote.algorithms.hlgauss.QLoss``)."""

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch = ctx.batch[self.data_group]
        return hl_gauss_q_loss(self.network, params, _obs(batch, "observation", self.obs_key), batch["actions"],
                               batch["q_target"], batch.get("weights"))


class QTarget(Callback):
    """Computes the twin-min soft target in ``begin_batch`` and Polyak-updates the target nets in ``end_batch``.

    ``V = min(Q1_t, Q2_t)(next_obs, a') - alpha * logp'`` with ``(a', logp')`` sampled from the policy at
    the next observation; target = n-step discounted ``reward_scale * rewards`` + ``gamma^k * mask * V``.
    The slot holds ``{"target_params": (q1_target, q2_target), "hparams": {"gamma", "tau", "reward_scale"}}``;
    changing an hparam does not recompile (the rollout length is static, read from the batch shapes).
    """

    state_categories = {"target_params": "network", "hparams": "hparams"}

    def __init__(
        self,
        *,
        q: Any,
        policy: Any,
        q1: str = "q1",
        q2: str = "q2",
        policy_loss: str = "policy",
        alpha: str = "alpha",
        gamma: float = 0.99,
        tau: float = 0.005,
        reward_scale: float = 1.0,
        obs_key: str | None = "obs",
        data_group: str = "default",
        name: str = "q_target",
        order: int = 1,
    ):
        super().__init__(name=name, order=order)
        self.q, self.policy = q, policy
        self.q1, self.q2, self.policy_name, self.alpha_name = q1, q2, policy_loss, alpha
        self.hparams = {"gamma": float(gamma), "tau": float(tau), "reward_scale": float(reward_scale)}
        self.obs_key, self.data_group = obs_key, data_group
        self._init_targets: tuple[PyTree, PyTree] | None = None

    def init_targets(self, q1_params: PyTree, q2_params: PyTree) -> None:
        """Start the targets as copies of the online Q parameters (called by :func:`make_sac_callbacks`)."""
        self._init_targets = (q1_params, q2_params)

    def init_state(self, key: jax.Array) -> PyTree:
        if self._init_targets is None:
            raise ValueError(f"{self.name}: call init_targets(q1_params, q2_params) before training")
        targets = jax.tree.map(jnp.array, self._init_targets)  # copies, never aliases of the online params
        return {
            "target_params": targets,
            "hparams": {k: jnp.asarray(v, jnp.float32) for k, v in self.hparams.items()},
        }

    def begin_batch(self, ctx: Context) -> Context:
        slot = ctx.slot(self.name)
        hp = slot["hparams"]
        batch = ctx.batch[self.data_group]
        next_obs = _obs(batch, "next_observation", self.obs_key)
        n_rollouts = _rows(next_obs)
        rows = _rows(_obs(batch, "observation", self.obs_key))
        if rows % n_rollouts:
            raise ValueError(
                f"{self.name}: batch has {rows} observation rows for {n_rollouts} next observations; expected "
                "B rollouts of length T: observation (B*T, ...), next_observation (B, ...)"
            )
        t = rows // n_rollouts
        chex.assert_shape(batch["rewards"], (rows, 1), custom_message=f"{self.name}: rewards must be (B*T, 1)")
        chex.assert_shape(batch["masks"], (n_rollouts, 1), custom_message=f"{self.name}: masks must be (B, 1)")
        rewards = batch["rewards"].reshape(n_rollouts, t)  # (B, T)
        ctx, key = ctx.split_key()
        mean, std = self.policy.apply(ctx.slot(self.policy_name)["params"], next_obs)
        next_action, next_logp = sample_action(mean, std, key)
        q1_t, q2_t = slot["target_params"]
        q_next = jnp.minimum(self.q.apply(q1_t, next_obs, next_action), self.q.apply(q2_t, next_obs, next_action))
        alpha = jnp.exp(_ln_alpha(ctx, self.alpha_name))
        v_next = (q_next - alpha * next_logp) * batch["masks"]  # (B, 1): true terminations only
        scaled = rewards * hp["reward_scale"]
        returns = discount(scaled, v_next, hp["gamma"])  # (B, T), n-step
        q_target = jax.lax.stop_gradient(returns.reshape(-1, 1))
        new_batch = {**ctx.batch, self.data_group: {**batch, "q_target": q_target}}
        return ctx.replace(batch=new_batch).log(**{
            f"{self.name}/q_target_mean": q_target.mean(), f"{self.name}/reward_mean": batch["rewards"].mean(),
            f"{self.name}/scaled_reward_mean": scaled.mean(), f"{self.name}/min_next_q_mean": q_next.mean(),
            f"{self.name}/next_logp_mean": next_logp.mean()})

    def end_batch(self, ctx: Context) -> Context:
        slot = ctx.slot(self.name)
        online = (ctx.slot(self.q1)["params"], ctx.slot(self.q2)["params"])
        targets = optax.incremental_update(online, slot["target_params"], slot["hparams"]["tau"])
        return ctx.with_slot(self.name, {**slot, "target_params": targets})


class PolicyLoss(LossCallback):
    """``mean(alpha * logp - min(Q1, Q2)(obs, a~pi))``, or with ``q2=None`` ``Q1`` alone (the reference's
    default); alpha is not differentiated."""

    def __init__(
        self,
        *,
        policy: Any,
        q: Any,
        params: PyTree,
        q1: str = "q1",
        q2: str | None = "q2",
        alpha: str = "alpha",
        lr: float = 3e-4,
        obs_key: str | None = "obs",
        name: str = "policy",
        **kw: Any,
    ):
        super().__init__(name=name, network=policy, params=params, lr=lr, **kw)
        self.q, self.q1, self.q2, self.alpha_name, self.obs_key = q, q1, q2, alpha, obs_key

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        obs = _obs(ctx.batch[self.data_group], "observation", self.obs_key)
        mean, std = self.network.apply(params, obs)
        action, logp = sample_action(mean, std, ctx.key)
        q = self.q.apply(ctx.slot(self.q1)["params"], obs, action)
        if self.q2 is not None:
            q = jnp.minimum(q, self.q.apply(ctx.slot(self.q2)["params"], obs, action))
        alpha = jax.lax.stop_gradient(jnp.exp(_ln_alpha(ctx, self.alpha_name)))
        return jnp.mean(alpha * logp - q), {"logp_mean": logp.mean(), "q_pi_mean": q.mean(), "std_mean": std.mean()}


class AlphaLoss(LossCallback):
    """``mean(ln_alpha * (-logp - target_entropy))``.

    ``logp_source`` says where ``logp`` comes from:

    * ``"updated"`` (the default here, the reference's): a sample of the updated policy at the batch's
      observations, one more policy forward pass per step. The sample is drawn with the step's key,
      which :class:`PolicyLoss` also uses: the same noise ``eps`` pushed through the updated parameters.
      The reference draws independent noise for the two; both give unbiased estimates, and sharing it
      saves a PRNG call per step.
    * ``"policy"`` (SB3's, sbx's, and :class:`SACHParams`'s default): the policy loss's own sample,
      before its update, read from the ``{policy_loss}/logp_mean`` metric it logs in the same step
      (so :class:`PolicyLoss` must come first in the callback list). No forward pass of its own: about
      1/17 of an update's matrix products (docs/decisions/0015).

    After each step ``ln_alpha`` is clamped so that ``alpha <= max_alpha``; the first step uses
    ``initial_alpha`` as given (the reference's ``ln_alpha``, clamped in ``end_batch``), so an
    ``initial_alpha`` above ``max_alpha`` weighs the entropy of step 1 only. The slot's params are
    ``{"ln_alpha": ()}``; ``target_entropy`` (default ``-n_actions``) is a hyperparameter in the slot,
    or a schedule ``count -> value`` over this loss's optimizer steps.
    """

    state_categories = {"params": "network", "opt_state": "optimizer", "extra": "hparams"}

    def __init__(
        self,
        *,
        policy: Any,
        n_actions: int,
        policy_loss: str = "policy",
        initial_alpha: float = 1.0,
        max_alpha: float = 0.2,
        target_entropy: float | Schedule | None = None,
        lr: float = 3e-4,
        obs_key: str | None = "obs",
        name: str = "alpha",
        logp_source: str = "updated",
        **kw: Any,
    ):
        if logp_source not in LOGP_SOURCES:
            raise ValueError(f"{name}: logp_source: expected one of {LOGP_SOURCES}, got {logp_source!r}")
        self.logp_source = logp_source
        ln_alpha = jnp.asarray(np.log(initial_alpha), jnp.float32)  # clamped after each step, as the reference
        super().__init__(name=name, params={"ln_alpha": ln_alpha}, lr=lr, **kw)
        self.policy, self.policy_name, self.obs_key = policy, policy_loss, obs_key
        self.target_entropy = -float(n_actions) if target_entropy is None else target_entropy
        self.max_alpha = float(max_alpha)

    def init_state(self, key: jax.Array) -> PyTree:
        slot = super().init_state(key)
        fixed = 0.0 if callable(self.target_entropy) else float(self.target_entropy)
        slot["extra"] = {"target_entropy": jnp.asarray(fixed, jnp.float32),
                         "max_ln_alpha": jnp.asarray(np.log(self.max_alpha), jnp.float32)}
        return slot

    def state_dict(self, slot: PyTree) -> dict[str, Any]:
        sd = super().state_dict(slot)
        sd["hparams"] = {**sd["hparams"], **slot["extra"]}
        return sd

    def load_state_dict(self, slot, state_dict, load_network=True, load_optimizer=True, load_hparams=True):
        hp = dict(state_dict["hparams"])
        extra = {k: hp.pop(k) for k in list(hp) if k in slot["extra"]}
        new = super().load_state_dict(slot, {**state_dict, "hparams": hp}, load_network, load_optimizer, load_hparams)
        new["extra"] = {**slot["extra"], **extra} if load_hparams else slot["extra"]
        return new

    def _target_entropy(self, ctx: Context) -> jax.Array:
        slot = ctx.slot(self.name)
        if callable(self.target_entropy):
            return jnp.asarray(self.target_entropy(slot["opt_state"].count), jnp.float32)
        return slot["extra"]["target_entropy"]

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        target_entropy = self._target_entropy(ctx)
        if self.logp_source == "policy":
            logp_mean = jax.lax.stop_gradient(self._policy_logp_mean(ctx))
            loss = params["ln_alpha"] * (-logp_mean - target_entropy)  # the mean over the batch, factored out
        else:
            obs = _obs(ctx.batch[self.data_group], "observation", self.obs_key)
            mean, std = self.policy.apply(ctx.slot(self.policy_name)["params"], obs)
            _, logp = sample_action(mean, std, ctx.key)
            logp = jax.lax.stop_gradient(logp)
            logp_mean = jnp.mean(logp)
            loss = jnp.mean(params["ln_alpha"] * (-logp - target_entropy))
        return loss, {"alpha": jnp.exp(params["ln_alpha"]), "target_entropy": target_entropy,
                      "entropy": -logp_mean}

    def _policy_logp_mean(self, ctx: Context) -> jax.Array:
        name = f"{self.policy_name}/logp_mean"
        if name not in ctx.metrics:
            raise ValueError(
                f"{self.name}: logp_source='policy' reads the {name!r} metric that PolicyLoss {self.policy_name!r} "
                f"logs, but it is not among this step's metrics so far ({sorted(ctx.metrics)}): put the policy "
                "loss before this callback, or use logp_source='updated'")
        return ctx.metrics[name]

    def backward(self, ctx: Context) -> Context:
        ctx = super().backward(ctx)
        slot = ctx.slot(self.name)
        ln_alpha = jnp.minimum(slot["params"]["ln_alpha"], slot["extra"]["max_ln_alpha"])
        ctx = ctx.log(**{f"{self.name}/alpha_clamped": jnp.exp(ln_alpha)})  # the reference's training/alpha_value
        return ctx.with_slot(self.name, {**slot, "params": {"ln_alpha": ln_alpha}})


#: Where :class:`AlphaLoss` takes its ``logp`` from: the policy loss's sample, or a fresh sample of the updated policy.
LOGP_SOURCES = ("policy", "updated")


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
    if dict_obs:  # per-key encoders in front of the trunks; the losses take the observation dict
        policy_net, q_net = encoded_sac_networks(obs_dim, policy_net, q_net)
        obs_key = None
    k1, k2, k3 = jax.random.split(key, 3)
    obs0, act0 = example_obs(obs_dim), jnp.zeros((1, n_actions))
    q1_params, q2_params = q_net.init(k1, obs0, act0), q_net.init(k2, obs0, act0)
    policy_params = policy_net.init(k3, obs0)
    common = dict(obs_key=obs_key, data_group=data_group, max_grad_norm=hp.max_grad_norm)
    q_target = QTarget(q=q_net, policy=policy_net, gamma=hp.gamma, tau=hp.tau, reward_scale=hp.reward_scale,
                       obs_key=obs_key, data_group=data_group)
    q_target.init_targets(q1_params, q2_params)
    callbacks: list[Callback] = [
        q_loss(name="q1", q=q_net, params=q1_params, lr=hp.lr_q, **common),
        q_loss(name="q2", q=q_net, params=q2_params, lr=hp.lr_q, **common),
        PolicyLoss(policy=policy_net, q=q_net, params=policy_params, lr=hp.lr_policy,
                   q2=None if hp.policy_q == "q1" else "q2", **common),
        AlphaLoss(policy=policy_net, n_actions=n_actions, initial_alpha=hp.initial_alpha, max_alpha=hp.max_alpha,
                  target_entropy=hp.target_entropy, lr=hp.lr_alpha, logp_source=hp.alpha_logp, **common),
        q_target,
    ]
    return callbacks, policy_net
