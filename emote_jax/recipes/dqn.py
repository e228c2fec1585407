"""DQN's recipe: its config fields, its callbacks, its (greedy) policy and its epsilon-greedy actions.

Everything else of a run (env, memory, collector, budget, outputs, checkpoints, evaluation) is the shared
machinery of :mod:`emote_jax.recipes.common`; :data:`DQN` is what DQN brings to it. The collector acts
greedily with the Q network (a NumPy mirror on the host, or the jitted network) and
:class:`~emote_jax.collectors.actions.DiscreteActions` explores epsilon-greedily on top, epsilon a
schedule of the collector's env steps (docs/decisions/0008-dqn.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import gymnasium
import jax

from emote_jax.algorithms.dqn import CRITICS, LOSSES, DQNHParams, make_dqn_callbacks
from emote_jax.callback import Callback
from emote_jax.collectors.actions import DiscreteActions
from emote_jax.errors import UnsupportedSpaceError
from emote_jax.networks.dqn import GreedyHostPolicy, HLGaussQNetwork, QNetwork, greedy_policy
from emote_jax.recipes import common
from emote_jax.recipes.common import Algorithm, Run
from emote_jax.recipes.config import Check, RunConfig, int_tuple
from emote_jax.recipes.sac import add_critic_options, hl_gauss_checks

_HP = DQNHParams()


@dataclass
class DQNConfig(RunConfig):
    """Everything ``emote-jax train --algo dqn`` can set. Defaults: DQN on CartPole-v1, 50k env steps,
    one update per two env steps (the README's numbers). The run settings are RunConfig's (with DQN's
    defaults for env, budget, batch, memory, update ratio and an evaluation every 5k env steps); these are
    DQN's."""

    env_id: str = "CartPole-v1"
    env_steps: int = 50_000
    batch_size: int = 64
    memory_size: int = 100_000
    warmup_steps: int = 1_000
    bp_steps_per_env_step: float = 0.5
    eval_interval: int = 5_000
    algo: str = "dqn"
    # DQN's hyperparameters, flat for the CLI and config.json; defaults and meaning: DQNHParams
    hidden_dims: tuple[int, ...] = _HP.hidden_dims
    lr: float = _HP.lr
    gamma: float = _HP.gamma
    tau: float = _HP.tau
    target_update_interval: int = _HP.target_update_interval
    reward_scale: float = _HP.reward_scale
    double_dqn: bool = _HP.double_dqn
    loss: str = _HP.loss
    huber_delta: float = _HP.huber_delta
    max_grad_norm: float = _HP.max_grad_norm
    epsilon_start: float = _HP.epsilon_start
    epsilon_end: float = _HP.epsilon_end
    epsilon_decay_steps: int = _HP.epsilon_decay_steps
    critic: str = _HP.critic
    num_bins: int = _HP.num_bins
    v_min: float | None = _HP.v_min
    v_max: float | None = _HP.v_max
    hl_sigma_ratio: float = _HP.hl_sigma_ratio

    def hparams(self) -> DQNHParams:
        """The :class:`~emote_jax.algorithms.dqn.DQNHParams` these settings give."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DQNHParams)}
        return DQNHParams(**{**values, "hidden_dims": tuple(values["hidden_dims"])})

    def algo_checks(self) -> list[Check]:
        return [
            ("algo", self.algo == "dqn", "'dqn' (this is a DQNConfig)"),
            ("hidden_dims", len(self.hidden_dims) >= 1 and all(h >= 1 for h in self.hidden_dims),
             "positive layer sizes like 64,64"),
            ("lr", self.lr > 0, "> 0"), ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"),
            ("tau", 0.0 < self.tau <= 1.0, "in (0, 1] (1: a hard copy every --target-update-interval steps)"),
            ("target_update_interval", isinstance(self.target_update_interval, int) and self.target_update_interval >= 1,
             "an int >= 1 (backprop steps between target updates)"),
            ("loss", self.loss in LOSSES, f"one of {LOSSES}"), ("huber_delta", self.huber_delta > 0, "> 0"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("epsilon_start", 0.0 <= self.epsilon_start <= 1.0, "in [0, 1]"),
            ("epsilon_end", 0.0 <= self.epsilon_end <= 1.0, "in [0, 1]"),
            ("epsilon_decay_steps", isinstance(self.epsilon_decay_steps, int) and self.epsilon_decay_steps >= 1,
             "an int >= 1 (env steps)"),
            ("critic", self.critic in CRITICS, f"one of {CRITICS}"),
            *(hl_gauss_checks(self) if self.critic == "hl-gauss" else []),
        ]


def add_options(p: argparse._ArgumentGroup, d: DQNConfig) -> None:
    """The ``emote-jax train --algo dqn`` options of DQN's own fields."""
    p.add_argument("--hidden", dest="hidden_dims", type=int_tuple, default=d.hidden_dims, help="e.g. 256,256")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--tau", type=float, default=d.tau,
                   help="target <- (1 - tau) target + tau online at each target update (1: a hard copy)")
    p.add_argument("--target-update-interval", type=int, default=d.target_update_interval,
                   help="backprop steps between target updates (1 with a small --tau: Polyak after every batch)")
    p.add_argument("--reward-scale", type=float, default=d.reward_scale)
    p.add_argument("--double-dqn", action=argparse.BooleanOptionalAction, default=d.double_dqn,
                   help="bootstrap with the target's value of the online network's argmax")
    p.add_argument("--loss", choices=LOSSES, default=d.loss, help="the TD loss (--critic td)")
    add_critic_options(p, d, CRITICS, "td: Q values trained by the TD loss (--loss)")
    p.add_argument("--huber-delta", type=float, default=d.huber_delta)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--epsilon-start", type=float, default=d.epsilon_start, help="epsilon-greedy: the first epsilon")
    p.add_argument("--epsilon-end", type=float, default=d.epsilon_end, help="epsilon-greedy: the final epsilon")
    p.add_argument("--epsilon-decay-steps", type=int, default=d.epsilon_decay_steps,
                   help="env steps over which epsilon decays linearly from --epsilon-start to --epsilon-end")


