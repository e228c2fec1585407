"""SAC's recipe: its config fields, its callbacks, its policy for acting and for evaluation.

Everything else of a run (env, memory, collector, budget, outputs, checkpoints, evaluation) is the
shared machinery of :mod:`emote_jax.recipes.common`; :data:`SAC` is what SAC brings to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

import gymnasium
import jax
import numpy as np

from emote_jax.algorithms.sac import LOGP_SOURCES, SACHParams, make_sac_callbacks
from emote_jax.callback import Callback, HostCallback
from emote_jax.errors import ConfigError, UnsupportedSpaceError
from emote_jax.collectors.spaces import obs_dtypes
from emote_jax.networks.encoders import EncodedPolicy, ObsSpec, encoded_policy, obs_kind
from emote_jax.networks.host import EncodedGaussianHostPolicy, GaussianHostPolicy
from emote_jax.networks.sac import GaussianPolicy, mode_action, sample_action
from emote_jax.recipes import common
from emote_jax.recipes.common import Algorithm, Run, box_actions
from emote_jax.recipes.config import Check, RunConfig, int_tuple


_HP = SACHParams()


@dataclass
class SACConfig(RunConfig):
    """Everything ``emote-jax train --algo sac`` can set. Defaults: SAC on Pendulum-v1 as the reference
    benchmarks it. The run settings are :class:`~emote_jax.recipes.config.RunConfig`'s; these are SAC's."""

    algo: str = "sac"
    # SAC's hyperparameters, flat for the CLI and config.json; defaults and meaning: SACHParams
    hidden_dims: tuple[int, ...] = _HP.hidden_dims
    q_hidden_dims: tuple[int, ...] | None = _HP.q_hidden_dims
    lr_q: float = _HP.lr_q
    lr_policy: float = _HP.lr_policy
    lr_alpha: float = _HP.lr_alpha
    gamma: float = _HP.gamma
    tau: float = _HP.tau
    reward_scale: float = _HP.reward_scale
    initial_alpha: float = _HP.initial_alpha
    max_alpha: float = _HP.max_alpha
    max_grad_norm: float = _HP.max_grad_norm
    policy_q: str = _HP.policy_q
    alpha_logp: str = _HP.alpha_logp
    policy_head_init: str = _HP.policy_head_init
    critic: str = _HP.critic
    num_bins: int = _HP.num_bins
    v_min: float | None = _HP.v_min
    v_max: float | None = _HP.v_max
    hl_sigma_ratio: float = _HP.hl_sigma_ratio
    encoder_dims: tuple[int, ...] = _HP.encoder_dims
    shared_encoder: bool = _HP.shared_encoder

    #: ``--preset emote``: the reference's (emote-rl 23.0.0) SAC settings, for parity runs: critics' and
    #: policy's gradients clipped to norm 10, alpha capped at 0.2, the policy against Q1 alone, its head
    #: initialised xavier-uniform (gain 0.01), alpha's logp from a sample of the updated policy, 1,000
    #: random warm-up steps, one update per env step.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "emote": {"max_grad_norm": 10.0, "max_alpha": 0.2, "initial_alpha": 1.0, "policy_q": "q1",
                  "policy_head_init": "xavier", "alpha_logp": "updated",
                  "warmup_steps": 1_000, "steps_per_call": 1, "bp_steps_per_env_step": 1.0, "critic": "mse"},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        self.encoder_dims = tuple(self.encoder_dims)  # a list from config.json: the same config

    def hparams(self) -> SACHParams:
        """The :class:`~emote_jax.algorithms.sac.SACHParams` these settings give (the rest: its defaults)."""
        names = {f.name for f in dataclasses.fields(SACHParams)} & {f.name for f in dataclasses.fields(self)}
        return SACHParams(**{n: tuple(getattr(self, n)) if n.endswith("_dims") and getattr(self, n) is not None
                             else getattr(self, n) for n in names})

    def algo_checks(self) -> list[Check]:
        return [
            ("algo", self.algo == "sac", "'sac' (this is a SACConfig)"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"), ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("lr_q", self.lr_q > 0, "> 0"), ("lr_policy", self.lr_policy > 0, "> 0"),
            ("lr_alpha", self.lr_alpha > 0, "> 0"), ("max_alpha", self.max_alpha > 0, "> 0"),
            ("initial_alpha", self.initial_alpha > 0, "> 0"), ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("policy_q", self.policy_q in ("min", "q1"), "'min' (min(Q1, Q2)) or 'q1' (Q1 only)"),
            ("alpha_logp", self.alpha_logp in LOGP_SOURCES, f"one of {LOGP_SOURCES}"),
            ("policy_head_init", self.policy_head_init in ("orthogonal", "xavier"), "'orthogonal' or 'xavier'"),
            ("critic", self.critic in CRITICS, f"one of {CRITICS}"),
            *(hl_gauss_checks(self) if self.critic == "hl-gauss" else []),
            ("encoder_dims", all(isinstance(d, int) and d >= 1 for d in self.encoder_dims),
             "positive layer sizes like 64 or 64,64 (empty: the vector keys as they are)"),
        ]


#: The critics ``--critic`` offers: the reference's SAC critics (MSE), or HL-Gauss histograms.
CRITICS = ("mse", "hl-gauss")


def hl_gauss_checks(cfg: Any) -> list[Check]:
    """The checks of an HL-Gauss critic's fields (``v_min``, ``v_max``, ``num_bins``, ``hl_sigma_ratio``)."""
    lo, hi = cfg.v_min, cfg.v_max
    need = "a number: --critic hl-gauss needs the range of Q values (--v-min, --v-max; e.g. -1700 and 0 for Pendulum-v1)"
    return [
        ("v_min", lo is not None and np.isfinite(lo), need), ("v_max", hi is not None and np.isfinite(hi), need),
        ("v_max", lo is None or hi is None or hi > lo, f"> --v-min ({lo})"),
        ("num_bins", isinstance(cfg.num_bins, int) and cfg.num_bins >= 2, "an int >= 2"),
        ("hl_sigma_ratio", bool(np.isfinite(cfg.hl_sigma_ratio) and cfg.hl_sigma_ratio > 0),
         "a finite number > 0 (the Gaussian's standard deviation in bin widths)"),
    ]


