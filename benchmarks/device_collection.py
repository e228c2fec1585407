"""What collecting on the device buys: SAC env steps/s with the envs and the replay inside the compiled
step, against the host collector on the same env and against update-only throughput.

Three ways to run SAC's default networks (256x256, batch 256, one update per env step, 1 env) on Pendulum:

* ``host``: ``--env Pendulum-v1``, gymnasium stepped by the host collector, NumPy replay table, loader;
* ``device``: ``--env jax:Pendulum-v1``, the same dynamics stepped by the DeviceCollector inside the
  compiled call, the replay buffer in the state, no loader;
* ``update_only``: the same SAC callbacks over one synthetic batch repeated (no env, no sampling): the
  ceiling of what a step can cost.

Each at K = 1 and K = 32 steps per compiled call. Per repetition, in rotating order (a slow phase of a
busy machine hits every variant), it times ``--steps`` backprop steps of an already compiled run.
Reported: the number of copies of a replay array in each device run's compiled call (0: the buffer is
written in place), the median and range of steps/s per variant, and the ratios device / update_only (target:
>= 0.95, since no host work remains) and device / host, measured in the same run: as the ratio of the
medians and as the median of the per-repetition ratios ("paired": the two variants of a ratio run next to
each other in every repetition, so a slow phase of the machine moves both). The load average is
recorded: on a shared machine every number moves with it.

    .venv/bin/python benchmarks/device_collection.py [--reps 5] [--steps 2000]

Writes ``benchmarks/results/device_collection-<host>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ours_side  # noqa: E402  (the update-only trainer of the update suite)
from run import _git_state  # noqa: E402

from emote_jax.recipes.common import build_run  # noqa: E402
from emote_jax.recipes.sac import SAC, SACConfig  # noqa: E402

KS = (1, 32)
WARM_BP_STEPS = 64  # compiled and warmed up before any timing


def _run(env_id: str, k: int, seed: int) -> Any:
    cfg = SACConfig(env_id=env_id, steps_per_call=k, env_steps=10**9, log_metrics=False, eval_episodes=0,
                    checkpoint_interval=0, seed=seed)
    run = build_run(SAC, cfg, out=None)
    run.trainer.train(lambda: run.trainer.bp_step > WARM_BP_STEPS, handle_signals=False)
    return run


def _time_run(run: Any, steps: int) -> float:
    """Backprop steps per second over the next ``steps`` (rounded up to whole calls)."""
    t = run.trainer
    start = t.bp_step
    t0 = time.perf_counter()
    t.train(lambda: t.bp_step >= start + steps, handle_signals=False)
    jax.block_until_ready(t.ctx.state)
    return (t.bp_step - start) / (time.perf_counter() - t0)


def _replay_copies(run: Any) -> int:
    """How many ``copy`` ops of a replay array (``(capacity, num_envs, ...)``) the compiled call of ``run``
    has: 0 when the store writes the buffer in place (each copy is a pass over the whole buffer per step;
    on the CPU, tests/test_device_collector.py holds it at 0, and this records it on any backend)."""
    t = run.trainer
    rewards = t.ctx.state[run.collector.collector.name]["replay"]["rewards"]
    shape = "[{},{}".format(*rewards.shape)
    return sum(1 for line in t.compiled_text().splitlines() if " copy(" in line and shape in line)


def _paired(a: list[float], b: list[float]) -> float:
    """The median over repetitions of ``a[r] / b[r]``."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=2000, help="backprop steps timed per variant and repetition")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    host = socket.gethostname().split(".")[0]
    out_path = args.out or Path(__file__).resolve().parent / "results" / \
        f"device_collection-{host}-{time.strftime('%Y%m%d')}.json"

    variants: dict[str, Any] = {}
    replay_copies: dict[str, int] = {}
    for k in KS:
        print(f"building host, device and update-only runs at K={k}", flush=True)
        variants[f"host_k{k}"] = _run("Pendulum-v1", k, seed=0)
        variants[f"device_k{k}"] = _run("jax:Pendulum-v1", k, seed=0)
        replay_copies[f"device_k{k}"] = _replay_copies(variants[f"device_k{k}"])
        ours_side.update_setup(f"update_only_k{k}", obs_dim=3, n_actions=1, k=k)
        variants[f"update_only_k{k}"] = f"update_only_k{k}"
    names = list(variants)
    raw: dict[str, list[float]] = {n: [] for n in names}
    loads = []
    for r in range(args.reps):
        loads.append(os.getloadavg()[0])
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            v = variants[name]
            raw[name].append(ours_side.update_run(v, args.steps)["updates_per_s"] if isinstance(v, str)
                             else _time_run(v, args.steps))
        print(f"rep {r + 1}/{args.reps} (load {loads[-1]:.1f}): "
              + ", ".join(f"{n} {raw[n][-1]:.0f}" for n in names), flush=True)
    for v in variants.values():
        if not isinstance(v, str) and v.env is not None:
            v.env.close()

    med = {n: statistics.median(v) for n, v in raw.items()}
    result = {
        "what": __doc__.splitlines()[0], "env": "Pendulum-v1 / jax:Pendulum-v1", "networks": [256, 256],
        "batch": 256, "num_envs": 1, "bp_steps_per_env_step": 1, "steps_per_rep": args.steps, "reps": args.reps,
        "steps_per_s": {n: {"median": med[n], "min": min(v), "max": max(v), "values": v} for n, v in raw.items()},
        "ratios": {f"k{k}": {"device_over_update_only": med[f"device_k{k}"] / med[f"update_only_k{k}"],
                             "device_over_host": med[f"device_k{k}"] / med[f"host_k{k}"],
                             "host_over_update_only": med[f"host_k{k}"] / med[f"update_only_k{k}"]} for k in KS},
        "paired_ratios": {f"k{k}": {"device_over_update_only": _paired(raw[f"device_k{k}"], raw[f"update_only_k{k}"]),
                                    "device_over_host": _paired(raw[f"device_k{k}"], raw[f"host_k{k}"])} for k in KS},
        "replay_copies_in_step": replay_copies, "load": loads, "host": host, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"jax": jax.__version__}, "backend": jax.default_backend(),
        "command": " ".join(sys.argv),
    }
    result["git"] = _git_state()  # the commit and whether emote_jax/ or benchmarks/ differed from it
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2))
    for k in KS:
        r = result["ratios"][f"k{k}"]
        pr = result["paired_ratios"][f"k{k}"]
        print(f"K={k}: device {med[f'device_k{k}']:.0f}, host {med[f'host_k{k}']:.0f}, update-only "
              f"{med[f'update_only_k{k}']:.0f} steps/s; device/update-only {r['device_over_update_only']:.2f} "
              f"(paired {pr['device_over_update_only']:.2f}), device/host {r['device_over_host']:.2f} "
              f"(paired {pr['device_over_host']:.2f})")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
