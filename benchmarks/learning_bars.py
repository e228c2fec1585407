"""The slow tests' learning bars, measured and recorded: each variant on its seeds, one process per run.

Variants (the configs of the slow tests in ``tests/``; a run is ``train_run`` of the recipe with
``checkpoint_interval=0`` and metrics logging off, which changes nothing it learns):

==================  ===========================================================  ==============================
variant             config                                                       bar (every seed)
==================  ===========================================================  ==============================
``sac``             ``SACConfig()``: Pendulum-v1, 15k env steps                  eval >= -250
``sac-hl-gauss``    ``--critic hl-gauss --v-min -1700 --v-max 100``             eval >= -250
``sac-dict``        ``--env DictPendulum-v0`` (angle and velocity, two keys)       eval >= -250
``sac-dict-shared`` ``sac-dict`` with ``--encoder-dims 64 --shared-encoder``       eval >= -250
``sac-device``      ``--env jax:Pendulum-v1`` (envs, replay, updates on the device)  eval >= -250
``sac-emote``       ``--preset emote`` (the reference's settings)                  eval >= -250
``dqn``             ``DQNConfig()``: CartPole-v1, 50k env steps, eval every 2.5k   an eval >= 475 within 50k
``dqn-hl-gauss``    ``--algo dqn --critic hl-gauss --v-min 0 --v-max 100``        an eval >= 475 within 50k
``dqn-device``      ``--algo dqn --env jax:CartPole-v1`` (fully on the device)     an eval >= 475 within 50k
==================  ===========================================================  ==============================

Learning does not depend on timing (the collector steps between compiled calls), so a loaded machine
changes the wall times, not the returns. Writes ``benchmarks/results/learning_bars-<host>-<date>.json``
(runs, per-variant summary, the git state).

    .venv/bin/python benchmarks/learning_bars.py --variants sac sac-dict dqn [--seeds 0 1 2] [--cpus 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import _git_state  # noqa: E402

#: variant -> (algo, config fields, bar kind, bar)
VARIANTS: dict[str, tuple[str, dict, str, float]] = {
    "sac": ("sac", {}, "final", -250.0),
    "sac-hl-gauss": ("sac", {"critic": "hl-gauss", "v_min": -1700.0, "v_max": 100.0}, "final", -250.0),
    "sac-dict": ("sac", {"env_id": "DictPendulum-v0"}, "final", -250.0),
    "sac-dict-shared": ("sac", {"env_id": "DictPendulum-v0", "encoder_dims": [64], "shared_encoder": True}, "final", -250.0),
    "sac-emote": ("sac", {"preset": "emote"}, "final", -250.0),
    "sac-device": ("sac", {"env_id": "jax:Pendulum-v1"}, "final", -250.0),
    "dqn": ("dqn", {"eval_interval": 2_500}, "any", 475.0),
    "dqn-hl-gauss": ("dqn", {"eval_interval": 2_500, "critic": "hl-gauss", "v_min": 0.0, "v_max": 100.0}, "any", 475.0),
    "dqn-device": ("dqn", {"env_id": "jax:CartPole-v1", "eval_interval": 2_500}, "any", 475.0),
}

ONE_RUN = """
import json, sys
from emote_jax.recipes import get_algorithm
from emote_jax.recipes.common import train_run
algo, fields, seed, run_dir = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
A = get_algorithm(algo)
preset = fields.pop("preset", None)
common = dict(seed=seed, run_dir=run_dir, checkpoint_interval=0, log_metrics=False)
cfg = A.config_cls.from_preset(preset, **fields, **common) if preset else A.config_cls(**fields, **common)
res = train_run(A, cfg, out=None)
last = res["train_returns_last10"]
print(json.dumps({"eval_mean_return": res["eval_mean_return"], "eval_returns": res["eval_returns"],
                  "eval_history": res["eval_history"], "last10": sum(last) / len(last), "env_steps": res["env_steps"],
                  "train_wall_s": res["train_wall_s"], "bp_steps": res["bp_steps"],
                  "config": {k: v for k, v in cfg.to_json().items() if k != "run_dir"}}))