def add_critic_options(p: argparse._ArgumentGroup, d: Any, choices: tuple[str, ...] = CRITICS,
                       plain: str = "mse: the reference's critics") -> None:
    """``--critic {mse,hl-gauss} --bins --v-min --v-max --hl-sigma-ratio``: the critic's kind and bins
    (``choices`` and the help of the plain kind, ``plain``, are the algorithm's)."""
    p.add_argument("--critic", choices=choices, default=d.critic,
                   help=f"{plain}; hl-gauss: Q as a histogram over --bins bins on [--v-min, --v-max], "
                        "trained by cross-entropy (default: %(default)s)")
    p.add_argument("--bins", dest="num_bins", type=int, default=d.num_bins, help="HL-Gauss bins (default: %(default)s)")
    p.add_argument("--v-min", type=float, default=d.v_min, help="HL-Gauss: the lowest Q value (scaled rewards)")
    p.add_argument("--v-max", type=float, default=d.v_max, help="HL-Gauss: the highest Q value (scaled rewards)")
    p.add_argument("--hl-sigma-ratio", type=float, default=d.hl_sigma_ratio,
                   help="HL-Gauss: the Gaussian's standard deviation in bin widths (default: %(default)s)")


def add_options(p: argparse._ArgumentGroup, d: SACConfig) -> None:
    """The ``emote-jax train --algo sac`` options of SAC's own fields."""
    p.add_argument("--hidden", dest="hidden_dims", type=int_tuple, default=d.hidden_dims, help="e.g. 256,256")
    p.add_argument("--q-hidden", dest="q_hidden_dims", type=int_tuple, default=d.q_hidden_dims,
                   help="the critics' layer sizes, e.g. 512,512 (default: --hidden)")
    p.add_argument("--lr-q", type=float, default=d.lr_q)
    p.add_argument("--lr-policy", type=float, default=d.lr_policy)
    p.add_argument("--lr-alpha", type=float, default=d.lr_alpha)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--reward-scale", type=float, default=d.reward_scale)
    p.add_argument("--initial-alpha", type=float, default=d.initial_alpha, help="the entropy weight at the start")
    p.add_argument("--max-alpha", type=float, default=d.max_alpha, help="alpha is clamped to at most this ('inf': never)")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="every loss clips its gradient to this global norm ('inf': no clipping)")
    p.add_argument("--policy-q", choices=("min", "q1"), default=d.policy_q,
                   help="the Q the policy maximises: min(Q1, Q2), or Q1 only (the reference's default)")
    p.add_argument("--alpha-logp", choices=LOGP_SOURCES, default=d.alpha_logp,
                   help="alpha's loss takes logp from the policy loss's sample (SB3, sbx; no extra forward pass) "
                        "or from a sample of the updated policy (the reference's) (default: %(default)s)")
    p.add_argument("--policy-head-init", choices=("orthogonal", "xavier"), default=d.policy_head_init,
                   help="the policy's mean/log-std kernels: orthogonal gain 0.01, or xavier-uniform gain 0.01 "
                        "(the reference's) (default: %(default)s)")
    add_critic_options(p, d)
    p.add_argument("--encoder-dims", type=int_tuple, default=d.encoder_dims, metavar="DIMS",
                   help="Dict observations: an MLP encoder for each vector key, e.g. 64 (default: the vectors as they are)")
    p.add_argument("--shared-encoder", action="store_true",
                   help="Dict observations: Q1 and Q2 share one encoder (the reference's SharedEncoderActionValueNet); "
                        "needs an image key or --encoder-dims")


