"""SAC's callbacks as the reference defines them: QLoss (x2), QTarget, PolicyLoss, AlphaLoss.

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

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from emote_jax.algorithms.hl_gauss import hl_gauss_q_loss
from emote_jax.algorithms.importance import weighted_mse
from emote_jax.algorithms.nstep import discount
from emote_jax.callback import Callback
from emote_jax.context import Context, PyTree
from emote_jax.loss import LossCallback
from emote_jax.networks.encoders import encoder_params, with_encoder
from emote_jax.networks.sac import sample_action

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
    in the batch (prioritized replay) importance-weighted, and it reports the per-window ``td_error``.

    ``shares_encoder_with``: the names of Q losses whose networks share this one's encoder (an
    :class:`~emote_jax.networks.encoders.EncodedQ`; the reference's ``SharedEncoderActionValueNet``).
    This loss differentiates its whole parameters, encoder included, with its own optimizer state (as
    the reference's optimizer over ``q1.parameters()`` holds the shared encoder's), then writes the updated
    encoder into those losses' parameters, so the next of them trains from it. The encoder starts equal
    in all of them (:func:`make_sac_callbacks` copies Q1's into Q2).
    """

    def __init__(self, *, name: str, q: Any, params: PyTree, lr: float = 3e-4, obs_key: str | None = "obs",
                 shares_encoder_with: tuple[str, ...] = (), **kw: Any):
        super().__init__(name=name, network=q, params=params, lr=lr, **kw)
        self.obs_key = obs_key
        self.shares_encoder_with = tuple(shares_encoder_with)
        if self.shares_encoder_with:
            encoder_params(params)  # a ValueError now if the network has no encoder to share
            if name in self.shares_encoder_with:
                raise ValueError(f"{name}: shares_encoder_with names the loss itself; give the other Q losses' names")

    def backward(self, ctx: Context) -> Context:
        ctx = super().backward(ctx)
        if self.shares_encoder_with:
            encoder = encoder_params(ctx.slot(self.name)["params"])
            for peer in self.shares_encoder_with:
                slot = ctx.slot(peer)
                ctx = ctx.with_slot(peer, {**slot, "params": with_encoder(slot["params"], encoder)})
        return ctx

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
