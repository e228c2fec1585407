"""What the default loggers cost: the same SAC run with all of them on, then off, alternating.

"On" is what ``emote-jax train`` does: progress lines (to /dev/null), TensorBoard, metrics.csv and W&B-less
default sources (episodes, throughput, system) every ``--metrics-interval`` backprop steps, parameter
histograms every 1000. "Off" is ``log_metrics=False`` and no progress output. Each repetition runs
both, in alternating order (on/off, then off/on, ...), so a slow phase of a busy machine hits both.

Reported per mode: the median training wall time (``Trainer.train``: compile included), the median
steady-state time (after the first compiled call, which a small timer callback marks) and the median
process CPU time, and their ratios on/off. On a busy machine wall-time ratios swing by tens of percent
either way, so it also reports the time spent inside the logging callbacks' host hooks (including the
trainer's work of calling them) as ``1 + hooks / (train - hooks)`` of the "on" runs: the overhead
attributable to logging, and the logger's own work per step measured by replaying the metrics of a
real run through it (best of 5) against the per-step time of the "off" runs. Target: at most 1.05.

    .venv/bin/python benchmarks/logging_overhead.py                  # HitTheMiddle, 16x16 nets: worst case
    .venv/bin/python benchmarks/logging_overhead.py --env Pendulum-v1 --hidden 256,256 --steps 20000

Writes ``benchmarks/results/logging_overhead-<host>-<date>.json``.
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
from typing import Any

import jax

from emote_jax.callback import HostCallback
from emote_jax.context import Context
from emote_jax.logging import default_logger
from emote_jax.train import SACConfig, build_sac


class FirstCallTimer(HostCallback):
    """Marks the end of the first compiled call (its first end_cycle) and the end of training."""

    def __init__(self) -> None:
        super().__init__(name="first_call_timer", cycle=1, order=-1000)
        self.t_first: float | None = None

    def end_cycle(self, ctx: Context) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()


def attribute_hooks(trainer: Any, names: set[str]) -> dict[str, float]:
    """Time every host hook call of the callbacks called ``names``, including the trainer's work of
    calling it (building the host context): what those callbacks cost the training loop."""
    spent = {"s": 0.0, "calls": 0}
    inner = trainer._host_hook

    def timed(cb: Any, hook: str, bp_step: int | None = None) -> None:
        if cb.name not in names:
            return inner(cb, hook, bp_step)
        t = time.perf_counter()
        try:
            return inner(cb, hook, bp_step)
        finally:
            spent["s"] += time.perf_counter() - t
            spent["calls"] += 1

    trainer._host_hook = timed
    return spent


def one_run(cfg: SACConfig, logging_on: bool, tmp: Path, rep: int) -> dict[str, Any]:
    """Train once; returns wall and CPU times (s), the time spent in the logging callbacks, and counts."""
    cfg = SACConfig(**{**cfg.to_json(), "run_dir": str(tmp / f"{'on' if logging_on else 'off'}-{rep}"),
                       "log_metrics": logging_on})
    devnull = open(os.devnull, "w")
    try:
        run = build_sac(cfg, out=devnull if logging_on else None)
        timer = FirstCallTimer()
        run.trainer.host_callbacks.insert(0, timer)
        run.trainer.callbacks.insert(0, timer)
        names = {cb.name for cb in (run.logger, run.progress) if cb is not None}
        spent = attribute_hooks(run.trainer, names)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            run.trainer.train()
        finally:
            run.env.close()
        t1, c1 = time.perf_counter(), time.process_time()
    finally:
        devnull.close()
    return {"logging": logging_on, "train_s": t1 - t0, "steady_s": t1 - (timer.t_first or t0), "cpu_s": c1 - c0,
            "logging_hooks_s": spent["s"], "logging_hook_calls": spent["calls"],
            "bp_steps": run.trainer.bp_step - 1, "env_steps": run.collector.env_steps,
            "compile_s": run.logger.compile_s if run.logger is not None else None}


def logger_cost_per_step(cfg: SACConfig, tmp: Path, steps: int = 3000, repeats: int = 5) -> float:
    """Microseconds per backprop step that the default logger's own work takes (best of ``repeats``):
    the metrics of a real run replayed through its ``end_cycle`` (TensorBoard, CSV, sources, histograms),
    without the training around it, so other processes on the machine barely move the number."""
    cfg = SACConfig(**{**cfg.to_json(), "env_steps": steps, "run_dir": None, "log_metrics": False})
    run = build_sac(cfg, out=None)
    calls: list[Any] = []

    def capture() -> bool:
        if run.trainer.last_metrics:
            calls.append(run.trainer.last_metrics)
        return False

    try:
        ctx = run.trainer.train(shutdown_signal=capture)
    finally:
        run.env.close()
    k = cfg.steps_per_call
    ctxs = [ctx.replace(metrics=m, bp_step=1 + i * k + j) for i, m in enumerate(calls) for j in range(k)]
    best = float("inf")
    for rep in range(repeats):
        logger = default_logger(tmp / f"micro-{rep}", run.collector)
        logger.begin_training(ctx.replace(bp_step=1))
        t = time.perf_counter()
        for c in ctxs:
            logger.end_cycle(c)
        best = min(best, (time.perf_counter() - t) / len(ctxs))
        logger.end_training(ctx.replace(bp_step=len(ctxs) + 1))
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="HitTheMiddle-v0")
    p.add_argument("--hidden", default="16,16")
    p.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each mode")
    p.add_argument("--metrics-interval", type=int, default=SACConfig.metrics_interval)
    p.add_argument("--steps-per-call", type=int, default=1)
    p.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    hidden = tuple(int(x) for x in args.hidden.split(","))
    cfg = SACConfig(env_id=args.env, env_steps=args.steps, hidden_dims=hidden, batch_size=64 if hidden[0] < 64 else 256,
                    warmup_steps=1000, eval_episodes=0, metrics_interval=args.metrics_interval,
                    steps_per_call=args.steps_per_call, log_interval=1000)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            for on in order:
                r = one_run(cfg, on, Path(tmp), rep)
                runs.append(r)
                print(f"rep {rep} logging {'on ' if on else 'off'}: train {r['train_s']:.2f} s, "
                      f"steady {r['steady_s']:.2f} s, cpu {r['cpu_s']:.2f} s, in logging hooks "
                      f"{r['logging_hooks_s']:.2f} s, {r['bp_steps']} bp steps", file=sys.stderr, flush=True)
        logger_us = logger_cost_per_step(cfg, Path(tmp))
    med = {}
    for on in (True, False):
        rs = [r for r in runs if r["logging"] is on]
        med["on" if on else "off"] = {k: statistics.median(r[k] for r in rs) for k in ("train_s", "steady_s", "cpu_s")}
    off_step_us = statistics.median(r["steady_s"] / r["bp_steps"] for r in runs if not r["logging"]) * 1e6
    on_runs = [r for r in runs if r["logging"]]
    # the part of an "on" run spent in the logging callbacks, relative to the same run without it
    attributed = statistics.median(r["logging_hooks_s"] / (r["train_s"] - r["logging_hooks_s"]) for r in on_runs)
    load = os.getloadavg()
    result = {
        "benchmark": "logging_overhead", "config": cfg.to_json(), "reps": args.reps, "runs": runs, "median": med,
        "ratio_train": med["on"]["train_s"] / med["off"]["train_s"],
        "ratio_steady": med["on"]["steady_s"] / med["off"]["steady_s"],
        "ratio_cpu": med["on"]["cpu_s"] / med["off"]["cpu_s"],
        "ratio_attributed": 1.0 + attributed,
        "logger_us_per_step": logger_us, "off_us_per_step": off_step_us,
        "ratio_logger_replayed": 1.0 + logger_us / off_step_us,
        "target_ratio": 1.05,
        "host": socket.gethostname(), "cpus": os.cpu_count(), "loadavg_1_5_15": load,
        "python": platform.python_version(),
        "jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"logging_overhead-{socket.gethostname()}-{time.strftime('%Y%m%d')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"on/off medians: wall time {result['ratio_train']:.3f} (steady state {result['ratio_steady']:.3f}), "
          f"process CPU time {result['ratio_cpu']:.3f}; time inside the logging callbacks: "
          f"{result['ratio_attributed']:.3f}; the logger's own work replayed: {logger_us:.1f} us per step against "
          f"{off_step_us:.0f} us per step without logging, {result['ratio_logger_replayed']:.3f} (target <= 1.05); "
          f"load average {load[0]:.1f} on {os.cpu_count()} CPUs; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
