"""The run machinery every algorithm shares, parameterised by an :class:`Algorithm`.

:func:`build_run` wires the pieces the way a user would by hand (env -> collector -> memory -> loader ->
trainer with the algorithm's callbacks, plus warm-up, budget, progress, loggers, checkpoints and
resume); :func:`train_run` runs it, evaluates the deterministic policy at the end and writes the run
directory (``config.json``, ``result.json``, the learning curve, ``policy/``). An algorithm provides
only what is its own (:class:`Algorithm`); docs/decisions/0007-recipe-layer.md says why the line is
drawn there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.callback import Callback, HostCallback, TrainingShutdownException
from emote_jax.checkpoint import CheckpointLoader, Checkpointer
from emote_jax.collectors import Actions, BoxActions, GymCollector, ThreadedGymCollector, memory_spec
from emote_jax.collectors.device import DeviceCollectorMonitor, NoBatches
from emote_jax.collectors.ray import RayCollector
from emote_jax.context import Context, PyTree
from emote_jax.envs.jax_env import has_gymnasium_twin, is_jax_env_id
from emote_jax.logging import EpisodeMetrics, MetricsLogger, Progress, default_logger, write_learning_curve
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.memory.priority import PriorityFeedback, PriorityUpdater
from emote_jax.memory.samplers import Sampler, make_sampler
from emote_jax.recipes.config import RunConfig
from emote_jax.recipes.device import device_pieces, env_devices, jax_env, run_jax_episodes, shard_envs
from emote_jax.recipes.envs import check_rollout_length, make_vector_env, single_env
from emote_jax.trainer import Trainer

#: ``(params, obs (N, obs_dim), key) -> actions (N, A)``: a policy as the collectors and evaluation call it.
Act = Callable[[PyTree, jax.Array, jax.Array], jax.Array]


@dataclass(frozen=True)
class Algorithm:
    """What an algorithm brings to a run; everything else is :func:`build_run`'s and :func:`train_run`'s.

    Attributes:
        name: the ``--algo`` value and the ``"algo"`` of ``config.json`` (e.g. ``"sac"``).
        title: how output names it (``"SAC"``).
        config_cls: its config, a :class:`~emote_jax.recipes.config.RunConfig` dataclass with an ``algo``
            field (default ``name``) and the algorithm's own fields and ``algo_checks``.
        check_spaces: ``(single obs space, single action space, env id) -> (obs_dim, n_actions)``, or an
            :class:`~emote_jax.errors.UnsupportedSpaceError` naming ``--env``.
        make_callbacks: ``(cfg, obs_dim, n_actions, key) -> (device callbacks, acting network)``.
        make_net: ``(cfg, obs_dim, n_actions) -> acting network``, the same one, without parameters
            (what ``emote-jax eval`` rebuilds before restoring ``policy/``).
        params_slot: the state slot whose ``"params"`` the acting network uses.
        collector_policy: ``(net, on_host) -> policy`` for the collector: a
            :class:`~emote_jax.networks.host.HostPolicy` (``on_host``) or an :data:`Act`.
        eval_policy: ``net -> Act``, the deterministic policy of evaluation (jitted by the caller).
        actions: ``(cfg, single action space) -> Actions``: how the collector checks, stores (the memory's
            action shape and dtype), explores (e.g. epsilon-greedy) and hands to ``env.step`` the policy's
            actions (:mod:`emote_jax.collectors.actions`); evaluation uses its ``to_env``.
        add_options: ``(argparse group, config defaults) -> None``: the CLI options of its own fields.
    """

    name: str
    title: str
    config_cls: type[RunConfig]
    check_spaces: Callable[[gymnasium.Space, gymnasium.Space, str], tuple[int, int]]
    make_callbacks: Callable[[Any, int, int, jax.Array], tuple[list[Callback], Any]]
    make_net: Callable[[Any, int, int], Any]
    params_slot: str
    collector_policy: Callable[[Any, bool], Any]
    eval_policy: Callable[[Any], Act]
    actions: Callable[[Any, gymnasium.Space], Actions]
    add_options: Callable[[argparse._ArgumentGroup, Any], None]


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


#: The progress output of ``emote-jax train``: a bar on a terminal, lines on a pipe (logging.Progress).
ProgressLines = Progress


@dataclass
class Run:
    """The assembled pieces of a run (for users who want to drive or inspect them)."""

    config: RunConfig
    trainer: Trainer
    collector: GymCollector | RayCollector | DeviceCollectorMonitor
    env: gymnasium.vector.VectorEnv | None  # None: a JAX-native env, stepped inside the compiled step
    table: ReplayTable | None  # None: the replay buffer is in the state (the DeviceCollector's slot)
    loader: MemoryLoader | NoBatches
    policy_net: Any  # the acting network (Algorithm.make_callbacks's second value)
    progress: ProgressLines | None
    logger: MetricsLogger | None = None
    checkpointer: Checkpointer | None = None
    algo: Algorithm | None = None
    periodic_eval: PeriodicEvaluation | None = None


def build_run(algo: Algorithm, cfg: RunConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              extra_callbacks: Sequence[Callback | HostCallback] = (), resume_step: int | None = None) -> Run:
    """Assemble env, memory, loader, collector, the algorithm's callbacks and the trainer from ``cfg``.

    ``extra_callbacks`` (device or host) join the trainer after the recipe's own; their metrics are
    logged like the others.

    Every check (spaces, settings) happens here, before anything is compiled. With a ``run_dir`` and
    ``checkpoint_interval > 0`` a :class:`~emote_jax.checkpoint.Checkpointer` writes
    ``run_dir/checkpoints`` (networks, optimizers, hparams, counters, RNG, collector state, memory);
    ``resume`` restores the newest of them that passes its integrity check (``resume_step``: exactly that
    one) before training, and prints which to ``out`` (see docs/decisions/0004). ``cfg.shard_envs`` > 1 (a
    JAX-native env): the state is placed over that many devices, the envs split (:func:`shard_envs`),
    before a checkpoint is restored into it.
    """
    if is_jax_env_id(cfg.env_id):  # collection and replay inside the compiled step: no env, table or loader here
        callbacks, monitor, net = device_pieces(algo, cfg)
        trainer, parts = _assemble(algo, cfg, callbacks, monitor, net, NoBatches(), None, [], out, resume,
                                   extra_callbacks, resume_step)
        if cfg.shard_envs > 1:
            shard_envs(trainer, monitor.collector, env_devices(cfg))
        return Run(cfg, trainer, monitor, None, None, trainer.dataloader, net, **parts)
    cfg.validate()  # refuses --shard-envs too: a gymnasium env's envs are on the host
    check_rollout_length(cfg)
    env = make_vector_env(cfg)
    try:
        obs_dim, n_actions = algo.check_spaces(env.single_observation_space, env.single_action_space, cfg.env_id)
        actions = algo.actions(cfg, env.single_action_space)
        obs_spec, action_shape = memory_spec(env, actions)
        table = ReplayTable(cfg.memory_size, obs_spec, action_shape, action_dtype=actions.dtype, seed=cfg.seed,
                            sampler=replay_sampler(cfg))
        loader = MemoryLoader(table, cfg.batch_size // cfg.rollout_length, cfg.rollout_length,
                              steps_per_call=cfg.steps_per_call, prefetch=cfg.prefetch,
                              n_step=cfg.rollout_targets == "n-step")
        callbacks, net = algo.make_callbacks(cfg, obs_dim, n_actions, jax.random.key(cfg.seed))
        collector = _collector(algo, cfg, env, algo.collector_policy(net, cfg.act_on_host), MemoryProxy(table),
                               actions, out)
        warmup = MemoryWarmup(loader, collector=collector, out=out)  # fills up to one batch, whatever warmup_steps says
        feedback: list[HostCallback] = []
        if cfg.replay == "prioritized":  # TD errors back with the metrics, priorities updated after each call
            callbacks = [*callbacks, PriorityFeedback()]
            feedback.append(PriorityUpdater(table))
        trainer, parts = _assemble(algo, cfg, callbacks, collector, net, loader, table, [warmup], out, resume,
                                   extra_callbacks, resume_step, feedback)
    except BaseException:
        env.close()
        raise
    return Run(cfg, trainer, collector, env, table, loader, net, **parts)


def _assemble(algo: Algorithm, cfg: RunConfig, callbacks: list[Callback], collector: Any, net: Any, loader: Any,
              table: ReplayTable | None, host: list[HostCallback], out: TextIO | None, resume: bool,
              extra_callbacks: Sequence[Callback | HostCallback], resume_step: int | None,
              feedback: Sequence[HostCallback] = ()) -> tuple[Trainer, dict[str, Any]]:
    """What every run has around its collector (a host or a device one): the env-step budget, progress,
    loggers, checkpoints (``collector`` and ``table`` in them when they are host objects), periodic
    evaluation, resume; the trainer over all of it. Returns the trainer and the :class:`Run` fields."""
    host = [collector, *host, EnvStepBudget(collector, cfg.env_steps), *feedback]
    saved = [*callbacks, collector] if isinstance(collector, (GymCollector, RayCollector)) else list(callbacks)
    progress = ProgressLines(collector, cfg.env_steps, cfg.log_interval, out) if out is not None else None
    logger = checkpointer = None
    if cfg.run_dir is not None and cfg.log_metrics:
        wandb = ({"project": cfg.wandb_project, "mode": cfg.wandb_mode, "config": cfg.to_json()}
                 if cfg.wandb_project else None)
        logger = default_logger(cfg.run_dir, collector, log_interval=cfg.metrics_interval, wandb=wandb,
                                names=cfg.metric_names)
    if cfg.run_dir is not None and cfg.checkpoint_interval > 0:
        checkpointer = Checkpointer(saved, Path(cfg.run_dir) / "checkpoints", cfg.checkpoint_interval,
                                    keep=cfg.keep_checkpoints, memory=table)
    periodic = (PeriodicEvaluation(algo, cfg, collector, net, out)
                if cfg.eval_interval > 0 and cfg.eval_episodes > 0 else None)
    host += [h for h in (progress, periodic, logger, checkpointer) if h is not None]
    if resume:
        if cfg.run_dir is None:
            raise ValueError(f"resume needs {type(cfg).__name__}.run_dir (the checkpoints are in "
                             "run_dir/checkpoints)")
        host.append(CheckpointLoader(saved, Path(cfg.run_dir) / "checkpoints", memory=table, step=resume_step,
                                     out=out))
    trainer = Trainer([*callbacks, *host, *extra_callbacks], loader, steps_per_call=cfg.steps_per_call, seed=cfg.seed)
    return trainer, {"progress": progress, "logger": logger, "checkpointer": checkpointer, "algo": algo,
                     "periodic_eval": periodic}


def replay_sampler(cfg: RunConfig) -> Sampler:
    """The memory's sampler per ``cfg.replay``; prioritized replay anneals beta to 1 over the run's
    backprop steps (env steps / envs * backprop steps per vector step)."""
    bp_steps = max(1, int(cfg.env_steps / cfg.num_envs * cfg.bp_steps_per_env_step))
    alpha = cfg.coverage_alpha if cfg.replay == "coverage" else cfg.per_alpha
    return make_sampler(cfg.replay, alpha=alpha, beta=cfg.per_beta, eps=cfg.per_eps, beta_steps=bp_steps)


def _collector(algo: Algorithm, cfg: RunConfig, env: gymnasium.vector.VectorEnv, policy: Any,
               memory: MemoryProxy, actions: Actions, out: TextIO | None = None) -> GymCollector | RayCollector:
    common = dict(params_slot=algo.params_slot, warmup_steps=-(-cfg.warmup_steps // cfg.num_envs),
                  random_warmup=cfg.random_warmup, seed=cfg.seed, actions=actions)
    cap = 1.0 / cfg.bp_steps_per_env_step  # vector steps per backprop step, for the collectors that run ahead
    if cfg.ray_actors:  # actor processes step their own envs (Ray pickles the lambda); the same memory and cap
        return RayCollector(lambda: make_vector_env(cfg), policy, memory, num_actors=cfg.ray_actors, out=out,
                            address=cfg.ray_address, max_env_steps_per_bp_step=cap, batch_steps=cfg.ray_batch_steps,
                            **common)
    if cfg.threaded:  # collects continuously, capped at the configured ratio of env to backprop steps
        return ThreadedGymCollector(env, policy, memory, max_env_steps_per_bp_step=cap, **common)
    return GymCollector(env, policy, memory, bp_steps_per_env_step=cfg.bp_steps_per_env_step, **common)


# ---- the run and its directory --------------------------------------------------------------------------


def train_run(algo: Algorithm, cfg: RunConfig, out: TextIO | None = sys.stdout, resume: bool = False,
              resume_step: int | None = None) -> dict[str, Any]:
    """Train per ``cfg``, evaluate, write ``config.json`` and ``result.json`` to ``run_dir``.

    Returns the result: evaluation returns and their mean, wall time, updates/s, env steps, bp steps.
    ``resume`` continues from the newest intact checkpoint in ``run_dir/checkpoints`` (``resume_step``:
    from exactly that one; see :class:`~emote_jax.checkpoint.CheckpointLoader`). A SIGINT/SIGTERM ends
    training cleanly (final checkpoint, no evaluation; ``result["interrupted_by"]`` names the signal).
    """
    t0 = time.perf_counter()
    run = build_run(algo, cfg, out, resume=resume, resume_step=resume_step)  # the loader prints the step it resumes
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
    if out is not None:
        print(f"emote_jax {algo.title} on {cfg.env_id}: {cfg.env_steps} env steps, {cfg.num_envs} env(s), "
              f"seed {cfg.seed}, devices {jax.devices()}"
              + (f", the envs split over the first {cfg.shard_envs}" if cfg.shard_envs > 1 else ""),
              file=out, flush=True)
    try:
        t_train = time.perf_counter()
        ctx = run.trainer.train()
        train_s = time.perf_counter() - t_train
    finally:
        if run.env is not None:
            run.env.close()
    bp_steps = run.trainer.bp_step - 1
    interrupted = run.trainer.interrupted_by
    if interrupted and out is not None:
        saved = run.checkpointer is not None and run.checkpointer.latest_step is not None
        where = f"; final checkpoint in {Path(cfg.run_dir) / 'checkpoints'}" if saved else ""
        print(f"interrupted by {interrupted} at bp step {bp_steps}{where}; no evaluation"
              + (f". Continue with: emote-jax train --resume --run-dir {cfg.run_dir}" if where else ""),
              file=out, flush=True)
    params = ctx.state[algo.params_slot]["params"]
    returns = [] if interrupted else evaluate(algo, cfg, run.policy_net, params, cfg.eval_episodes,
                                              seed=cfg.seed + 10_000)
    result = {
        "env_id": cfg.env_id, "seed": cfg.seed, "env_steps": run.collector.env_steps,
        "vector_steps": run.collector.vector_steps, "bp_steps": bp_steps,
        "eval_returns": returns, "eval_mean_return": float(np.mean(returns)) if returns else None,
        "eval_std_return": float(np.std(returns)) if returns else None,
        "train_wall_s": train_s, "total_wall_s": time.perf_counter() - t0,
        "updates_per_s": bp_steps / train_s if train_s > 0 else None,
        "train_returns_last10": list(run.collector.episode_returns)[-10:],
        "eval_history": [] if run.periodic_eval is None else [list(h) for h in run.periodic_eval.history],
        "interrupted_by": interrupted,
    }
    if out is not None and returns:
        print(f"evaluation over {len(returns)} deterministic episodes: mean return {result['eval_mean_return']:.1f} "
              f"(std {result['eval_std_return']:.1f}); trained in {train_s:.0f} s", file=out, flush=True)
    if run_dir is not None:
        save_policy(run_dir, params)  # what `emote-jax eval RUN_DIR` loads
        if run.logger is not None:
            result["compile_s"] = run.logger.compile_s
            episodes = next((s for s in run.logger.sources if isinstance(s, EpisodeMetrics)), None)
            if episodes is not None:  # episodes.csv and learning_curve.png
                write_learning_curve(run_dir, episodes, title=f"{algo.title} on {cfg.env_id}, seed {cfg.seed}")
        (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


#: Where :func:`train_run` puts the final policy parameters inside a run directory.
POLICY_DIR = "policy"


def save_policy(run_dir: str | Path, params: PyTree) -> Path:
    """Write ``params`` to ``run_dir/policy`` with Orbax (replacing what is there); returns the path."""
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / POLICY_DIR).absolute()
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    return path


# ---- evaluation ------------------------------------------------------------------------------------------


def run_episodes(env: gymnasium.Env, act: Act, params: PyTree, episodes: int, seed: int,
                 env_action: Callable[[gymnasium.Space, np.ndarray], Any] | None = None) -> list[float]:
    """Returns of ``episodes`` episodes of ``act`` (``(params, obs (1, d), key) -> actions (1, A)``) on ``env``,
    reset with seeds ``seed, seed + 1, ...``. ``env_action(action_space, a)`` turns an action into what
    ``env.step`` takes; by default a [-1, 1] action is rescaled to the Box bounds."""
    to_env = env_action or box_action
    key = jax.random.key(0)
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done, total = False, 0.0
        while not done:
            a = np.asarray(act(params, one_obs(obs), key))[0]
            obs, r, terminated, truncated, _ = env.step(to_env(env.action_space, a))
            total += float(r)
            done = bool(terminated or truncated)
        returns.append(total)
    return returns


def one_obs(obs: Any) -> jax.Array | dict[str, jax.Array]:
    """One env observation as a batch of one: ``(1, d)`` float32, or for a Dict ``{key: (1, *shape)}``
    float32 (uint8 images stay uint8, as the collector stores them)."""
    if isinstance(obs, dict):
        return {k: jnp.asarray(v, jnp.uint8 if np.asarray(v).dtype == np.uint8 else jnp.float32)[None]
                for k, v in obs.items()}
    return jnp.asarray(obs, jnp.float32)[None]


def box_action(space: gymnasium.spaces.Box, a: np.ndarray) -> np.ndarray:
    """A policy action in [-1, 1] rescaled linearly to the bounds of the Box ``space``."""
    low, high = space.low, space.high
    return low + (a + 1.0) * 0.5 * (high - low)


def box_actions(cfg: Any, space: gymnasium.Space) -> BoxActions:
    """``Algorithm.actions`` of a policy in [-1, 1] over a Box (SAC's): :class:`BoxActions`."""
    del cfg
    return BoxActions(space)


def env_action(algo: Algorithm, cfg: RunConfig, space: gymnasium.Space) -> Callable[[gymnasium.Space, np.ndarray], Any]:
    """``(space, one action of the policy) -> what env.step takes``: ``algo.actions(cfg, space).to_env`` of
    one action (evaluation's, the collector's conversion; no exploration)."""
    actions = algo.actions(cfg, space)
    return lambda _space, a: actions.to_env(np.asarray(a)[None])[0]


def evaluate(algo: Algorithm, cfg: RunConfig, net: Any, params: PyTree, episodes: int, seed: int,
             act: Act | None = None) -> list[float]:
    """Returns of ``episodes`` deterministic episodes (``algo.eval_policy``, or ``act``: the same policy
    already jitted) on a fresh single env."""
    act = act if act is not None else jax.jit(algo.eval_policy(net))
    if not has_gymnasium_twin(cfg.env_id):  # brax, gymnax: the episodes run on the device
        return run_jax_episodes(jax_env(cfg), act, params, episodes, seed)
    env = single_env(cfg)  # a jax: env is evaluated on the gymnasium env it ports
    try:
        return run_episodes(env, act, params, episodes, seed, env_action(algo, cfg, env.action_space))
    finally:
        env.close()


class PeriodicEvaluation(HostCallback):
    """Evaluates the deterministic policy during training, each time the collector passes another
    ``cfg.eval_interval`` env steps: ``cfg.eval_episodes`` episodes on a fresh env with the seeds of the
    evaluation at the end (``cfg.seed + 10000, ...``), so the numbers compare. ``history`` holds
    ``(env_steps, mean return)``; a line goes to ``out``. It reads the state and draws from no RNG of the
    run, so a run with it trains exactly as one without it.
    """

    def __init__(self, algo: Algorithm, cfg: RunConfig, collector: GymCollector, net: Any,
                 out: TextIO | None = None, name: str = "periodic_evaluation"):
        super().__init__(name=name, cycle=1, order=900)
        self.algo, self.cfg, self.collector, self.net, self.out = algo, cfg, collector, net, out
        self.history: list[tuple[int, float]] = []
        self._act = jax.jit(algo.eval_policy(net))
        self._done = 0  # evaluations due so far: env_steps // eval_interval when the last one ran

    def begin_training(self, ctx: Context) -> None:
        self._done = self.collector.env_steps // self.cfg.eval_interval  # a resumed run: none for steps before

    def end_cycle(self, ctx: Context) -> None:
        env_steps = self.collector.env_steps
        if env_steps // self.cfg.eval_interval <= self._done:
            return
        self._done = env_steps // self.cfg.eval_interval
        params = ctx.state[self.algo.params_slot]["params"]
        returns = evaluate(self.algo, self.cfg, self.net, params, self.cfg.eval_episodes, self.cfg.seed + 10_000,
                           act=self._act)
        self.history.append((env_steps, float(np.mean(returns))))
        if self.out is not None:
            print(f"evaluation at {env_steps} env steps: mean return {self.history[-1][1]:.1f} over "
                  f"{len(returns)} deterministic episodes", file=self.out, flush=True)
