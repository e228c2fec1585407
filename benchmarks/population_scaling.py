"""What a population costs per member: SAC fully on the device (``--env``, default jax:Pendulum-v1) with P
members in one vmapped program, against P = 1.

For each P in ``--sizes`` it builds P members (SAC's default networks 256x256, batch 256, 1 env each,
``--steps-per-call`` K, a replay of ``--memory-size`` transitions per member), compiles, and times
``--calls`` compiled calls, in rotating order over the repetitions (a slow phase of a busy machine hits
every size). Reported per P: member updates per second (P * K * calls / seconds) and the wall time per
member-update relative to P = 1 (target on the CPU: <= 1.1). The load average is recorded.

    .venv/bin/python benchmarks/population_scaling.py [--sizes 1 2 4 8] [--reps 3] [--calls 20]
        [--env brax:halfcheetah] [--num-envs 1]

Also reported: the wall time of one call of P members against one call of the first size (on a GPU the
target is P = 64 in <= 2x the wall time of P = 1).

Writes ``benchmarks/results/population_scaling-<host>-<date>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import _git_state  # noqa: E402

from emote_jax.population import Population  # noqa: E402
from emote_jax.recipes.common import build_run  # noqa: E402
from emote_jax.recipes.sac import SAC, SACConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--calls", type=int, default=20, help="compiled calls timed per size and repetition")
    p.add_argument("--steps-per-call", type=int, default=32)
    p.add_argument("--memory-size", type=int, default=100_000)
    p.add_argument("--env", default="jax:Pendulum-v1", help="a JAX-native env: jax:Pendulum-v1, brax:halfcheetah, ...")
    p.add_argument("--num-envs", type=int, default=1, help="envs per member")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    host = socket.gethostname().split(".")[0]
    out_path = args.out or Path(__file__).resolve().parent / "results" / \
        f"population_scaling-{host}-{time.strftime('%Y%m%d')}.json"
    base = SACConfig(env_id=args.env, num_envs=args.num_envs, steps_per_call=args.steps_per_call,
                     memory_size=args.memory_size,
                     env_steps=10**9, log_metrics=False, eval_episodes=0, checkpoint_interval=0)
    pops = {}
    for size in args.sizes:
        print(f"building and compiling P={size}", flush=True)
        pop = Population([build_run(SAC, dataclasses.replace(base, seed=i), out=None) for i in range(size)])
        pop.step()  # compile
        pops[size] = pop
    raw: dict[int, list[float]] = {s: [] for s in args.sizes}
    loads = []
    for r in range(args.reps):
        loads.append(os.getloadavg()[0])
        order = args.sizes[r % len(args.sizes):] + args.sizes[:r % len(args.sizes)]
        for size in order:
            pop = pops[size]
            t0 = time.perf_counter()
            for _ in range(args.calls):
                pop.step()  # each fetches its metrics: the host waits for the call, as in training
            raw[size].append(size * args.steps_per_call * args.calls / (time.perf_counter() - t0))
        print(f"rep {r + 1}/{args.reps} (load {loads[-1]:.1f}): "
              + ", ".join(f"P={s} {raw[s][-1]:.0f}" for s in args.sizes) + " member updates/s", flush=True)
    med = {s: statistics.median(v) for s, v in raw.items()}
    first = args.sizes[0]
    result = {
        "what": __doc__.splitlines()[0], "env": args.env, "num_envs_per_member": args.num_envs,
        "networks": [256, 256], "batch": 256,
        "steps_per_call": args.steps_per_call, "memory_size_per_member": args.memory_size, "calls": args.calls,
        "reps": args.reps,
        "member_updates_per_s": {str(s): {"median": med[s], "min": min(v), "max": max(v), "values": v}
                                 for s, v in raw.items()},
        "cost_per_member_update_vs_first": {str(s): med[first] / med[s] for s in args.sizes},
        # the wall time of one call of P members against one of the first size (the GPU target: P=64 <= 2x P=1)
        "wall_per_call_vs_first": {str(s): (s / med[s]) / (first / med[first]) for s in args.sizes},
        "compilations": {str(s): pops[s].num_compilations for s in args.sizes},
        "load": loads, "host": host, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"jax": jax.__version__}, "backend": jax.default_backend(), "command": " ".join(sys.argv),
        "git": _git_state(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    for s in args.sizes:
        print(f"P={s}: {med[s]:.0f} member updates/s, cost per member-update {med[first] / med[s]:.2f}x P={first}, "
              f"wall time per call {(s / med[s]) / (first / med[first]):.2f}x P={first}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
