"""Populations: P members of one run in one compiled program, ``jax.vmap`` over the K-step call.

Each member is a run of its own (:func:`~emote_jax.recipes.common.build_run` with its own seed, and
optionally its own hyperparameters), so member ``i`` starts exactly where the solo run of its config
starts. :class:`Population` stacks the members' states (a leading axis P on every array) and compiles
the first member's K-step call under ``jax.vmap``: the callbacks are the same code for every member, and
whatever differs between members (parameters, optimizer states, hyperparameters that live in the state,
the envs and replay of a :class:`~emote_jax.collectors.device.DeviceCollector`, PRNG keys) is in the
state. Hyperparameters that live in the state (learning rates through ``inject_hyperparams``, gamma, tau,
the reward scale, ...) can therefore differ per member without a recompilation.

Members collect on the device (``--env jax:...``): every member's batch comes from its own slot, so the
loader is a no-op. :meth:`Population.member_state` / :meth:`Population.to_member` take a member out into
its own run again (to evaluate, save or export it like any run).

Several devices: the population axis is sharded over ``jax.devices()`` (a one-axis
:class:`jax.sharding.Mesh` named ``"population"``, every leaf of the state and the keys placed with
``NamedSharding(mesh, PartitionSpec("population"))``). It stays one compiled program (``jax.jit`` of the
vmapped call with those shardings in and out, no ``pmap``); the members never talk to each other inside
it, so each device runs its members' steps alone. Population-based training's exploit gathers across
devices in its own jitted call. ``devices=None`` takes the most devices that divide P (a population of 6
on 4 devices uses 3; it says so in :attr:`placement`). Members built with ``shard_envs`` E > 1 also split
their envs and replay buffers: a two-axis mesh, groups of E devices (:mod:`emote_jax.population_layout`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from emote_jax.collectors.device import DeviceCollectorMonitor
from emote_jax.context import PyTree
from emote_jax.faults import NonFiniteError, first_nonfinite
from emote_jax.population_layout import POPULATION_AXIS, population_devices, population_mesh, state_shardings
from emote_jax.trainer import TRAINER_SLOT, Trainer


def stack(trees: Sequence[PyTree]) -> PyTree:
    """The members' pytrees (same structure, shapes, dtypes) as one with a leading axis P."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree, i: int) -> PyTree:
    """Member ``i`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[i], tree)


class Population:
    """P runs trained together: one compiled, vmapped call advances every member K backprop steps.

    Args:
        runs: the members, built by :func:`~emote_jax.recipes.common.build_run` from configs that differ
            only in what lives in the state (the seed, hyperparameters); their collectors must be
            :class:`~emote_jax.collectors.device.DeviceCollector`\\ s (a JAX-native env).
        devices: the devices to shard the population axis over (:func:`population_devices`: None for the
            most of ``jax.devices()`` that divide P, a count, or a list of devices).

    The members' warm-ups run first, each in its own ``begin_training`` (as a solo run's), then the
    states are stacked. :attr:`metrics` of the last call are ``name -> (P, K, ...)``.
    """

    def __init__(self, runs: Sequence[Any], devices: int | Sequence[Any] | None = None):
        if not runs:
            raise ValueError("Population: expected at least one member run, got none")
        bad = [i for i, r in enumerate(runs) if not isinstance(r.collector, DeviceCollectorMonitor)]
        if bad:
            raise ValueError(f"Population: members {bad} collect on the host; a population collects on the device "
                             "(a JAX-native env: --env jax:<name>)")
        self.runs = list(runs)
        self.trainer: Trainer = runs[0].trainer
        ks = {r.trainer.steps_per_call for r in runs}
        if len(ks) != 1:
            raise ValueError(f"Population: expected one steps_per_call for every member, got {sorted(ks)}")
        self.steps_per_call = ks.pop()
        shards = {max(1, getattr(r.config, "shard_envs", 0)) for r in runs}
        if len(shards) != 1:
            raise ValueError(f"Population: expected one shard_envs for every member, got {sorted(shards)}")
        #: E: each member's envs and replay buffer are split over E devices (1: whole on one)
        self.env_shards = shards.pop()
        # before the warm-ups: a bad count fails at once
        self.devices = population_devices(len(self.runs), devices, self.env_shards)
        for r in self.runs:  # each member's begin_training (its warm-up), as in its solo run; no step yet
            r.trainer.train(lambda: True, handle_signals=False)
        states = [r.trainer.ctx.state for r in self.runs]
        first = jax.tree.structure(states[0])
        for i, s in enumerate(states[1:], 1):
            if jax.tree.structure(s) != first or any(
                    a.shape != b.shape or a.dtype != b.dtype
                    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(s), strict=True)):
                raise ValueError(f"Population: member {i}'s state differs in structure, shapes or dtypes from "
                                 "member 0's; members may differ only in values (seeds, hyperparameters)")
        self.mesh = population_mesh(self.devices, self.env_shards)
        #: the leading axis (the members) split over the mesh's population axis, the other axes whole: the
        #: keys' and the metrics' layout, and the state's but for a collector whose envs are split
        self.sharding = NamedSharding(self.mesh, PartitionSpec(POPULATION_AXIS))
        stacked = stack(states)
        #: a sharding per leaf of :attr:`state` (:func:`~emote_jax.population_layout.state_shardings`)
        self.state_sharding = state_shardings(stacked, self.mesh, self.runs[0].collector.collector)
        self.state = jax.device_put(stacked, self.state_sharding)
        self.key = self.place(jnp.stack([r.trainer.ctx.key for r in self.runs]))
        self.metrics: dict[str, np.ndarray] = {}
        self.num_compilations = 0
        t = self.trainer

        def call(state: PyTree, key: jax.Array) -> tuple[PyTree, jax.Array, tuple[jax.Array, ...]]:
            self.num_compilations += 1  # runs only while tracing
            state, key, packed = t._run_steps(state, key, {})
            ((index, arrays),) = packed.items()
            self._layout = t._layouts[index]
            return state, key, arrays

        self._call = jax.jit(jax.vmap(call), donate_argnums=(0, 1), in_shardings=(self.state_sharding, self.sharding),
                             out_shardings=(self.state_sharding, self.sharding, self.sharding))

    def place(self, tree: PyTree) -> PyTree:
        """``tree`` (leading axis P on every leaf) split over the mesh's population axis, the other axes whole
        (the keys' layout; the state's is :attr:`state_sharding`)."""
        return jax.device_put(tree, self.sharding)

    @property
    def placement(self) -> str:
        """Where the members live, in words: ``"4 members on 2 cpu devices (2 per device)"``, and with
        ``shard_envs`` E > 1 ``"2 members on 2 groups of 2 cpu devices (1 per group, its envs split over 2)"``."""
        n, e, platform = len(self.devices), self.env_shards, self.devices[0].platform
        if e > 1:
            return (f"{self.size} members on {n // e} group{'s' if n > e else ''} of {e} {platform} devices "
                    f"({self.size * e // n} per group, its envs split over {e})")
        return f"{self.size} members on {n} {platform} device{'s' if n > 1 else ''} ({self.size // n} per device)"

    @property
    def size(self) -> int:
        """P, the number of members."""
        return len(self.runs)

    @property
    def bp_step(self) -> int:
        """The next backprop step of every member (they advance together)."""
        return int(self.state[TRAINER_SLOT]["bp_step"][0])

    def step(self) -> dict[str, np.ndarray]:
        """One compiled call: K backprop steps of every member. Returns ``name -> (P, K, ...)`` and raises
        :class:`~emote_jax.faults.NonFiniteError` (naming the member) if a member's step was non-finite."""
        first = self.bp_step
        self.state, self.key, arrays = self._call(self.state, self.key)
        host = [np.asarray(a) for a in arrays]  # (P, rows, K) per dtype
        per_member = [self._layout.unpack([h[i] for h in host]) for i in range(self.size)]
        for i, m in enumerate(per_member):
            if self._layout.flagged([h[i] for h in host], m):
                bad = first_nonfinite(m, first)
                if bad is not None:
                    raise NonFiniteError(bad[0], bad[1], f"a non-finite loss, gradient or parameter in member {i}")
        self.metrics = {k: np.stack([m[k] for m in per_member]) for k in (per_member[0] if per_member else {})}
        return self.metrics

    def train(self, bp_steps: int | None = None, out: TextIO | None = None, log_every_s: float = 10.0,
              should_stop: Callable[[], bool] = lambda: False, pbt: Any = None, *, env_steps: int | None = None,
              hooks: Sequence[Any] = ()) -> None:
        """Advance every member by ``bp_steps`` more backprop steps, or until each member has taken
        ``env_steps`` env steps (whole calls, so it may pass either by up to K - 1), printing a line to
        ``out`` about every ``log_every_s`` seconds: the members' env steps and last-10 returns. After each
        call ``pbt`` (a :class:`~emote_jax.pbt.PopulationBasedTraining`), then each of ``hooks`` (a
        :class:`~emote_jax.logging.population.PopulationLogger`, a
        :class:`~emote_jax.population_checkpoint.PopulationCheckpointer`, ...) gets ``after_call(self)``."""
        if (bp_steps is None) == (env_steps is None):
            raise ValueError(f"Population.train: expected one of bp_steps and env_steps, got bp_steps={bp_steps}, "
                             f"env_steps={env_steps}")
        end = None if bp_steps is None else self.bp_step + bp_steps
        after = ([pbt] if pbt is not None else []) + list(hooks)
        last = time.perf_counter()
        while not should_stop() and (self.bp_step < end if end is not None else self.env_steps < env_steps):
            self.step()
            for hook in after:
                hook.after_call(self)
            if out is not None and time.perf_counter() - last >= log_every_s:
                last = time.perf_counter()
                print(self.summary_line(), file=out, flush=True)

    #: The collector slot's entries the host monitors read (not the envs or the replay buffer).
    _COUNTERS = ("vector_steps", "episodes", "ring_returns", "ring_lengths")

    def sync_monitors(self) -> None:
        """Give each member's host monitor (env steps, episodes) its member's counters."""
        name = self.runs[0].collector.collector.name
        host = {k: np.asarray(self.state[name][k]) for k in self._COUNTERS}  # one small transfer each
        for i, r in enumerate(self.runs):
            r.collector.sync({name: {k: v[i] for k, v in host.items()}})

    @property
    def env_steps(self) -> int:
        """Env steps taken by each member (they advance together)."""
        name = self.runs[0].collector.collector.name
        return int(self.state[name]["vector_steps"][0]) * self.runs[0].collector.num_envs

    def summary_line(self) -> str:
        self.sync_monitors()
        rets = [np.mean(list(r.collector.episode_returns)[-10:]) if r.collector.episode_returns else float("nan")
                for r in self.runs]
        return (f"bp step {self.bp_step - 1:>8} | env steps per member {self.runs[0].collector.env_steps:>8} | "
                f"return (last 10) min {np.nanmin(rets):8.1f} median {np.nanmedian(rets):8.1f} "
                f"max {np.nanmax(rets):8.1f}" if not np.all(np.isnan(rets)) else
                f"bp step {self.bp_step - 1:>8} | env steps per member {self.runs[0].collector.env_steps:>8}")

    def member_state(self, i: int) -> tuple[PyTree, jax.Array]:
        """Member ``i``'s state and key, as its solo run's trainer holds them."""
        return unstack(self.state, i), self.key[i]

    def to_member(self, i: int) -> Any:
        """Member ``i``'s run with its trainer holding the member's current state (to evaluate, save,
        export or go on training it alone)."""
        state, key = self.member_state(i)
        state, key_data = jax.device_get((state, jax.random.key_data(key)))  # off its device: a solo run again
        key = jax.random.wrap_key_data(jnp.asarray(key_data), impl=jax.random.key_impl(self.key))
        run = self.runs[i]
        run.trainer.ctx = run.trainer.ctx.replace(state=jax.tree.map(jnp.asarray, state), key=key)
        run.collector.sync(run.trainer.ctx.state)
        return run