# ---- spaces and networks ---------------------------------------------------------------------------------


def check_space_pair(obs_space: gymnasium.Space, act_space: gymnasium.Space,
                     name: str) -> tuple[int | ObsSpec, int]:
    """``(obs_dim, n_actions)`` of a flat Box observation and a bounded Box action space, or a clear error.

    A Dict observation gives its :data:`~emote_jax.networks.encoders.ObsSpec` ``{key: (shape, dtype)}`` for
    ``obs_dim``: each key a rank-1 Box (a vector) or a rank-3 uint8 Box (an image, channels last).
    """
    if not isinstance(act_space, gymnasium.spaces.Box):
        raise UnsupportedSpaceError(f"--env {name}: SAC needs a continuous Box action space, got {act_space!r} "
                                    "(--algo dqn takes Discrete actions)", "--env")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ConfigError(f"--env {name}: SAC needs finite action bounds to rescale its [-1, 1] actions, got "
                          f"low={act_space.low}, high={act_space.high}", "--env")
    n_actions = int(np.prod(act_space.shape))
    if isinstance(obs_space, gymnasium.spaces.Dict):
        return dict_obs_spec(obs_space, name), n_actions
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise UnsupportedSpaceError(f"--env {name}: the default SAC networks take a flat Box observation (obs_dim,) "
                                    f"or a Dict of Boxes, got {obs_space!r}", "--env")
    return int(obs_space.shape[0]), n_actions


def dict_obs_spec(space: gymnasium.spaces.Dict, name: str) -> ObsSpec:
    """``{key: (shape, dtype)}`` of a Dict observation space whose keys SAC's encoders take, or an
    UnsupportedSpaceError naming the first key that is not a vector Box or a uint8 image Box."""
    if not space.spaces:
        raise UnsupportedSpaceError(f"--env {name}: the Dict observation space has no keys", "--env")
    for key, sub in space.spaces.items():
        why = None
        if not isinstance(sub, gymnasium.spaces.Box):
            why = f"is {sub!r}, not a Box"
        elif obs_kind(sub.shape, sub.dtype) is None:
            why = (f"is a Box of shape {sub.shape} and dtype {sub.dtype}; expected a vector (rank 1) or a uint8 "
                   "image (H, W, C)")
        if why is not None:
            raise UnsupportedSpaceError(f"--env {name}: observation key {key!r} {why}; leave it out with --obs-keys "
                                        f"(the keys: {','.join(space.spaces)})", "--obs-keys")
    dtypes = obs_dtypes(space)
    return {k: (tuple(int(n) for n in s.shape), dtypes[k]) for k, s in space.spaces.items()}


def check_spaces(env: gymnasium.vector.VectorEnv, env_id: str | None = None) -> tuple[int | ObsSpec, int]:
    """``(obs_dim, n_actions)`` of a flat Box- (or Dict-) observation, Box-action vector env, or a clear error."""
    name = env_id or (env.spec.id if env.spec else "the env")
    return check_space_pair(env.single_observation_space, env.single_action_space, name)


def make_callbacks(cfg: SACConfig, obs_dim: int | ObsSpec, n_actions: int,
                   key: jax.Array) -> tuple[list[Callback], GaussianPolicy | EncodedPolicy]:
    """SAC's callbacks ``[q1, q2, policy, alpha, q_target]`` and its policy network, from ``cfg`` (an
    :class:`~emote_jax.networks.encoders.EncodedPolicy` for Dict observations)."""
    check_encoder_options(cfg, obs_dim)
    return make_sac_callbacks(obs_dim=obs_dim, n_actions=n_actions, key=key, hp=cfg.hparams())


