"""Our side of the benchmarks: emote_jax, driven through its public API.

Run by ``run.py`` with the project's interpreter as a worker subprocess (see ``_worker.py``: JSON
commands on stdin, JSON results on stdout). The driver sets ``JAX_PLATFORMS=cpu`` for the CPU suites.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))  # the working tree's emote_jax, whatever the install state
import _worker  # noqa: E402
import flops  # noqa: E402

import gymnasium  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import emote_jax  # noqa: E402
from emote_jax import Trainer  # noqa: E402
from emote_jax.algorithms import make_sac_callbacks  # noqa: E402


# ---- suite 1: update throughput -------------------------------------------------------------------
class SyntheticLoader:
    """Yields the same pre-made device batch ``n_calls`` times, then ends (so ``Trainer.train`` returns).

    With ``steps_per_call`` K > 1 every array has a leading axis K (the layout ``MemoryLoader``
    produces); with K = 1 there is none. The arrays live on the device already, so a call's only
    host work is the trainer's own.
    """

    def __init__(self, batch: dict, steps_per_call: int, n_calls: int = 0):
        self.batch, self.steps_per_call, self.n_calls = batch, steps_per_call, n_calls

    def __iter__(self):
        for _ in range(self.n_calls):
            yield self.batch


def synthetic_batch(obs_dim: int, n_actions: int, batch: int, k: int, seed: int = 0) -> dict:
    """A batch in ``MemoryLoader``'s layout (rollout length 1), on the default device."""
    rng = np.random.default_rng(seed)
    lead = (k,) if k > 1 else ()
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    data = {
        "observation": {"obs": f32(rng.standard_normal((*lead, batch, obs_dim)))},
        "next_observation": {"obs": f32(rng.standard_normal((*lead, batch, obs_dim)))},
        "actions": f32(rng.uniform(-1, 1, (*lead, batch, n_actions))),
        "rewards": f32(rng.standard_normal((*lead, batch, 1))),
        "masks": f32(np.ones((*lead, batch, 1))),
        "terminated": f32(np.zeros((*lead, batch, 1))),
        "truncated": f32(np.zeros((*lead, batch, 1))),
    }
    return {"default": jax.device_put(data), "batch_size": batch}


_TRAINERS: dict[str, tuple[Trainer, SyntheticLoader]] = {}


class SampledLoader:
    """Yields ``n_calls`` batches freshly sampled by a :class:`MemoryLoader` (host NumPy, K-stacked), then
    ends: the update-only loop with the replay sampling a real run does (sbx's ``train`` samples too)."""

    def __init__(self, memory_loader: Any, n_calls: int = 0):
        self.memory_loader, self.n_calls = memory_loader, n_calls
        self.steps_per_call = memory_loader.steps_per_call

    def __iter__(self):
        for _ in range(self.n_calls):
            yield self.memory_loader.sample_batch()


def filled_table(obs_dim: int, n_actions: int, fill: int, capacity: int = 1_000_000, seed: int = 0) -> Any:
    """A ``ReplayTable(capacity)`` holding ``fill`` random transitions (1000-step episodes)."""
    from emote_jax.memory import ReplayTable

    table = ReplayTable(capacity, {"obs": ((obs_dim,), np.float32)}, (n_actions,), seed=seed)
    rng = np.random.default_rng(seed)
    while table.size() < fill:
        n = min(1000, fill - table.size())
        term = np.zeros(n, bool)
        term[-1] = True
        table.add_transitions(agent_ids=np.zeros(n, np.int64), episode_ids=np.full(n, table.new_episode_id()),
                              steps=np.arange(n), observation={"obs": rng.standard_normal((n, obs_dim), np.float32)},
                              actions=rng.uniform(-1, 1, (n, n_actions)).astype(np.float32),
                              rewards=rng.standard_normal(n).astype(np.float32),
                              next_observation={"obs": rng.standard_normal((n, obs_dim), np.float32)},
                              terminated=term, truncated=np.zeros(n, bool))
    return table