# ---- spaces, networks, acting ----------------------------------------------------------------------------


def check_space_pair(obs_space: gymnasium.Space, act_space: gymnasium.Space, name: str) -> tuple[int, int]:
    """``(obs_dim, n_actions)`` of a flat Box observation and a Discrete action space, or a clear error."""
    if not isinstance(act_space, gymnasium.spaces.Discrete):
        raise UnsupportedSpaceError(f"--env {name}: DQN needs a Discrete action space, got {act_space!r} "
                                    "(--algo sac takes continuous Box actions)", "--env")
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise UnsupportedSpaceError(f"--env {name}: the default DQN network takes a flat Box observation (obs_dim,), "
                                    f"got {obs_space!r}", "--env")
    return int(obs_space.shape[0]), int(act_space.n)


def make_callbacks(cfg: DQNConfig, obs_dim: int, n_actions: int, key: jax.Array) -> tuple[list[Callback], QNetwork]:
    """DQN's callbacks ``[q, q_target]`` and its Q network, from ``cfg``."""
    return make_dqn_callbacks(obs_dim=obs_dim, n_actions=n_actions, key=key, hp=cfg.hparams())


def make_net(cfg: DQNConfig, obs_dim: int, n_actions: int) -> QNetwork | HLGaussQNetwork:
    """The Q network of a DQN run (what ``policy/`` holds the parameters of)."""
    del obs_dim
    return cfg.hparams().q_network(n_actions)


def collector_policy(q_net: QNetwork, on_host: bool = True) -> GreedyHostPolicy | Callable[..., jax.Array]:
    """The greedy policy the collector acts with: the NumPy mirror (``on_host``) or the jitted network.
    Exploration is :func:`discrete_actions`'s epsilon-greedy, on the host either way."""
    return GreedyHostPolicy(q_net) if on_host else greedy_policy(q_net)


def discrete_actions(cfg: DQNConfig, space: gymnasium.Space) -> DiscreteActions:
    """Action indices stored as int64, epsilon-greedy with ``cfg``'s linear schedule of env steps."""
    return DiscreteActions(space, epsilon=cfg.hparams().epsilon_schedule())


#: DQN as the recipe layer sees it.
DQN = Algorithm(
    name="dqn", title="DQN", config_cls=DQNConfig, check_spaces=check_space_pair, make_callbacks=make_callbacks,
    make_net=make_net, params_slot="q", collector_policy=collector_policy, eval_policy=greedy_policy,
    actions=discrete_actions, add_options=add_options,
)


def build_dqn(cfg: DQNConfig, out: TextIO | None = sys.stdout, resume: bool = False, **kw: Any) -> Run:
    """:func:`~emote_jax.recipes.common.build_run` for DQN (see there for ``resume``, ``resume_step`` and
    ``extra_callbacks``)."""
    return common.build_run(DQN, cfg, out, resume=resume, **kw)


def train_dqn(cfg: DQNConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              resume_step: int | None = None) -> dict[str, Any]:
    """:func:`~emote_jax.recipes.common.train_run` for DQN: train, evaluate the greedy policy, write the run
    directory; returns the result."""
    return common.train_run(DQN, cfg, out, resume=resume, resume_step=resume_step)
