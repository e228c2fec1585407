"""The default SAC recipe behind ``emote-jax train``: config, assembly, the run, and evaluation.

:func:`build_sac` wires the pieces the way a user would by hand (env -> collector -> memory -> loader ->
trainer with the SAC callbacks); :func:`train_sac` runs it with progress output and evaluates the
deterministic policy at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

import emote_jax.envs  # noqa: F401  (registers HitTheMiddle-v0)
from emote_jax.algorithms.sac import make_sac_callbacks
from emote_jax.callback import Callback, HostCallback, TrainingShutdownException
from emote_jax.checkpoint import CheckpointLoader, Checkpointer
from emote_jax.collectors import GymCollector, ThreadedGymCollector, memory_spec
from emote_jax.context import Context
from emote_jax.errors import ConfigError, UnsupportedSpaceError
from emote_jax.evaluation import save_policy
from emote_jax.logging import EpisodeMetrics, MetricsLogger, Progress, default_logger, write_learning_curve
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.networks.host import GaussianHostPolicy
from emote_jax.networks.sac import GaussianPolicy, mode_action, sample_action
from emote_jax.trainer import Trainer


@dataclass
class SACConfig:
    """Everything ``emote-jax train`` can set. Defaults: SAC on Pendulum-v1 as the reference benchmarks it.

    Step counts are env steps (transitions over all sub-envs) unless the name says otherwise.
    """

    env_id: str = "Pendulum-v1"
    env_steps: int = 15_000
    seed: int = 0
    num_envs: int = 1
    async_envs: bool = False
    threaded: bool = False
    act_on_host: bool = True  # the collector evaluates the policy with NumPy on a host copy of its params
    batch_size: int = 256
    rollout_length: int = 1
    hidden_dims: tuple[int, ...] = (256, 256)
    q_hidden_dims: tuple[int, ...] | None = None
    lr_q: float = 3e-4
    lr_policy: float = 3e-4
    lr_alpha: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    reward_scale: float = 1.0
    initial_alpha: float = 1.0
    max_alpha: float = 0.2
    max_grad_norm: float = 10.0
    memory_size: int = 1_000_000
    warmup_steps: int = 1_000
    random_warmup: bool = True
    bp_steps_per_env_step: float = 1.0
    steps_per_call: int = 1
    prefetch: bool = False
    eval_episodes: int = 10
    log_interval: int = 1_000
    run_dir: str | None = None
    log_metrics: bool = True  # TensorBoard, metrics.csv, episodes.csv, learning_curve.png in run_dir
    metrics_interval: int = 100  # backprop steps between logged scalars
    wandb_project: str | None = None  # also log to Weights & Biases (pip install 'emote-jax[wandb]')
    wandb_mode: str | None = None  # e.g. "offline": no account or network needed
    checkpoint_interval: int = 5_000  # backprop steps between checkpoints in run_dir/checkpoints (0: none)
    keep_checkpoints: int = 3  # the last N checkpoints are kept
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise a :class:`~emote_jax.errors.ConfigError` naming the first setting that cannot work."""
        checks = [
            ("env_steps", self.env_steps > 0, "> 0"), ("num_envs", self.num_envs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"), ("rollout_length", self.rollout_length >= 1, ">= 1"),
            ("memory_size", self.memory_size >= self.batch_size, f">= batch_size ({self.batch_size})"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("warmup_steps", self.warmup_steps < self.env_steps,
             f"< --steps ({self.env_steps}): otherwise the warm-up takes the whole budget and nothing is trained"),
            ("bp_steps_per_env_step", self.bp_steps_per_env_step > 0, "> 0"),
            ("steps_per_call", self.steps_per_call >= 1, ">= 1"), ("eval_episodes", self.eval_episodes >= 0, ">= 0"),
            ("gamma", 0.0 <= self.gamma <= 1.0, "in [0, 1]"), ("tau", 0.0 < self.tau <= 1.0, "in (0, 1]"),
            ("log_interval", self.log_interval > 0, "> 0"), ("metrics_interval", self.metrics_interval > 0, "> 0"),
            ("checkpoint_interval", self.checkpoint_interval >= 0, ">= 0"),
            ("keep_checkpoints", self.keep_checkpoints >= 1, ">= 1"),
            ("lr_q", self.lr_q > 0, "> 0"), ("lr_policy", self.lr_policy > 0, "> 0"),
            ("lr_alpha", self.lr_alpha > 0, "> 0"), ("max_alpha", self.max_alpha > 0, "> 0"),
            ("initial_alpha", self.initial_alpha > 0, "> 0"), ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("batch_size", self.batch_size % self.rollout_length == 0,
             f"a multiple of rollout_length ({self.rollout_length})"),
        ]
        for name, ok, expected in checks:
            if not ok:
                option = cli_option(name)
                raise ConfigError(f"{option} {getattr(self, name)!r} is not valid: expected {expected}", option)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Option names of ``emote-jax train`` that are not ``--`` + the field name with dashes.
_CLI_OPTIONS = {"env_id": "--env", "env_steps": "--steps", "hidden_dims": "--hidden", "act_on_host": "--act-on-device"}


def cli_option(field_name: str) -> str:
    """The ``emote-jax train`` option that sets the :class:`SACConfig` field ``field_name``."""
    return _CLI_OPTIONS.get(field_name, "--" + field_name.replace("_", "-"))


def make_vector_env(cfg: SACConfig, seed_offset: int = 0) -> gymnasium.vector.VectorEnv:
    """``num_envs`` copies of ``env_id`` in a sync (or async) vector env with NEXT_STEP autoreset.

    An env id that gymnasium does not know, or whose dependency is not installed, is a
    :class:`~emote_jax.errors.ConfigError` (the latter names the extra to install).
    """
    check_env_id(cfg.env_id)
    fns = [lambda: gymnasium.make(cfg.env_id, **cfg.env_kwargs) for _ in range(cfg.num_envs)]
    cls = gymnasium.vector.AsyncVectorEnv if cfg.async_envs else gymnasium.vector.SyncVectorEnv
    if cfg.async_envs:  # the sub-processes would report a missing dependency as a broken pipe: try one here
        with _env_errors(cfg.env_id):
            gymnasium.make(cfg.env_id, **cfg.env_kwargs).close()
    with _env_errors(cfg.env_id):
        return cls(fns)


#: Extras of emote-jax that bring an env family's dependencies, by the start of the envs' entry point.
ENV_EXTRAS = {"gymnasium.envs.mujoco": "mujoco", "gymnasium.envs.box2d": "box2d"}


def check_env_id(env_id: str) -> gymnasium.envs.registration.EnvSpec:
    """The registered spec of ``env_id``, or a ConfigError that says gymnasium does not know it."""
    try:
        return gymnasium.spec(env_id)
    except gymnasium.error.Error as e:
        raise ConfigError(f"--env {env_id!r}: gymnasium does not know this env id ({e})", "--env") from None


@contextlib.contextmanager
def _env_errors(env_id: str) -> Any:
    """Turn a missing env dependency into a one-line ConfigError naming the extra that brings it."""
    try:
        yield
    except (gymnasium.error.DependencyNotInstalled, ImportError) as e:
        entry = str(getattr(gymnasium.spec(env_id), "entry_point", ""))
        extra = next((x for prefix, x in ENV_EXTRAS.items() if entry.startswith(prefix)), None)
        hint = f"pip install 'emote-jax[{extra}]'" if extra else "install the package it names"
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--env {env_id!r} needs a package that is not installed ({detail}): {hint}",
                          "--env") from None


def policy_act(policy_net: GaussianPolicy, deterministic: bool = False) -> Callable[..., jax.Array]:
    """``(params, obs (N, obs_dim), key) -> actions (N, A)`` in [-1, 1]: a sample, or ``tanh(mean)``."""

    def act(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        mean, std = policy_net.apply(params, obs)
        return mode_action(mean) if deterministic else sample_action(mean, std, key)[0]

    return act


def collector_policy(policy_net: GaussianPolicy, on_host: bool = True) -> GaussianHostPolicy | Callable[..., jax.Array]:
    """The policy a collector acts with: the NumPy mirror of ``policy_net`` (``on_host``), or the jitted
    :func:`policy_act`. Same distribution; the host one saves a device round trip per env step."""
    return GaussianHostPolicy(policy_net) if on_host else policy_act(policy_net)


def check_spaces(env: gymnasium.vector.VectorEnv, env_id: str | None = None) -> tuple[int, int]:
    """``(obs_dim, n_actions)`` of a flat Box-observation, Box-action env, or a clear error."""
    obs_space, act_space = env.single_observation_space, env.single_action_space
    name = env_id or (env.spec.id if env.spec else "the env")
    if not isinstance(act_space, gymnasium.spaces.Box):
        raise UnsupportedSpaceError(f"--env {name}: SAC needs a continuous Box action space, got {act_space!r}", "--env")
    if not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ConfigError(f"--env {name}: SAC needs finite action bounds to rescale its [-1, 1] actions, got "
                          f"low={act_space.low}, high={act_space.high}", "--env")
    if not isinstance(obs_space, gymnasium.spaces.Box) or len(obs_space.shape) != 1:
        raise UnsupportedSpaceError(f"--env {name}: the default SAC networks take a flat Box observation (obs_dim,), got "
                          f"{obs_space!r}", "--env")
    return int(obs_space.shape[0]), int(np.prod(act_space.shape))


def check_rollout_length(cfg: SACConfig) -> None:
    """Refuse an n-step length that no episode can reach (the env's time limit is shorter)."""
    limit = cfg.env_kwargs.get("max_episode_steps", check_env_id(cfg.env_id).max_episode_steps)
    if limit is not None and cfg.rollout_length > limit:
        raise ConfigError(f"--rollout-length {cfg.rollout_length} is longer than {cfg.env_id}'s episodes (time limit "
                          f"{limit} steps): no n-step window fits; expected <= {limit}", "--rollout-length")


class EnvStepBudget(HostCallback):
    """Ends training (a clean shutdown) once the collector has taken ``env_steps`` env steps."""

    def __init__(self, collector: GymCollector, env_steps: int, name: str = "env_step_budget"):
        super().__init__(name=name, cycle=1, order=1000)
        self.collector, self.env_steps = collector, env_steps

    def begin_training(self, ctx: Context) -> None:
        if self.collector.env_steps >= self.env_steps:
            raise TrainingShutdownException()

    def end_cycle(self, ctx: Context) -> None:
        if self.collector.env_steps >= self.env_steps:
            raise TrainingShutdownException()


#: The progress output of ``emote-jax train``: a bar on a terminal, plain lines (the former
#: ``ProgressLines``) on a pipe or in a file. See :class:`emote_jax.logging.Progress`.
ProgressLines = Progress


@dataclass
class SACRun:
    """The assembled pieces of a SAC run (for users who want to drive or inspect them)."""

    config: SACConfig
    trainer: Trainer
    collector: GymCollector
    env: gymnasium.vector.VectorEnv
    table: ReplayTable
    loader: MemoryLoader
    policy_net: GaussianPolicy
    progress: ProgressLines | None
    logger: MetricsLogger | None = None
    checkpointer: Checkpointer | None = None


def build_sac(cfg: SACConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              extra_callbacks: Sequence[Callback | HostCallback] = (), resume_step: int | None = None) -> SACRun:
    """Assemble env, memory, loader, collector, SAC callbacks and trainer from ``cfg``.

    ``extra_callbacks`` (device or host) join the trainer after the recipe's own; their metrics are
    logged like the others.

    Every check (spaces, settings) happens here, before anything is compiled. With a ``run_dir`` and
    ``checkpoint_interval > 0`` a :class:`~emote_jax.checkpoint.Checkpointer` writes
    ``run_dir/checkpoints`` (networks, optimizers, hparams, counters, RNG, collector state, memory);
    ``resume`` restores the newest of them that passes its integrity check (``resume_step``: exactly that
    one) before training, and prints which to ``out`` (see docs/decisions/0004).
    """
    cfg.validate()
    check_rollout_length(cfg)
    env = make_vector_env(cfg)
    try:
        obs_dim, n_actions = check_spaces(env, cfg.env_id)
        obs_spec, action_shape = memory_spec(env)
        table = ReplayTable(cfg.memory_size, obs_spec, action_shape, seed=cfg.seed)
        memory = MemoryProxy(table)
        loader = MemoryLoader(table, cfg.batch_size // cfg.rollout_length, cfg.rollout_length,
                              steps_per_call=cfg.steps_per_call, prefetch=cfg.prefetch)
        callbacks, policy_net = make_sac_callbacks(
            obs_dim=obs_dim, n_actions=n_actions, key=jax.random.key(cfg.seed), hidden_dims=cfg.hidden_dims,
            q_hidden_dims=cfg.q_hidden_dims, lr_q=cfg.lr_q, lr_policy=cfg.lr_policy, lr_alpha=cfg.lr_alpha,
            gamma=cfg.gamma, tau=cfg.tau, reward_scale=cfg.reward_scale, initial_alpha=cfg.initial_alpha,
            max_alpha=cfg.max_alpha, max_grad_norm=cfg.max_grad_norm,
        )
        warmup_vector_steps = -(-cfg.warmup_steps // cfg.num_envs)
        common = dict(params_slot="policy", warmup_steps=warmup_vector_steps, random_warmup=cfg.random_warmup,
                      seed=cfg.seed)
        if cfg.threaded:  # collects continuously, capped at the configured ratio of env to backprop steps
            collector = ThreadedGymCollector(env, collector_policy(policy_net, cfg.act_on_host), memory,
                                             max_env_steps_per_bp_step=1.0 / cfg.bp_steps_per_env_step, **common)
        else:
            collector = GymCollector(env, collector_policy(policy_net, cfg.act_on_host), memory,
                                     bp_steps_per_env_step=cfg.bp_steps_per_env_step, **common)
        warmup = MemoryWarmup(loader, collector=collector, out=out)  # fills up to one batch, whatever warmup_steps says
        host: list[HostCallback] = [collector, warmup, EnvStepBudget(collector, cfg.env_steps)]
        progress = None
        if out is not None:
            progress = ProgressLines(collector, cfg.env_steps, cfg.log_interval, out)
            host.append(progress)
        logger = None
        if cfg.run_dir is not None and cfg.log_metrics:
            wandb = ({"project": cfg.wandb_project, "mode": cfg.wandb_mode, "config": cfg.to_json()}
                     if cfg.wandb_project else None)
            logger = default_logger(cfg.run_dir, collector, log_interval=cfg.metrics_interval, wandb=wandb)
            host.append(logger)
        checkpointer = None
        if cfg.run_dir is not None and cfg.checkpoint_interval > 0:
            checkpointer = Checkpointer([*callbacks, collector], Path(cfg.run_dir) / "checkpoints",
                                        cfg.checkpoint_interval, keep=cfg.keep_checkpoints, memory=table)
            host.append(checkpointer)
        if resume:
            if cfg.run_dir is None:
                raise ValueError("resume needs SACConfig.run_dir (the checkpoints are in run_dir/checkpoints)")
            host.append(CheckpointLoader([*callbacks, collector], Path(cfg.run_dir) / "checkpoints", memory=table,
                                         step=resume_step, out=out))
        trainer = Trainer([*callbacks, *host, *extra_callbacks], loader, steps_per_call=cfg.steps_per_call,
                          seed=cfg.seed)
    except BaseException:
        env.close()
        raise
    return SACRun(cfg, trainer, collector, env, table, loader, policy_net, progress, logger=logger,
                  checkpointer=checkpointer)


def evaluate(cfg: SACConfig, policy_net: GaussianPolicy, params: Any, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` deterministic episodes (``tanh(mean)``) on fresh single envs."""
    act = jax.jit(policy_act(policy_net, deterministic=True))
    env = gymnasium.make(cfg.env_id, **cfg.env_kwargs)
    low, high = env.action_space.low, env.action_space.high
    returns = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total = False, 0.0
            while not done:
                a = np.asarray(act(params, jnp.asarray(obs, jnp.float32)[None], jax.random.key(0)))[0]
                obs, r, terminated, truncated, _ = env.step(low + (a + 1.0) * 0.5 * (high - low))
                total += float(r)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def train_sac(cfg: SACConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              resume_step: int | None = None) -> dict[str, Any]:
    """Train SAC per ``cfg``, evaluate, write ``config.json`` and ``result.json`` to ``run_dir``.

    Returns the result: evaluation returns and their mean, wall time, updates/s, env steps, bp steps.
    ``resume`` continues from the newest intact checkpoint in ``run_dir/checkpoints`` (``resume_step``:
    from exactly that one; see :class:`~emote_jax.checkpoint.CheckpointLoader`). A SIGINT/SIGTERM ends
    training cleanly (final checkpoint, no evaluation; ``result["interrupted_by"]`` names the signal).
    """
    t0 = time.perf_counter()
    run = build_sac(cfg, out, resume=resume, resume_step=resume_step)  # the loader prints the step it resumes
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    if out is not None:
        print(f"emote_jax SAC on {cfg.env_id}: {cfg.env_steps} env steps, {cfg.num_envs} env(s), seed {cfg.seed}, "
              f"devices {jax.devices()}", file=out, flush=True)
    try:
        t_train = time.perf_counter()
        ctx = run.trainer.train()
        train_s = time.perf_counter() - t_train
    finally:
        run.env.close()
    bp_steps = run.trainer.bp_step - 1
    interrupted = run.trainer.interrupted_by
    if interrupted and out is not None:
        saved = run.checkpointer is not None and run.checkpointer.latest_step is not None
        where = f"; final checkpoint in {Path(cfg.run_dir) / 'checkpoints'}" if saved else ""
        print(f"interrupted by {interrupted} at bp step {bp_steps}{where}; no evaluation"
              + (f". Continue with: emote-jax train --resume --run-dir {cfg.run_dir}" if where else ""),
              file=out, flush=True)
    returns = [] if interrupted else evaluate(cfg, run.policy_net, ctx.state["policy"]["params"], cfg.eval_episodes,
                                              seed=cfg.seed + 10_000)
    result = {
        "env_id": cfg.env_id, "seed": cfg.seed, "env_steps": run.collector.env_steps,
        "vector_steps": run.collector.vector_steps, "bp_steps": bp_steps,
        "eval_returns": returns, "eval_mean_return": float(np.mean(returns)) if returns else None,
        "eval_std_return": float(np.std(returns)) if returns else None,
        "train_wall_s": train_s, "total_wall_s": time.perf_counter() - t0,
        "updates_per_s": bp_steps / train_s if train_s > 0 else None,
        "train_returns_last10": list(run.collector.episode_returns)[-10:],
        "interrupted_by": interrupted,
    }
    if out is not None and returns:
        print(f"evaluation over {len(returns)} deterministic episodes: mean return {result['eval_mean_return']:.1f} "
              f"(std {result['eval_std_return']:.1f}); trained in {train_s:.0f} s", file=out, flush=True)
    if run_dir is not None:
        save_policy(run_dir, ctx.state["policy"]["params"])  # what `emote-jax eval RUN_DIR` loads
        if run.logger is not None:
            result["compile_s"] = run.logger.compile_s
            episodes = next((s for s in run.logger.sources if isinstance(s, EpisodeMetrics)), None)
            if episodes is not None:  # episodes.csv and learning_curve.png
                write_learning_curve(run_dir, episodes, title=f"SAC on {cfg.env_id}, seed {cfg.seed}")
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result