def update_setup(name: str, obs_dim: int, n_actions: int, k: int, batch: int = 256,
                 hidden: list[int] = (256, 256), warmup_calls: int = 3, seed: int = 0, sampled: bool = False,
                 fill: int = 10_000) -> dict:
    """Build SAC (``make_sac_callbacks``) and a Trainer over the synthetic loader (or, with ``sampled``, over
    batches sampled from a ReplayTable holding ``fill`` random transitions); compile and warm up."""
    callbacks, _ = make_sac_callbacks(obs_dim=obs_dim, n_actions=n_actions, key=jax.random.key(seed),
                                      hidden_dims=tuple(hidden))
    if sampled:
        from emote_jax.memory import MemoryLoader

        table = filled_table(obs_dim, n_actions, fill, seed=seed)
        loader = SampledLoader(MemoryLoader(table, batch, 1, steps_per_call=k), warmup_calls)
    else:
        loader = SyntheticLoader(synthetic_batch(obs_dim, n_actions, batch, k, seed), k, warmup_calls)
    trainer = Trainer(callbacks, loader, steps_per_call=k, seed=seed)
    t0 = time.perf_counter()
    trainer.train()
    _TRAINERS[name] = (trainer, loader)
    return {"warmup_s": time.perf_counter() - t0, "compilations": trainer.num_compilations,
            "backend": jax.default_backend()}


