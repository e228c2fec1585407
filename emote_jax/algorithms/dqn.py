"""DQN as the reference defines it (``emote/algorithms/dqn.py``): QTarget and QLoss, plus double DQN,
a hard target copy every N steps, and the Huber loss.

Batch layout (``ctx.batch[data_group]``), for ``B`` rollouts of length ``T``, rows rollout-major::

    observation:      {obs_key: (B*T, obs_dim)}
    next_observation: {obs_key: (B, obs_dim)}      the observation after each rollout's last step
    actions:          (B*T,) int                   action indices (stored as int64, int32 on the device)
    rewards:          (B*T, 1)
    masks:            (B, 1)                       0 iff the rollout ends in a true termination
    weights:          (B*T,) or (B*T, 1), optional importance weights (prioritized replay)

:class:`QTarget` writes ``q_target`` (B*T, 1) into the batch in ``begin_batch``: the n-step discounted
``reward_scale * rewards`` plus ``gamma^k * mask * V(next_obs)`` (:func:`emote_jax.algorithms.nstep.discount`),
with ``V = max_a Q_target(next_obs, a)``, or with double DQN ``Q_target(next_obs, argmax_a Q(next_obs, a))``.
The bootstrap is masked by true termination only, never by a time-limit truncation (docs/decisions/0002).
Every ``target_update_interval`` backprop steps its ``end_cycle`` (inside the compiled step) sets
``target <- (1 - tau) * target + tau * online``: ``tau = 1`` is a hard copy, ``interval = 1`` with a
small ``tau`` the reference's Polyak update after every batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from emote_jax.algorithms.hl_gauss import HLGaussSupport
from emote_jax.algorithms.importance import window_td_error, window_weights
from emote_jax.algorithms.nstep import discount
from emote_jax.callback import Callback
from emote_jax.context import Context, PyTree
from emote_jax.loss import LossCallback
from emote_jax.networks.dqn import HLGaussQNetwork, QNetwork

#: The losses :class:`QLoss` offers.
LOSSES = ("huber", "mse")
#: The Q networks of ``DQNHParams.critic``.
CRITICS = ("td", "hl-gauss")


# ---- the math, on arrays -------------------------------------------------------------------------------


def bootstrap_value(q_next_target: jax.Array, q_next_online: jax.Array | None = None) -> jax.Array:
    """``V(next_obs)`` (B, 1) from target Q values (B, n_actions): ``max_a Q_target``, or with the online
    network's Q values (double DQN) the target's value of the online argmax."""
    if q_next_online is None:
        return jnp.max(q_next_target, axis=-1, keepdims=True)
    best = jnp.argmax(q_next_online, axis=-1)[:, None]
    return jnp.take_along_axis(q_next_target, best, axis=-1)


def q_learning_target(rewards: jax.Array, v_next: jax.Array, masks: jax.Array, gamma: jax.Array,
                      reward_scale: jax.Array) -> jax.Array:
    """n-step targets (B, T) of ``rewards (B, T)`` and ``v_next (B, 1)``, bootstrapped where ``masks (B, 1)``
    is 1 (the rollout did not end in a true termination)."""
    return discount(rewards * reward_scale, v_next * masks, gamma)


def td_loss(q: jax.Array, target: jax.Array, kind: str = "huber", huber_delta: float = 1.0,
            weights: jax.Array | None = None) -> jax.Array:
    """Mean TD loss of ``q (B*T, 1)`` against ``target (B*T, 1)``; with ``weights (B,)`` (prioritized replay,
    one per rollout window) each row weighted by its window's weight.

    ``"huber"``: ``0.5 x^2`` for ``|x| <= delta``, else ``delta * (|x| - 0.5 delta)`` (``optax.huber_loss``;
    PyTorch's ``smooth_l1_loss`` at delta 1). ``"mse"``: ``x^2`` (the reference's ``nn.MSELoss``).
    """
    if kind == "huber":
        per_row = optax.huber_loss(q, target, delta=huber_delta)
    elif kind == "mse":
        per_row = (q - target) ** 2
    else:
        raise ValueError(f"td_loss: expected kind in {LOSSES}, got {kind!r}")
    if weights is None:
        return jnp.mean(per_row)
    return jnp.mean(per_row * window_weights(weights, per_row.shape[0]))


# ---- the callbacks -------------------------------------------------------------------------------------


class QLoss(LossCallback):
    """The TD loss (:func:`td_loss`) of ``Q(obs)[a]`` against ``q_target`` written by :class:`QTarget`."""

    def __init__(self, *, q: Any, params: PyTree, name: str = "q", lr: float = 1e-3, loss: str = "huber",
                 huber_delta: float = 1.0, obs_key: str = "obs", **kw: Any):
        if loss not in LOSSES:
            raise ValueError(f"{name}: expected loss in {LOSSES}, got {loss!r}")
        super().__init__(name=name, network=q, params=params, lr=lr, **kw)
        self.kind, self.huber_delta, self.obs_key = loss, float(huber_delta), obs_key

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch = ctx.batch[self.data_group]
        q_all = self.network.apply(params, batch["observation"][self.obs_key])  # (B*T, n_actions)
        actions = batch["actions"].reshape(-1, 1).astype(jnp.int32)
        q = jnp.take_along_axis(q_all, actions, axis=-1)  # (B*T, 1)
        target = jax.lax.stop_gradient(batch["q_target"])
        weights = batch.get("weights")
        loss = td_loss(q, target, self.kind, self.huber_delta, weights)
        aux = {"q_mean": q.mean(), "td_abs_mean": jnp.abs(q - target).mean()}
        if weights is not None:  # prioritized replay: per-window |TD errors| back to the sampler
            aux["td_error"] = window_td_error(q, target, weights.shape[0])
        return loss, aux


class HLGaussQLoss(QLoss):
    """The cross-entropy of the taken action's histogram (an :class:`HLGaussQNetwork`) against the HL-Gauss
    histogram of the clamped ``q_target`` (:class:`~emote_jax.algorithms.hl_gauss.HLGaussSupport`); with
    prioritized replay each row weighted by its window's weight, and ``td_error`` per window of
    ``|Q - clamped target|``."""

    def loss(self, params: PyTree, ctx: Context) -> tuple[jax.Array, dict[str, jax.Array]]:
        batch = ctx.batch[self.data_group]
        support = self.network.support
        logits = self.network.apply(params, batch["observation"][self.obs_key], method=HLGaussQNetwork.logits)
        actions = batch["actions"].reshape(-1, 1, 1).astype(jnp.int32)
        taken = jnp.take_along_axis(logits, actions, axis=1)[:, 0]  # (B*T, N)
        target = jax.lax.stop_gradient(batch["q_target"])
        ce = support.cross_entropy(taken, target)[:, None]  # (B*T, 1)
        q = support.to_value(taken)  # (B*T, 1)
        weights = batch.get("weights")
        loss = jnp.mean(ce) if weights is None else jnp.mean(ce * window_weights(weights, ce.shape[0]))
        clamped = support.clamp(target)
        aux = {"q_mean": q.mean(), "td_abs_mean": jnp.abs(q - clamped).mean()}
        if weights is not None:
            aux["td_error"] = window_td_error(q, clamped, weights.shape[0])
        return loss, aux


class QTarget(Callback):
    """DQN's target: ``q_target`` in ``begin_batch``, the target network's update in ``end_cycle``.

    Args:
        q_net: the Q network (``apply(params, obs) -> (B, n_actions)``).
        target_params: the target network's initial parameters (copied: usually the online ones).
        q: the slot of the online Q network (:class:`QLoss`'s name).
        gamma, tau, reward_scale: hyperparameters in the slot (changing them does not recompile).
        target_update_interval: backprop steps between target updates (the callback's ``cycle``).
        double_dqn: bootstrap with the online argmax (van Hasselt et al. 2016) instead of the target max.

    The slot holds ``{"target_params": ..., "hparams": {"gamma", "tau", "reward_scale"}}``.
    """

    state_categories = {"target_params": "network", "hparams": "hparams"}

    def __init__(self, *, q_net: Any, target_params: PyTree, q: str = "q", gamma: float = 0.99, tau: float = 0.005,
                 target_update_interval: int = 1, reward_scale: float = 1.0, double_dqn: bool = True,
                 obs_key: str = "obs", data_group: str = "default", name: str = "q_target", order: int = 1):
        if not isinstance(target_update_interval, int) or target_update_interval < 1:
            raise ValueError(f"{name}: expected target_update_interval to be an int >= 1, got {target_update_interval!r}")
        super().__init__(name=name, order=order, cycle=target_update_interval)
        self.q_net, self.q_name, self.double_dqn = q_net, q, bool(double_dqn)
        self.target_params = target_params
        self.hparams = {"gamma": float(gamma), "tau": float(tau), "reward_scale": float(reward_scale)}
        self.obs_key, self.data_group = obs_key, data_group

    def init_state(self, key: jax.Array) -> PyTree:
        return {"target_params": jax.tree.map(jnp.array, self.target_params),  # a copy, never an alias
                "hparams": {k: jnp.asarray(v, jnp.float32) for k, v in self.hparams.items()}}

    def begin_batch(self, ctx: Context) -> Context:
        slot, batch = ctx.slot(self.name), ctx.batch[self.data_group]
        hp = slot["hparams"]
        next_obs = batch["next_observation"][self.obs_key]
        n_rollouts, rows = next_obs.shape[0], batch["observation"][self.obs_key].shape[0]
        if rows % n_rollouts:
            raise ValueError(f"{self.name}: batch has {rows} observation rows for {n_rollouts} next observations; "
                             "expected B rollouts of length T: observation (B*T, ...), next_observation (B, ...)")
        chex.assert_shape(batch["rewards"], (rows, 1), custom_message=f"{self.name}: rewards must be (B*T, 1)")
        chex.assert_shape(batch["masks"], (n_rollouts, 1), custom_message=f"{self.name}: masks must be (B, 1)")
        q_next_online = self.q_net.apply(ctx.slot(self.q_name)["params"], next_obs) if self.double_dqn else None
        v_next = bootstrap_value(self.q_net.apply(slot["target_params"], next_obs), q_next_online)  # (B, 1)
        rewards = batch["rewards"].reshape(n_rollouts, rows // n_rollouts)  # (B, T)
        returns = q_learning_target(rewards, v_next, batch["masks"], hp["gamma"], hp["reward_scale"])
        q_target = jax.lax.stop_gradient(returns.reshape(-1, 1))
        new_batch = {**ctx.batch, self.data_group: {**batch, "q_target": q_target}}
        return ctx.replace(batch=new_batch).log(**{f"{self.name}/q_target_mean": q_target.mean(),
                                                   f"{self.name}/reward_mean": batch["rewards"].mean()})

    def end_cycle(self, ctx: Context) -> Context:
        slot = ctx.slot(self.name)
        target = optax.incremental_update(ctx.slot(self.q_name)["params"], slot["target_params"], slot["hparams"]["tau"])
        return ctx.with_slot(self.name, {**slot, "target_params": target})


# ---- hyperparameters and the callback list -------------------------------------------------------------


@dataclass(frozen=True)
class DQNHParams:
    """DQN's hyperparameters in one place: what :func:`make_dqn_callbacks` builds from and where
    ``DQNConfig`` (the ``emote-jax train --algo dqn`` settings) takes its DQN defaults from.

    The defaults (rl-baselines3-zoo's CartPole-v1 settings, with DQNConfig's batch 64 and 0.5 updates per
    env step) reach the maximum return on CartPole-v1 within 50k env steps (README, "DQN"). Epsilon decays
    linearly from ``epsilon_start`` to ``epsilon_end`` over the first ``epsilon_decay_steps`` env steps
    (:meth:`epsilon_schedule`).
    """

    hidden_dims: tuple[int, ...] = (256, 256)
    lr: float = 2.3e-3
    gamma: float = 0.99
    tau: float = 1.0  # with target_update_interval: 1.0 is a hard copy, 0.005 every step the reference's Polyak
    target_update_interval: int = 128
    reward_scale: float = 1.0
    double_dqn: bool = False
    loss: str = "huber"
    huber_delta: float = 1.0
    max_grad_norm: float = 10.0
    epsilon_start: float = 1.0
    epsilon_end: float = 0.04
    epsilon_decay_steps: int = 8_000
    # the Q network: "td" (Q values trained by the TD loss) or "hl-gauss" (a histogram over num_bins bins
    # on [v_min, v_max] per action, trained by cross-entropy; ``loss`` is then unused)
    critic: str = "td"
    num_bins: int = 101
    v_min: float | None = None
    v_max: float | None = None
    hl_sigma_ratio: float = 0.75

    def q_network(self, n_actions: int) -> QNetwork | HLGaussQNetwork:
        """The Q network these settings give: a :class:`QNetwork`, or an :class:`HLGaussQNetwork`."""
        dims = tuple(self.hidden_dims)
        if self.critic == "td":
            return QNetwork(n_actions, dims)
        if self.critic == "hl-gauss":
            if self.v_min is None or self.v_max is None:
                raise ValueError("critic 'hl-gauss' needs v_min and v_max (the range of Q values)")
            support = HLGaussSupport(float(self.v_min), float(self.v_max), int(self.num_bins),
                                     float(self.hl_sigma_ratio))
            return HLGaussQNetwork(n_actions, support, dims)
        raise ValueError(f"critic: expected one of {CRITICS}, got {self.critic!r}")

    def epsilon_schedule(self) -> optax.Schedule:
        """``env_steps -> epsilon``: linear from ``epsilon_start`` to ``epsilon_end``, then constant."""
        return optax.linear_schedule(self.epsilon_start, self.epsilon_end, max(int(self.epsilon_decay_steps), 1))


def make_dqn_callbacks(*, obs_dim: int, n_actions: int, key: jax.Array, hp: DQNHParams | None = None,
                       obs_key: str = "obs", data_group: str = "default",
                       **hparams: Any) -> tuple[list[Callback], QNetwork]:
    """DQN's callbacks ``[q, q_target]`` and its Q network, the target starting as a copy of the online one.

    Hyperparameters come from ``hp`` (default :class:`DQNHParams()`), any of its fields overridden by keyword.
    """
    names = [f.name for f in dataclasses.fields(DQNHParams)]
    unknown = sorted(set(hparams) - set(names))
    if unknown:
        raise TypeError(f"make_dqn_callbacks got unexpected keyword(s) {unknown}; expected DQNHParams fields "
                        f"{names}, obs_key or data_group")
    hp = dataclasses.replace(hp or DQNHParams(), **hparams)
    if obs_dim < 1 or n_actions < 1:
        raise ValueError(f"obs_dim and n_actions must be >= 1, got {obs_dim} and {n_actions}")
    q_net = hp.q_network(n_actions)
    params = q_net.init(key, jnp.zeros((1, obs_dim), jnp.float32))
    loss_cls = HLGaussQLoss if hp.critic == "hl-gauss" else QLoss
    q_loss = loss_cls(q=q_net, params=params, lr=hp.lr, loss=hp.loss, huber_delta=hp.huber_delta, obs_key=obs_key,
                      data_group=data_group, max_grad_norm=hp.max_grad_norm)
    q_target = QTarget(q_net=q_net, target_params=params, q=q_loss.name, gamma=hp.gamma, tau=hp.tau,
                       target_update_interval=int(hp.target_update_interval), reward_scale=hp.reward_scale,
                       double_dqn=hp.double_dqn, obs_key=obs_key, data_group=data_group)
    return [q_loss, q_target], q_net