"""


def run_pool(jobs: Sequence[tuple[str, list[str]]], n_parallel: int, cpus: Sequence[int] | None,
             done: Callable[[str, dict], None]) -> None:
    """Run ``python -c ONE_RUN``-style commands ``(name, argv)`` ``n_parallel`` at a time, each pinned to one of
    ``cpus`` (``taskset``; None: not pinned), calling ``done(name, last JSON line of its stdout)`` as each ends.
    A failed run stops everything with its stderr's tail."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    pending, running = list(jobs), []
    free = list(cpus) if cpus is not None else None
    try:
        while pending or running:
            while pending and len(running) < n_parallel:
                name, argv = pending.pop(0)
                cpu = free.pop(0) if free else None
                pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
                proc = subprocess.Popen([*pin, sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=env)
                running.append((name, cpu, proc))
            time.sleep(1)
            for item in list(running):
                name, cpu, proc = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                if free is not None and cpu is not None:
                    free.append(cpu)
                out, err = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"{name} failed ({proc.returncode}): {err[-2000:]}")
                done(name, json.loads(out.strip().splitlines()[-1]))
    finally:
        for _, _, proc in running:
            proc.kill()


def passed(kind: str, bar: float, run: dict) -> bool:
    """The slow test's bar: the final evaluation (``final``), or any evaluation during or at the end (``any``)."""
    if kind == "final":
        return run["eval_mean_return"] >= bar
    return any(m >= bar for _, m in [*run["eval_history"], [run["env_steps"], run["eval_mean_return"]]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--cpus", type=int, nargs="+", default=None, help="pin the runs to these cores (one per run)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    host = socket.gethostname().split(".")[0]
    out_path = args.out or HERE / "results" / f"learning_bars-{host}-{time.strftime('%Y%m%d')}.json"
    runs: dict[str, dict] = {}
    result = {"what": __doc__.splitlines()[0], "variants": {v: {"algo": VARIANTS[v][0], "fields": VARIANTS[v][1],
                                                                "bar": VARIANTS[v][2:]} for v in args.variants},
              "seeds": args.seeds, "runs": runs, "host": host, "command": " ".join(sys.argv),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "git_start": _git_state()}

    def done(name: str, r: dict) -> None:
        variant, seed = name.rsplit("/", 1)
        algo, fields, kind, bar = VARIANTS[variant]
        r["passed"] = passed(kind, bar, r)
        runs[name] = r
        first = [s for s, m in r["eval_history"] if m >= bar] if kind == "any" else []
        print(f"{variant} seed {seed}: last-10 {r['last10']:.1f}, eval {r['eval_mean_return']:.1f}"
              + (f", first eval >= {bar:g} at {first[0] if first else None}" if kind == "any" else "")
              + f", {r['train_wall_s']:.0f} s, {'passed' if r['passed'] else 'FAILED'}", flush=True)
        out_path.write_text(json.dumps(result, indent=2))  # after every run: a killed run loses only its own

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(f"{v}/{s}", ["-c", ONE_RUN, VARIANTS[v][0], json.dumps(VARIANTS[v][1]), str(s), f"{tmp}/{v}-{s}"])
                for s in args.seeds for v in args.variants]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        run_pool(jobs, args.jobs, args.cpus, done)
    summary = {}
    for v in args.variants:
        rs = [runs[f"{v}/{s}"] for s in args.seeds]
        evals = [r["eval_mean_return"] for r in rs]
        summary[v] = {"eval_mean": statistics.fmean(evals), "eval_min": min(evals), "eval_max": max(evals),
                      "last10_mean": statistics.fmean(r["last10"] for r in rs), "all_passed": all(r["passed"] for r in rs)}
        print(f"{v}: eval mean {summary[v]['eval_mean']:.1f} [{summary[v]['eval_min']:.1f}, {summary[v]['eval_max']:.1f}]"
              f", {'every seed passed' if summary[v]['all_passed'] else 'NOT every seed passed'}")
    result.update(summary=summary, date=time.strftime("%Y-%m-%d %H:%M:%S"), load_end=os.getloadavg()[0],
                  git=_git_state())
    out_path.write_text(json.dumps(result, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
