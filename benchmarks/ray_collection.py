"""What Ray actors buy on a slow env: env steps/s of 1, 2 and 4 actors against the local collector, and
the learner's updates/s with actors attached against update-only.

The env stands for a game: Pendulum-v1 with a wrapper that burns ``--cost-ms`` of CPU per step (a busy
loop, 5 ms by default), one env per actor. Two parts, in one Ray session:

* collection only: the policy is SAC's (256x256) NumPy mirror at its initial parameters; no learner.
  ``local`` is the GymCollector stepping the env in this process; ``ray<N>`` is the RayCollector with
  N actors, driven without a cap (the learner only stores what arrives). Each variant runs ``--seconds``
  after its start-up; reported: env steps/s (stored transitions per second of wall time).
* the learner: SAC at one update per compiled call (Pendulum's shapes, batch 256) over a pre-filled
  memory. ``update_only`` has no collector (the benchmark's update suite); ``learner_ray<N>`` has N
  actors attached with the default cap (1 vector step per backprop step), so the actors feed it as a
  real run would. Reported: updates/s and env steps/s.

Repetitions rotate the order of the variants. On a 2-core machine the actors compete with the learner
for the cores: the figures say where it saturates. Writes
``benchmarks/results/ray_collection-<host>-<date>.json``.

    .venv/bin/python benchmarks/ray_collection.py [--reps 3] [--seconds 15] [--cost-ms 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_side  # noqa: E402  (the update-only trainer of the update suite)
from run import _git_state  # noqa: E402

from emote_jax import Trainer  # noqa: E402
from emote_jax.algorithms import make_sac_callbacks  # noqa: E402
from emote_jax.collectors import GymCollector, memory_spec  # noqa: E402
from emote_jax.collectors.ray import RayCollector, import_ray  # noqa: E402
from emote_jax.context import Context  # noqa: E402
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable  # noqa: E402
from emote_jax.networks.host import GaussianHostPolicy  # noqa: E402
from emote_jax.networks.sac import GaussianPolicy  # noqa: E402


class BurnCPU(gymnasium.Wrapper):
    """Spends ``cost_s`` of CPU time (a busy loop on ``time.thread_time``) in every ``step``: a game's
    simulation stands behind it. Wall time would not do: an actor the OS deschedules would get its
    steps cheaper."""

    def __init__(self, env: gymnasium.Env, cost_s: float):
        super().__init__(env)
        self.cost_s = cost_s

    def step(self, action: Any) -> Any:
        end = time.thread_time() + self.cost_s  # CPU time: a busy machine stretches the step, as it would a game's
        while time.thread_time() < end:
            pass
        return self.env.step(action)


def slow_envs(cost_ms: float, n: int = 1) -> gymnasium.vector.VectorEnv:
    """``n`` Pendulum-v1 envs at ``cost_ms`` per step (defined here: Ray pickles it by value)."""
    return gymnasium.vector.SyncVectorEnv([lambda: BurnCPU(gymnasium.make("Pendulum-v1"), cost_ms / 1000)
                                           for _ in range(n)])


def _table(capacity: int = 200_000) -> ReplayTable:
    env = slow_envs(0.0)
    spec, shape = memory_spec(env)
    env.close()
    return ReplayTable(capacity, spec, shape, seed=0)


def _policy() -> tuple[GaussianHostPolicy, Any]:
    net = GaussianPolicy(action_dim=1, hidden_dims=(256, 256))
    return GaussianHostPolicy(net), net.init(jax.random.key(0), np.zeros((1, 3), np.float32))["params"]


def collect_local(cost_ms: float, seconds: float) -> float:
    policy, params = _policy()
    col = GymCollector(slow_envs(cost_ms), policy, MemoryProxy(_table()), close_env=True)
    ctx = Context(state={"policy": {"params": params}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=1)
    col.begin_training(ctx)
    t0, n0, step = time.perf_counter(), col.env_steps, 1
    while time.perf_counter() - t0 < seconds:
        col.end_cycle(ctx.replace(bp_step=step))
        step += 1
    rate = (col.env_steps - n0) / (time.perf_counter() - t0)
    col.end_training(ctx)
    return rate


def collect_ray(actors: int, cost_ms: float, seconds: float) -> float:
    policy, params = _policy()
    col = RayCollector(functools.partial(slow_envs, cost_ms), policy, MemoryProxy(_table()), num_actors=actors,
                       max_env_steps_per_bp_step=None, warmup_steps=2 * actors)
    ctx = Context(state={"policy": {"params": params}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=1)
    col.begin_training(ctx)  # starts the actors; returns once the warm-up steps arrived (they are up)
    try:
        t0, n0, step = time.perf_counter(), col.env_steps, 1
        while time.perf_counter() - t0 < seconds:
            col.end_cycle(ctx.replace(bp_step=step))
            step += 1
            time.sleep(0.0005)  # what the learner would spend in its update, roughly, at no cost here
        return (col.env_steps - n0) / (time.perf_counter() - t0)
    finally:
        col.end_training(ctx)


def learner_ray(actors: int, cost_ms: float, seconds: float) -> tuple[float, float]:
    """Updates/s and env steps/s of SAC (K = 1) with ``actors`` actors feeding it (default cap)."""
    table = _table()
    loader = MemoryLoader(table, 256, 1)
    callbacks, net = make_sac_callbacks(obs_dim=3, n_actions=1, key=jax.random.key(0))
    col = RayCollector(functools.partial(slow_envs, cost_ms), GaussianHostPolicy(net), MemoryProxy(table),
                       num_actors=actors, warmup_steps=300, random_warmup=True, max_env_steps_per_bp_step=1.0)
    trainer = Trainer([*callbacks, col, MemoryWarmup(loader, collector=col)], loader, seed=0)
    marks: dict[str, float] = {}

    def stop() -> bool:
        if trainer.bp_step > 50 and "t0" not in marks:  # compiled and warm: start the clock
            marks.update(t0=time.perf_counter(), bp0=trainer.bp_step, env0=col.env_steps)
        return "t0" in marks and time.perf_counter() - marks["t0"] >= seconds

    trainer.train(stop, handle_signals=False)
    dt = time.perf_counter() - marks["t0"]
    return (trainer.bp_step - marks["bp0"]) / dt, (col.env_steps - marks["env0"]) / dt


def update_only(seconds: float) -> float:
    ours_side.update_setup("ray_bench_update_only", obs_dim=3, n_actions=1, k=1, sampled=True)
    ours_side.update_run("ray_bench_update_only", 50)  # warm
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        n += 200
        ours_side.update_run("ray_bench_update_only", 200)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per variant and repetition")
    p.add_argument("--cost-ms", type=float, default=5.0, help="CPU burnt per env step")
    p.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    host = socket.gethostname().split(".")[0]
    out_path = args.out or Path(__file__).resolve().parent / "results" / \
        f"ray_collection-{host}-{time.strftime('%Y%m%d')}.json"
    ray = import_ray()
    ray.init(num_cpus=max(args.actors) + 1, include_dashboard=False, log_to_driver=False, configure_logging=False)

    collect = {"local": lambda: collect_local(args.cost_ms, args.seconds),
               **{f"ray{n}": functools.partial(collect_ray, n, args.cost_ms, args.seconds) for n in args.actors}}
    learner = {"update_only": lambda: (update_only(args.seconds), 0.0),
               **{f"learner_ray{n}": functools.partial(learner_ray, n, args.cost_ms, args.seconds)
                  for n in args.actors}}
    env_rate: dict[str, list[float]] = {n: [] for n in collect}
    upd: dict[str, list[float]] = {n: [] for n in learner}
    learner_env: dict[str, list[float]] = {n: [] for n in learner}
    loads = []
    try:
        for r in range(args.reps):
            loads.append(os.getloadavg()[0])
            names = list(collect)
            for name in names[r % len(names):] + names[:r % len(names)]:
                env_rate[name].append(collect[name]())
            names = list(learner)
            for name in names[r % len(names):] + names[:r % len(names)]:
                u, e = learner[name]()
                upd[name].append(u)
                learner_env[name].append(e)
            print(f"rep {r + 1}/{args.reps} (load {loads[-1]:.1f}): env steps/s "
                  + ", ".join(f"{n} {v[-1]:.0f}" for n, v in env_rate.items()) + "; updates/s "
                  + ", ".join(f"{n} {v[-1]:.0f}" for n, v in upd.items()), flush=True)
    finally:
        ray.shutdown()

    def summary(values: dict[str, list[float]]) -> dict[str, Any]:
        return {n: {"median": statistics.median(v), "min": min(v), "max": max(v), "values": v}
                for n, v in values.items() if v}

    med = {n: statistics.median(v) for n, v in env_rate.items()}
    umed = {n: statistics.median(v) for n, v in upd.items()}
    result = {
        "what": __doc__.splitlines()[0], "env": f"Pendulum-v1 + {args.cost_ms} ms of CPU per step, 1 env per actor",
        "policy": "SAC 256x256, NumPy mirror", "seconds_per_variant": args.seconds, "reps": args.reps,
        "collection_env_steps_per_s": summary(env_rate),
        "collection_over_local": {n: med[n] / med["local"] for n in med if n != "local"},
        "ideal_env_steps_per_s_per_actor": 1000.0 / args.cost_ms,
        "learner_updates_per_s": summary(upd),
        "learner_env_steps_per_s": summary({n: v for n, v in learner_env.items() if n != "update_only"}),
        "learner_over_update_only": {n: umed[n] / umed["update_only"] for n in umed if n != "update_only"},
        "load": loads, "host": host, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"jax": jax.__version__, "ray": ray.__version__}, "command": " ".join(sys.argv),
        "git": _git_state(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    print("env steps/s: " + ", ".join(f"{n} {v:.0f}" for n, v in med.items())
          + f" (one actor's ideal {1000 / args.cost_ms:.0f}); updates/s: "
          + ", ".join(f"{n} {v:.0f}" for n, v in umed.items()))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