# ---- emote-jax train --population P [--sweep name=v1,v2,...] ------------------------------------------------

#: The SAC settings a population may vary across members: each lives in the state (an optimizer's
#: injected hyperparameter, a target's hparams, the alpha slot), so members share one program.
SWEEPABLE = ("lr_q", "lr_policy", "lr_alpha", "gamma", "tau", "reward_scale", "max_alpha", "max_grad_norm",
             "initial_alpha")


def parse_sweep(text: str) -> tuple[str, tuple[float, ...]]:
    """``"lr_q=1e-4,3e-4"`` -> ``("lr_q", (1e-4, 3e-4))``; a ConfigError naming ``--sweep`` otherwise."""
    from emote_jax.errors import ConfigError  # noqa: PLC0415

    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in SWEEPABLE:
        raise ConfigError(f"--sweep {text!r}: expected NAME=V1,V2,... with NAME one of {', '.join(SWEEPABLE)} "
                          "(the settings that live in the training state)", "--sweep")
    try:
        vals = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--sweep {text!r}: expected numbers after '=', e.g. lr_q=1e-4,3e-4", "--sweep") from None
    if not vals:
        raise ConfigError(f"--sweep {text!r}: expected at least one value after '='", "--sweep")
    return name, vals


def member_configs(cfg: Any, size: int, sweep: str | None = None) -> list[Any]:
    """The members' configs: seeds ``cfg.seed + i``; with ``sweep``, member ``i`` takes value ``i % L`` of the
    swept setting's L values. Members train without their own logs, checkpoints or periodic evaluation."""
    import dataclasses  # noqa: PLC0415

    from emote_jax.errors import ConfigError  # noqa: PLC0415

    if size < 1:
        raise ConfigError(f"--population {size} is not valid: expected >= 1", "--population")
    if sweep and getattr(cfg, "algo", "sac") != "sac":  # SWEEPABLE lists where SAC keeps each setting
        raise ConfigError(f"--sweep with --algo {cfg.algo}: only SAC's settings are known to live in the state; "
                          "drop --sweep (members still differ by seed)", "--sweep")
    name, values = parse_sweep(sweep) if sweep else (None, ())
    out = []
    for i in range(size):
        change: dict[str, Any] = {"seed": cfg.seed + i, "run_dir": None, "log_metrics": False,
                                  "checkpoint_interval": 0, "eval_interval": 0}
        if name is not None:
            change[name] = values[i % len(values)]
        out.append(dataclasses.replace(cfg, **change))
    return out