def check_encoder_options(cfg: SACConfig, obs_dim: int | ObsSpec) -> None:
    """A ConfigError naming ``--encoder-dims`` or ``--shared-encoder`` where the observation cannot take it:
    both need a Dict observation, and a shared encoder needs parameters (an image key or ``--encoder-dims``)."""
    name = cfg.env_id
    if not isinstance(obs_dim, Mapping):
        for option, on in (("--encoder-dims", bool(cfg.encoder_dims)), ("--shared-encoder", cfg.shared_encoder)):
            if on:
                raise ConfigError(f"{option}: --env {name} has a flat vector observation ({obs_dim},); the encoders are "
                                  "for Dict observations (one per key): drop the option", option)
    elif cfg.shared_encoder and not cfg.encoder_dims and not any(obs_kind(*v) == "image" for v in obs_dim.values()):
        raise ConfigError(f"--shared-encoder: the Dict observation of --env {name} has only vector keys "
                          f"({','.join(sorted(obs_dim))}) and they go in as they are, so the critics' encoder has no "
                          "parameters to share: add --encoder-dims 64 (an MLP per vector key), or drop --shared-encoder",
                          "--shared-encoder")


def make_net(cfg: SACConfig, obs_dim: int | ObsSpec, n_actions: int) -> GaussianPolicy | EncodedPolicy:
    """The policy network of a SAC run (what ``policy/`` holds the parameters of)."""
    policy = GaussianPolicy(n_actions, tuple(cfg.hidden_dims), cfg.policy_head_init)
    return encoded_policy(obs_dim, policy, tuple(cfg.encoder_dims)) if isinstance(obs_dim, Mapping) else policy


# ---- acting ----------------------------------------------------------------------------------------------


def policy_act(policy_net: GaussianPolicy, deterministic: bool = False) -> Callable[..., jax.Array]:
    """``(params, obs (N, obs_dim), key) -> actions (N, A)`` in [-1, 1]: a sample, or ``tanh(mean)``."""

    def act(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        mean, std = policy_net.apply(params, obs)
        return mode_action(mean) if deterministic else sample_action(mean, std, key)[0]

    return act


def collector_policy(policy_net: GaussianPolicy | EncodedPolicy,
                     on_host: bool = True) -> GaussianHostPolicy | Callable[..., jax.Array]:
    """The policy a collector acts with: the NumPy mirror of ``policy_net`` (``on_host``), or the jitted
    :func:`policy_act`. Same distribution; the host one saves a device round trip per env step.

    Dict observations: a NumPy mirror when the encoder has no parameters (vectors only, concatenated),
    otherwise (images) always the jitted policy: the encoder's convolutions are not mirrored."""
    if isinstance(policy_net, EncodedPolicy):
        on_host = on_host and not policy_net.encoder.has_params
        return EncodedGaussianHostPolicy(policy_net) if on_host else policy_act(policy_net)
    return GaussianHostPolicy(policy_net) if on_host else policy_act(policy_net)


def deterministic_policy(policy_net: GaussianPolicy) -> Callable[..., jax.Array]:
    """``tanh(mean)``: how a trained SAC policy is evaluated."""
    return policy_act(policy_net, deterministic=True)


#: SAC as the recipe layer sees it.
SAC = Algorithm(
    name="sac", title="SAC", config_cls=SACConfig, check_spaces=check_space_pair, make_callbacks=make_callbacks,
    make_net=make_net, params_slot="policy", collector_policy=collector_policy, eval_policy=deterministic_policy,
    actions=box_actions, add_options=add_options,
)

# ---- the recipe under its SAC names ----------------------------------------------------------------------

#: The assembled pieces of a SAC run (:class:`~emote_jax.recipes.common.Run`).
SACRun = Run


def build_sac(cfg: SACConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              extra_callbacks: Sequence[Callback | HostCallback] = (), resume_step: int | None = None) -> Run:
    """:func:`~emote_jax.recipes.common.build_run` for SAC: env, memory, loader, collector, SAC callbacks
    and trainer from ``cfg`` (see there for ``resume``, ``resume_step`` and ``extra_callbacks``)."""
    return common.build_run(SAC, cfg, out, resume=resume, extra_callbacks=extra_callbacks, resume_step=resume_step)


def train_sac(cfg: SACConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              resume_step: int | None = None) -> dict[str, Any]:
    """:func:`~emote_jax.recipes.common.train_run` for SAC: train per ``cfg``, evaluate ``tanh(mean)``, write
    ``config.json``, ``result.json`` and ``policy/`` to ``run_dir``; returns the result."""
    return common.train_run(SAC, cfg, out, resume=resume, resume_step=resume_step)


def evaluate(cfg: SACConfig, policy_net: GaussianPolicy, params: Any, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` deterministic episodes (``tanh(mean)``) on fresh single envs."""
    return common.evaluate(SAC, cfg, policy_net, params, episodes, seed)
