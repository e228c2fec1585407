"""What prioritized sampling costs: a batch of 256 from 1M transitions, prioritized against uniform.

Two ``ReplayTable``s of 1,000,000 rows with HalfCheetah shapes (observation 17, action 6), filled with
1000-step episodes, one with the default :class:`~emote_jax.memory.samplers.UniformSampler`, one with a
:class:`~emote_jax.memory.samplers.PrioritizedSampler` whose priorities were set from random TD errors.
Per repetition, in alternating order (so that a slow phase of a busy machine hits both), it times
``table.sample(256)`` (the whole batch: drawing rows, importance weights, gathering every column) over
``--calls`` calls for each table, and ``table.update_priorities`` of 256 rows; also a rollout length of
3 (windows by rejection). Reported: the median and range over repetitions of the per-call time, and the
ratio prioritized / uniform of the medians, measured in the same run. The load average is recorded: on a
shared machine every number moves with it.

    .venv/bin/python benchmarks/replay_sampling.py [--reps 15] [--calls 200]

Writes ``benchmarks/results/replay_sampling-<host>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from emote_jax.memory import PrioritizedSampler, ReplayTable

ROWS, OBS, ACT, EPISODE, BATCH = 1_000_000, 17, 6, 1000, 256


def filled_table(sampler: PrioritizedSampler | None) -> ReplayTable:
    table = ReplayTable(ROWS, {"obs": ((OBS,), np.float32)}, (ACT,), seed=0, sampler=sampler)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((EPISODE + 1, OBS)).astype(np.float32)
    act = rng.uniform(-1, 1, (EPISODE, ACT)).astype(np.float32)
    for _ in range(ROWS // EPISODE):
        eid = table.new_episode_id()
        table.add_transitions(agent_ids=np.zeros(EPISODE, np.int64), episode_ids=np.full(EPISODE, eid),
                              steps=np.arange(EPISODE), observation={"obs": obs[:-1]},
                              next_observation={"obs": obs[1:]}, actions=act,
                              rewards=rng.standard_normal(EPISODE).astype(np.float32))
    if sampler is not None:
        for lo in range(0, ROWS, 100_000):
            rows = np.arange(lo, lo + 100_000)
            table.update_priorities(rows, rng.exponential(1.0, rows.size))
    return table


def per_call(fn: Callable[[], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def summary(times: list[float]) -> dict[str, float]:
    us = [t * 1e6 for t in times]
    return {"median_us": statistics.median(us), "min_us": min(us), "max_us": max(us)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    uniform, prioritized = filled_table(None), filled_table(PrioritizedSampler())
    fill_s = time.perf_counter() - t0
    rng = np.random.default_rng(1)
    rows, td = rng.integers(0, ROWS, BATCH), rng.exponential(1.0, BATCH)
    cases: dict[str, Callable[[], Any]] = {
        "uniform_sample": lambda: uniform.sample(BATCH),
        "prioritized_sample": lambda: prioritized.sample(BATCH),
        "uniform_sample_T3": lambda: uniform.sample(BATCH // 3, 3),
        "prioritized_sample_T3": lambda: prioritized.sample(BATCH // 3, 3),
        "prioritized_update": lambda: prioritized.update_priorities(rows, td),
    }
    for fn in cases.values():  # warm up
        per_call(fn, 10)
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(per_call(cases[name], args.calls))
    load_after = os.getloadavg()

    results = {name: summary(t) for name, t in times.items()}
    med = {name: r["median_us"] for name, r in results.items()}
    ratios = {
        "prioritized_over_uniform_sample": med["prioritized_sample"] / med["uniform_sample"],
        "prioritized_over_uniform_sample_T3": med["prioritized_sample_T3"] / med["uniform_sample_T3"],
        "update_over_uniform_sample": med["prioritized_update"] / med["uniform_sample"],
    }
    out = {
        "benchmark": "replay_sampling", "rows": ROWS, "obs_dim": OBS, "action_dim": ACT, "batch": BATCH,
        "episode_length": EPISODE, "reps": args.reps, "calls_per_rep": args.calls, "fill_s": fill_s,
        "per_call": results, "ratios": ratios,
        "host": socket.gethostname(), "cpus": os.cpu_count(), "loadavg_1_5_15_before": load_before,
        "loadavg_1_5_15_after": load_after, "python": platform.python_version(), "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"replay_sampling-{socket.gethostname()}-{time.strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(out, indent=1))
    for name, r in results.items():
        print(f"{name:24s} median {r['median_us']:8.1f} us  range {r['min_us']:.1f}-{r['max_us']:.1f}")
    for name, v in ratios.items():
        print(f"{name:36s} {v:.2f}x")
    print(f"load {load_before} -> {load_after}; wrote {path}")


if __name__ == "__main__":
    main()