#: Where each SAC setting of ``--pbt-perturb`` lives in the state: PopulationBasedTraining's "slot/name".
PBT_PATHS = {"lr_q": ("q1/learning_rate", "q2/learning_rate"), "lr_policy": ("policy/learning_rate",),
             "lr_alpha": ("alpha/learning_rate",), "gamma": ("q_target/gamma",), "tau": ("q_target/tau",),
             "reward_scale": ("q_target/reward_scale",),
             "max_grad_norm": tuple(f"{s}/max_grad_norm" for s in ("q1", "q2", "policy", "alpha"))}


def pbt_hyperparams(perturb: str | None, sweep: str | None, algo: str = "sac") -> list[str]:
    """The state paths ``--pbt-perturb`` names (default: the ``--sweep`` setting, else lr_q and lr_policy);
    a ConfigError naming the option otherwise."""
    from emote_jax.errors import ConfigError  # noqa: PLC0415

    if algo != "sac":
        raise ConfigError(f"--pbt-interval with --algo {algo}: only SAC's settings are mapped into the state", "--pbt-interval")
    names = [n.strip().replace("-", "_") for n in perturb.split(",") if n.strip()] if perturb else \
        [parse_sweep(sweep)[0]] if sweep else ["lr_q", "lr_policy"]
    bad = [n for n in names if n not in PBT_PATHS]
    if bad or not names:
        raise ConfigError(f"--pbt-perturb {perturb!r}: expected names among {', '.join(PBT_PATHS)}"
                          + (f"; {', '.join(bad)} cannot be perturbed" if bad else ""), "--pbt-perturb")
    return [p for n in names for p in PBT_PATHS[n]]


