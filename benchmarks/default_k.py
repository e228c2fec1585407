"""The default-K evidence: SAC on Pendulum-v1 at K = 1, 8 and 32 backprop steps per compiled call, 3 seeds
each, at the recipe's defaults otherwise (15,000 env steps, one update per env step).

Each run is ``emote-jax train``'s ``train_run`` in its own process (``--jobs`` at a time). Learning does
not depend on timing (the host collector steps between calls), so a loaded machine changes the wall
times, not the returns. Reported per run: the mean return of the last 10 training episodes, the final
deterministic evaluation (10 episodes) and the wall time; per K the mean and spread over seeds. Writes
``benchmarks/results/default_k-<host>-<date>.json``.

    .venv/bin/python benchmarks/default_k.py [--ks 1 8 32] [--seeds 0 1 2] [--jobs 2] [--steps 15000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from learning_bars import run_pool  # noqa: E402
from run import _git_state  # noqa: E402

ONE_RUN = """
import json, sys
from emote_jax.recipes.sac import SAC, SACConfig
from emote_jax.recipes.common import train_run
k, seed, steps, run_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = SACConfig(env_id="Pendulum-v1", env_steps=steps, seed=seed, steps_per_call=k, run_dir=run_dir,
                checkpoint_interval=0, log_metrics=False)
res = train_run(SAC, cfg, out=None)
print(json.dumps({"eval_mean_return": res["eval_mean_return"], "eval_returns": res["eval_returns"],
                  "last10": sum(res["train_returns_last10"]) / len(res["train_returns_last10"]),
                  "train_wall_s": res["train_wall_s"], "bp_steps": res["bp_steps"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=15_000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    host = socket.gethostname().split(".")[0]
    out_path = args.out or HERE / "results" / f"default_k-{host}-{time.strftime('%Y%m%d')}.json"
    jobs = [(k, s) for s in args.seeds for k in args.ks]
    runs: dict[str, dict] = {}

    def done(name: str, r: dict) -> None:
        runs[name] = r
        print(f"{name}: last-10 {r['last10']:.0f}, eval {r['eval_mean_return']:.0f}, {r['train_wall_s']:.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cpus = list(range(args.jobs)) if args.jobs > 1 else None  # one core per run
        run_pool([(f"k{k}-s{s}", ["-c", ONE_RUN, str(k), str(s), str(args.steps), f"{tmp}/k{k}-s{s}"]) for k, s in jobs],
                 args.jobs, cpus, done)
    per_k = {}
    for k in args.ks:
        last10 = [runs[f"k{k}-s{s}"]["last10"] for s in args.seeds]
        evals = [runs[f"k{k}-s{s}"]["eval_mean_return"] for s in args.seeds]
        per_k[str(k)] = {"last10_mean": statistics.fmean(last10), "last10_min": min(last10), "last10_max": max(last10),
                         "eval_mean": statistics.fmean(evals), "eval_min": min(evals), "eval_max": max(evals),
                         "wall_s_mean": statistics.fmean(runs[f"k{k}-s{s}"]["train_wall_s"] for s in args.seeds)}
    result = {"what": __doc__.splitlines()[0], "env_id": "Pendulum-v1", "env_steps": args.steps, "seeds": args.seeds,
              "ks": args.ks, "jobs": args.jobs, "runs": runs, "per_k": per_k, "host": host,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_end": os.getloadavg()[0],
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "command": " ".join(sys.argv),
              "git": _git_state()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    for k, v in per_k.items():
        print(f"K={k}: last-10 mean {v['last10_mean']:.0f} [{v['last10_min']:.0f}, {v['last10_max']:.0f}], eval mean "
              f"{v['eval_mean']:.0f} [{v['eval_min']:.0f}, {v['eval_max']:.0f}], {v['wall_s_mean']:.0f} s")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