def update_run(name: str, n_updates: int) -> dict:
    """Time ``n_updates`` updates (rounded up to whole calls) through ``Trainer.train``."""
    trainer, loader = _TRAINERS[name]
    k = loader.steps_per_call
    loader.n_calls = max(1, -(-n_updates // k))
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    jax.block_until_ready(trainer.ctx.state)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = loader.n_calls * k
    return {"seconds": dt, "cpu_s": cpu, "updates": n, "updates_per_s": n / dt,
            "compilations": trainer.num_compilations}


def update_drop(name: str) -> None:
    _TRAINERS.pop(name, None)


# ---- roofline: the same matrix products without a framework ---------------------------------------
_CHAINS: dict[str, Any] = {}


def _make_chain(gemms: list[tuple[int, int, int]], steps: int, seed: int = 0):
    """A jitted ``lax.scan`` of ``steps`` steps, each doing every product in ``gemms`` once.

    Each left operand is scaled by the scalar carry, and the carry takes the sum of every product,
    so no product can be hoisted out of the loop, sliced or dropped.
    """
    rng = np.random.default_rng(seed)
    lhs = [jnp.asarray(rng.standard_normal((m, k)) * 0.01, jnp.float32) for m, k, _ in gemms]
    rhs = [jnp.asarray(rng.standard_normal((k, n)) * 0.01, jnp.float32) for _, k, n in gemms]

    @jax.jit
    def run(c, lhs, rhs):
        def body(c, _):
            s = jnp.zeros((), jnp.float32)
            for a, b in zip(lhs, rhs):
                s = s + jnp.sum((a * c) @ b)
            return 1.0 + 1e-30 * s, None

        return jax.lax.scan(body, c, None, length=steps)[0]

    return run, lhs, rhs


def roofline_setup(name: str, obs_dim: int, n_actions: int, batch: int = 256, hidden: list[int] = (256, 256),
                   square: bool = False, steps: int = 32) -> dict:
    """Compile the matmul chain of one SAC update's products (or, with ``square``, as many
    ``B x h x h`` products as carry the same FLOPs)."""
    gemms = flops.sac_update_gemms(obs_dim, n_actions, batch, tuple(hidden))
    if square:
        per = 2 * batch * hidden[-1] * hidden[-1]
        gemms = [(batch, hidden[-1], hidden[-1])] * round(flops.gemm_flops(gemms) / per)
    run, lhs, rhs = _make_chain(gemms, steps)
    c = jnp.ones((), jnp.float32)
    jax.block_until_ready(run(c, lhs, rhs))
    _CHAINS[name] = (run, lhs, rhs, steps, flops.gemm_flops(gemms))
    return {"products_per_step": len(gemms), "flops_per_step": flops.gemm_flops(gemms)}


def roofline_run(name: str, calls: int = 4) -> dict:
    run, lhs, rhs, steps, f = _CHAINS[name]
    c = jnp.ones((), jnp.float32)
    t0 = time.perf_counter()
    for _ in range(calls):
        c = run(c, lhs, rhs)
    jax.block_until_ready(c)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "gflops": f * steps * calls / dt / 1e9, "steps_per_s": steps * calls / dt}


# ---- suite 4: compile time ------------------------------------------------------------------------
def compile_time(obs_dim: int, n_actions: int, k: int, batch: int = 256, hidden: list[int] = (256, 256),
                 steady_calls: int = 5) -> dict:
    """First call of ``trainer._compiled`` (trace + lower + compile + run) minus a steady call.

    Meant for a fresh process (the first JAX compilation of a process pays one-off costs too; that
    is what a user pays).
    """
    t_import = time.perf_counter()
    callbacks, _ = make_sac_callbacks(obs_dim=obs_dim, n_actions=n_actions, key=jax.random.key(0),
                                      hidden_dims=tuple(hidden))
    batches = synthetic_batch(obs_dim, n_actions, batch, k)["default"]
    if k == 1:
        batches = jax.tree.map(lambda x: x[None], batches)
    trainer = Trainer(callbacks, SyntheticLoader({}, k), steps_per_call=k)
    jax.block_until_ready((trainer.ctx.state, batches))
    setup_s = time.perf_counter() - t_import
    state, key = trainer.ctx.state, trainer.ctx.key
    c0, t0 = time.process_time(), time.perf_counter()
    state, key, metrics = trainer._compiled(state, key, {"default": batches})
    jax.block_until_ready((state, metrics))
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    steady, steady_cpu = [], []
    for _ in range(steady_calls):
        c0, t0 = time.process_time(), time.perf_counter()
        state, key, metrics = trainer._compiled(state, key, {"default": batches})
        jax.block_until_ready((state, metrics))
        steady.append(time.perf_counter() - t0)
        steady_cpu.append(time.process_time() - c0)
    steady_s = float(np.median(steady))
    return {"first_call_s": first, "steady_call_s": steady_s, "compile_s": first - steady_s,
            "compile_cpu_s": first_cpu - float(np.median(steady_cpu)), "setup_s": setup_s,
            "compilations": trainer.num_compilations}


# ---- suite 2 and 3: SAC on gym envs ---------------------------------------------------------------
def sac_run(env_id: str, env_steps: int, warmup_steps: int = 1000, seed: int = 0, k: int = 1,
            threaded: bool = False, log_interval: int = 100, eval_episodes: int = 0,
            act_on_host: bool = True) -> dict:
    """SAC on ``env_id`` through ``build_sac(SACConfig(...))`` (1 env, one update per env step).

    Returns the progress rows (env step, bp step, seconds, mean return of the last 10 episodes) and,
    with ``eval_episodes``, the deterministic evaluation returns.
    """
    from emote_jax.train import SACConfig, build_sac, evaluate

    cfg = SACConfig(env_id=env_id, env_steps=env_steps, warmup_steps=warmup_steps, seed=seed, steps_per_call=k,
                    threaded=threaded, log_interval=log_interval, eval_episodes=eval_episodes,
                    act_on_host=act_on_host)
    out = io.StringIO()
    run = build_sac(cfg, out)
    t0 = time.perf_counter()
    try:
        ctx = run.trainer.train()
    finally:
        run.env.close()
    wall = time.perf_counter() - t0
    rows = [dict(r) for r in run.progress.rows[:-1]]  # the last row is the whole-run summary
    returns = []
    if eval_episodes:
        returns = evaluate(cfg, run.policy_net, ctx.state["policy"]["params"], eval_episodes, seed=seed + 10_000)
    return {"wall_s": wall, "env_steps": run.collector.env_steps, "bp_steps": run.trainer.bp_step - 1,
            "rows": rows, "eval_returns": returns,
            "episode_returns": list(run.collector.episode_returns)}


def train_sac_settings(env_id: str, env_steps: int, seed: int = 0, eval_episodes: int = 10,
                       checkpoint_interval: int = 10_000) -> dict:
    """The settings :func:`train_sac_run` (with a ``work_dir``) would record for this run today: the default
    ``SACConfig``'s JSON less env id, env steps and seed, so a recorded run can be checked against it."""
    from emote_jax.train import SACConfig

    cfg = SACConfig(env_id=env_id, env_steps=env_steps, seed=seed, eval_episodes=eval_episodes,
                    checkpoint_interval=checkpoint_interval)
    return {k: v for k, v in (cfg.to_json() | {"run_dir": None}).items() if k not in ("env_id", "env_steps", "seed")}


def train_sac_run(env_id: str, env_steps: int, seed: int = 0, eval_episodes: int = 10, work_dir: str | None = None,
                  checkpoint_interval: int = 10_000) -> dict:
    """``emote_jax.train.train_sac`` with the default ``SACConfig`` (what ``emote-jax train --run-dir`` does);
    returns its result and the episodes of ``episodes.csv`` as ``(env step, return)``.

    Without ``work_dir``: in a temporary run dir, no checkpoints. With ``work_dir``: the run dir is kept
    there with a checkpoint every ``checkpoint_interval`` bp steps, and a call that finds a checkpoint in
    it resumes from the newest (``--resume``: exact, the environment's episode restarts), so a run killed
    part-way loses at most ``checkpoint_interval`` steps. ``resumed_from`` lists the bp steps it resumed at.
    """
    import tempfile

    from emote_jax.checkpoint import checkpoint_steps
    from emote_jax.logging import read_episodes_csv
    from emote_jax.train import SACConfig, train_sac

    def run(d: str, interval: int) -> dict:
        ckpts, log = os.path.join(d, "checkpoints"), os.path.join(d, "resumed_from.json")
        steps = checkpoint_steps(ckpts) if os.path.isdir(ckpts) else []
        resumed = json.loads(open(log).read()) if steps and os.path.isfile(log) else []
        if steps:  # (the newest intact one is taken; a damaged newest one is named in a warning)
            resumed.append(steps[-1])
            with open(log, "w") as f:
                json.dump(resumed, f)
        cfg = SACConfig(env_id=env_id, env_steps=env_steps, seed=seed, eval_episodes=eval_episodes, run_dir=d,
                        checkpoint_interval=interval)
        result = train_sac(cfg, out=None, resume=bool(steps))
        if result["interrupted_by"]:
            raise RuntimeError(f"train_sac_run: interrupted by {result['interrupted_by']} at bp step "
                               f"{result['bp_steps']}; run it again with the same work_dir to resume")
        episodes = [(e.env_steps, e.ret) for e in read_episodes_csv(os.path.join(d, "episodes.csv"))]
        return {"result": result, "episodes": episodes, "resumed_from": resumed,
                "config": cfg.to_json() | {"run_dir": None}}

    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="emote_jax_bench_") as d:
            return run(d, 0)
    os.makedirs(work_dir, exist_ok=True)
    return run(work_dir, checkpoint_interval)