#: In a population's run directory: its settings (``--resume`` reads them) and its checkpoints.
POPULATION_CONFIG, POPULATION_CHECKPOINTS = "population-config.json", "population-checkpoints"


def train_population(algo: Any, cfg: Any, size: int, sweep: str | None = None, out: TextIO | None = None,
                     pbt_interval: int = 0, pbt_perturb: str | None = None, resume: bool = False,
                     resume_step: int | None = None, devices: int | None = None) -> dict:
    """Train ``size`` members of ``cfg`` (seeds ``cfg.seed + i``, ``sweep`` as :func:`member_configs`) in one
    vmapped program until each has taken ``cfg.env_steps`` env steps; evaluate each; write
    ``run_dir/member-<i>/`` (``config.json``, ``policy/``, ``result.json``: a run directory that
    ``emote-jax eval`` reads) and ``run_dir/population.json`` (the result and the shared config). Returns the
    population's result. ``pbt_interval`` > 0: population-based training
    (:class:`~emote_jax.pbt.PopulationBasedTraining`) of the settings ``pbt_perturb`` names; its exploits
    are in the result's ``pbt``. With a ``run_dir`` and ``cfg.checkpoint_interval`` > 0 the population is
    saved every that many bp steps and at the end (``run_dir/population-checkpoints``); ``resume`` goes on
    from the newest one (or ``resume_step``), bitwise, PBT's draws, schedule and history included. ``devices``: how many of
    ``jax.devices()`` to shard the members over (:func:`population_devices`; None: the most that divide P)."""
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from emote_jax.envs.jax_env import is_jax_env_id  # noqa: PLC0415
    from emote_jax.errors import ConfigError  # noqa: PLC0415
    from emote_jax.recipes.common import build_run, evaluate, save_policy  # noqa: PLC0415
    from emote_jax.recipes.device import env_devices  # noqa: PLC0415

    if not is_jax_env_id(cfg.env_id):
        raise ConfigError(f"--population {size} needs a JAX-native env (--env jax:<name>, brax:<name> or gymnax:<name>): the "
                          f"members collect on the device; got --env {cfg.env_id}", "--population")
    configs = member_configs(cfg, size, sweep)
    env_devices(cfg)  # --shard-envs E: more devices than this process sees is refused, naming the option
    try:
        population_devices(size, devices, max(1, cfg.shard_envs))
    except ValueError as e:
        msg = str(e).replace("Population: devices=", "--devices ")
        raise ConfigError(msg.replace("Population: ", f"--devices {devices}: " if devices is not None else ""),
                          "--devices") from None
    pbt = None
    if pbt_interval:
        from emote_jax.pbt import PopulationBasedTraining  # noqa: PLC0415

        if size < 2:
            raise ConfigError(f"--pbt-interval needs --population >= 2, got {size}", "--pbt-interval")
        pbt = PopulationBasedTraining(pbt_hyperparams(pbt_perturb, sweep, getattr(cfg, "algo", "sac")), pbt_interval,
                                      seed=cfg.seed, out=out)
    t0 = time.perf_counter()
    pop = Population([build_run(algo, c, out=None) for c in configs], devices=devices)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    ckpt = None
    if run_dir is not None and cfg.checkpoint_interval > 0:
        from emote_jax.population_checkpoint import PopulationCheckpointer, restore_population  # noqa: PLC0415

        ckpt = PopulationCheckpointer(run_dir / POPULATION_CHECKPOINTS, cfg.checkpoint_interval, cfg.keep_checkpoints,
                                      pbt=pbt)
        if resume:
            step = restore_population(pop, run_dir / POPULATION_CHECKPOINTS, resume_step, pbt=pbt)
            if out is not None:
                print(f"resumed the population from its checkpoint of bp step {step} ({pop.env_steps} env steps per "
                      "member)", file=out, flush=True)
    elif resume:
        raise ConfigError("--resume of a population needs its checkpoints (it was trained with --checkpoint-interval 0 "
                          "or without --run-dir)", "--resume")
    if run_dir is not None and not resume:  # config.json: the shared settings, as any run directory has
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_json(), indent=2))
        (run_dir / POPULATION_CONFIG).write_text(json.dumps(
            {"config": cfg.to_json(), "population": size, "sweep": sweep, "pbt_interval": pbt_interval,
             "pbt_perturb": pbt_perturb}, indent=2))
    if out is not None:
        print(f"emote_jax {algo.title} population of {size} on {cfg.env_id}: {cfg.env_steps} env steps per member, "
              f"seeds {cfg.seed}..{cfg.seed + size - 1}" + (f", sweep {sweep}" if sweep else "")
              + f"; {pop.placement}", file=out, flush=True)
    logger = None
    if run_dir is not None and cfg.log_metrics:  # one series per member and a summary (emote_jax.logging.population)
        from emote_jax.logging.population import PopulationLogger  # noqa: PLC0415
        from emote_jax.logging.writers import CSVWriter, TensorboardWriter  # noqa: PLC0415

        logger = PopulationLogger([TensorboardWriter(run_dir / "tensorboard"), CSVWriter(run_dir / "metrics.csv")],
                                  cfg.metrics_interval, start_step=pop.bp_step)
    t_train = time.perf_counter()
    try:
        pop.train(env_steps=cfg.env_steps, out=out, pbt=pbt, hooks=[h for h in (logger, ckpt) if h is not None])
        if logger is not None and pop.metrics:
            logger.after_call(pop, force=True)
        if ckpt is not None:
            ckpt.after_call(pop, force=True)
    finally:
        if logger is not None:
            logger.close()
    train_s = time.perf_counter() - t_train
    members = []
    for i, c in enumerate(configs):
        run = pop.to_member(i)
        params = run.trainer.ctx.state[algo.params_slot]["params"]
        returns = evaluate(algo, c, run.policy_net, params, c.eval_episodes, seed=c.seed + 10_000)
        member = {"member": i, "seed": c.seed, "env_steps": run.collector.env_steps,
                  "bp_steps": run.trainer.bp_step - 1, "eval_returns": returns,
                  "eval_mean_return": float(np.mean(returns)) if returns else None,
                  "train_returns_last10": list(run.collector.episode_returns)[-10:]}
        if sweep:
            name = parse_sweep(sweep)[0]
            member[name] = getattr(c, name)
        members.append(member)
        if run_dir is not None:
            mdir = run_dir / f"member-{i}"
            mdir.mkdir(parents=True, exist_ok=True)
            (mdir / "config.json").write_text(json.dumps(c.to_json(), indent=2))
            save_policy(mdir, params)
            (mdir / "result.json").write_text(json.dumps(member, indent=2))
    means = [m["eval_mean_return"] for m in members if m["eval_mean_return"] is not None]
    result = {"env_id": cfg.env_id, "population": size, "sweep": sweep, "env_steps_per_member": cfg.env_steps,
              "train_wall_s": train_s, "total_wall_s": time.perf_counter() - t0,
              "member_updates_per_s": size * (pop.bp_step - 1) / train_s if train_s > 0 else None,
              "compilations": pop.num_compilations, "members": members,
              "pbt": None if pbt is None else {"interval": pbt_interval, "hyperparams": [
                  "/".join(h) for h in pbt.hyperparams], "exploits": pbt.history},
              "eval_mean_return": {"min": min(means), "median": float(np.median(means)), "max": max(means)}
              if means else None}
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "population.json").write_text(json.dumps({**result, "config": cfg.to_json()}, indent=2))
    if out is not None:
        for m in members:
            extra = f", {parse_sweep(sweep)[0]} {m[parse_sweep(sweep)[0]]:g}" if sweep else ""
            shown = f"{m['eval_mean_return']:.1f}" if m["eval_mean_return"] is not None else "not evaluated"
            print(f"member {m['member']} (seed {m['seed']}{extra}): evaluation mean return {shown}", file=out)
        print(f"trained {size} members in {train_s:.0f} s ({result['member_updates_per_s']:.0f} member updates/s)",
              file=out, flush=True)
    return result