# ---- suite 4: memory ------------------------------------------------------------------------------
def memory_fill(transitions: int = 1_000_000, obs_dim: int = 17, n_actions: int = 6, episode_len: int = 1000,
                sample_batch: int = 256, sample_reps: int = 50) -> dict:
    """Peak RSS of a ``ReplayTable(transitions)`` filled with ``episode_len``-step episodes through
    ``add_transitions`` (one call per episode). Run in a fresh process: the peak is process-wide."""
    from emote_jax.memory import ReplayTable

    base = _worker.rss_mb()
    table = ReplayTable(transitions, {"obs": ((obs_dim,), np.float32)}, (n_actions,))
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((episode_len + 1, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, (episode_len, n_actions)).astype(np.float32)
    rew = rng.standard_normal(episode_len).astype(np.float32)
    steps = np.arange(episode_len)
    term = np.zeros(episode_len, bool)
    term[-1] = True
    t0 = time.perf_counter()
    for ep in range(transitions // episode_len):
        eid = table.new_episode_id()
        table.add_transitions(agent_ids=np.zeros(episode_len, np.int64), episode_ids=np.full(episode_len, eid),
                              steps=steps, observation={"obs": obs[:-1] + ep}, actions=act, rewards=rew,
                              next_observation={"obs": obs[1:] + ep}, terminated=term,
                              truncated=np.zeros(episode_len, bool))
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(sample_reps):
        table.sample(sample_batch, 1)
    sample_s = (time.perf_counter() - t0) / sample_reps
    return {"size": table.size(), "rss_before_mb": base, "rss_after_mb": _worker.rss_mb(),
            "peak_rss_mb": _worker.peak_rss_mb(), "fill_s": fill_s, "sample_256_ms": sample_s * 1e3}


def check_env(env_id: str) -> dict:
    env = gymnasium.make(env_id)
    out = {"obs": list(env.observation_space.shape), "act": list(env.action_space.shape)}
    env.close()
    return out


# ---- information -----------------------------------------------------------------------------------
def info() -> dict:
    import importlib.metadata as md

    def v(p: str) -> str | None:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0], "emote_jax": v("emote-jax"), "jax": jax.__version__, "jaxlib": v("jaxlib"),
        "flax": v("flax"), "optax": v("optax"), "numpy": np.__version__, "gymnasium": gymnasium.__version__,
        "mujoco": v("mujoco"), "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
        "emote_jax_file": emote_jax.__file__,
    }


if __name__ == "__main__":
    _worker.serve({
        "info": info, "update_setup": update_setup, "update_run": update_run, "update_drop": update_drop,
        "roofline_setup": roofline_setup, "roofline_run": roofline_run, "compile_time": compile_time,
        "sac_run": sac_run, "memory_fill": memory_fill, "check_env": check_env, "train_sac_run": train_sac_run,
        "train_sac_settings": train_sac_settings,
    })
