"""Where the time of one env step + one SAC update goes at K = 1, per phase, end to end.

Runs ``emote_jax.train.build_sac`` (default SACConfig: 1 env, batch 256, 2x256 networks, one update
per env step) for a few thousand steps and times, for the steady steps after compilation:

* ``sample``: the trainer taking the next batch from the loader (``ReplayTable.sample`` + stacking)
* ``dispatch``: calling the compiled step (argument handling and the batch transfer; the compute
  itself runs asynchronously)
* ``device wait``: waiting for the compiled step to finish (the SAC update's compute, mostly)
* ``metrics fetch``: bringing the call's metrics to the host and the non-finite guard
* ``collector``: the collector's hook: ``act`` (host copy of the params + policy forward),
  ``env.step``, ``memory.add`` and the rest of ``GymCollector._step``/``end_cycle``
* one line per other host callback with a cycle hook (logger, progress, checkpointer, budget...)
* ``loop``: the rest of the trainer's loop (wall time of the steady steps minus all of the above)

Every phase is wall time on the training thread, in microseconds per step (median over repetitions);
``cpu`` columns give the training thread's CPU time, which other load on the machine disturbs less.

With ``--baseline REV`` the same runs are made, alternating in one process, with the ``emote_jax``
package of git revision ``REV`` (extracted to a temporary directory and imported as
``emote_jax_base``), so that background load hits both sides alike. ``--update-only`` adds the update
alone at K = 1 (the Trainer over a synthetic device batch) against the same-shape matrix-product chain
(benchmarks/flops.py) at 1 and 32 steps per call.

    .venv/bin/python benchmarks/profile_k1.py --baseline HEAD~3 --reps 3
    .venv/bin/python benchmarks/profile_k1.py --env HalfCheetah-v5 --log on --steps 2000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# ---- the packages compared -------------------------------------------------------------------------


def load_baseline(rev: str) -> types.ModuleType:
    """``emote_jax`` of git revision ``rev``, imported as ``emote_jax_base`` from a temporary copy."""
    tmp = Path(tempfile.mkdtemp(prefix="emote_jax_base_"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "emote_jax"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    pkg = tmp / "emote_jax_base"
    (tmp / "emote_jax").rename(pkg)
    for path in pkg.rglob("*.py"):
        path.write_text(re.sub(r"\bemote_jax\b", "emote_jax_base", path.read_text()))
    sys.path.insert(0, str(tmp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium: HitTheMiddle-v0 registered twice
        return package("emote_jax_base")


def package(name: str) -> types.ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = importlib.import_module(name)
        for sub in ("train", "trainer", "collectors.gym"):
            importlib.import_module(f"{name}.{sub}")
    return mod


# ---- instrumentation -------------------------------------------------------------------------------


class Timer:
    """Per-phase wall and thread-CPU totals, counted only once ``active`` (after the skipped calls)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.active = False
        self.calls = 0
        self.gc_s = 0.0

    def wrap(self, phase: str, fn: Any) -> Any:
        wall, cpu = self.wall, self.cpu
        perf, thread = time.perf_counter, time.thread_time

        def timed(*args: Any, **kw: Any) -> Any:
            if not self.active:
                return fn(*args, **kw)
            t0, c0 = perf(), thread()
            try:
                return fn(*args, **kw)
            finally:
                wall[phase] += perf() - t0
                cpu[phase] += thread() - c0

        return timed


class _TimedJax:
    """Stands in for the ``jax`` module inside an old trainer module: times its ``device_get``."""

    def __init__(self, timer: Timer):
        self._timer = timer
        self.device_get = self._device_get

    def _device_get(self, x: Any) -> Any:
        t = self._timer
        if not t.active:
            return jax.device_get(x)
        t0, c0 = time.perf_counter(), time.thread_time()
        jax.block_until_ready(x)
        t1, c1 = time.perf_counter(), time.thread_time()
        out = jax.device_get(x)
        t.wall["device wait"] += t1 - t0
        t.cpu["device wait"] += c1 - c0
        t.wall["metrics fetch"] += time.perf_counter() - t1
        t.cpu["metrics fetch"] += time.thread_time() - c1
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(jax, name)


def instrument(pkg: types.ModuleType, run: Any, timer: Timer, skip: int) -> None:
    trainer, collector = run.trainer, run.collector
    trainer_mod = sys.modules[f"{pkg.__name__}.trainer"]
    attr = "_compiled_one" if hasattr(trainer, "_compiled_one") else "_compiled"  # what the loop calls at K = 1
    compiled = getattr(trainer, attr)
    stamps: list[float] = []
    timer.stamps = stamps

    def call(*args: Any) -> Any:
        timer.calls += 1
        if timer.calls > skip:
            timer.active = True
            stamps.append((time.perf_counter(), time.thread_time(), time.process_time()))
        if not timer.active:
            return compiled(*args)
        t0, c0 = time.perf_counter(), time.thread_time()
        out = compiled(*args)
        timer.wall["dispatch"] += time.perf_counter() - t0
        timer.cpu["dispatch"] += time.thread_time() - c0
        return out

    setattr(trainer, attr, call)
    trainer._next_batches = timer.wrap("sample", trainer._next_batches)
    fetch = getattr(trainer, "_fetch_metrics", None)
    if fetch is not None:  # a trainer that fetches through one method: wait first, then fetch
        def fetch_timed(metrics: Any, *a: Any) -> Any:
            if timer.active:
                timer.wrap("device wait", jax.block_until_ready)(metrics)
            return timer.wrap("metrics fetch", fetch)(metrics, *a)

        trainer._fetch_metrics = fetch_timed
    else:  # the trainer calls jax.device_get and first_nonfinite itself
        trainer_mod.jax = _TimedJax(timer)
    if hasattr(trainer_mod, "first_nonfinite"):
        trainer_mod.first_nonfinite = timer.wrap("metrics fetch", trainer_mod.first_nonfinite)
    for cb in trainer.host_callbacks:
        for hook in ("begin_cycle", "end_cycle"):
            label = "collector" if cb is collector else cb.name
            setattr(cb, hook, timer.wrap(f"hook {label}", getattr(cb, hook)))
    # inside the collector's hook
    for attr, label in (("_policy_actions", "act"),):
        setattr(collector, attr, timer.wrap(f"  {label}", getattr(collector, attr)))
    collector.env.step = timer.wrap("  env.step", collector.env.step)
    collector.memory.add = timer.wrap("  memory.add", collector.memory.add)


def sac_profile(pkg: types.ModuleType, env_id: str, steps: int, warmup: int, skip: int, log: bool,
                seed: int = 0) -> dict[str, Any]:
    """One run of ``steps`` env steps after ``warmup`` random ones; phases of the calls after ``skip``."""
    train = sys.modules[f"{pkg.__name__}.train"]
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = train.SACConfig(env_id=env_id, env_steps=warmup + steps, warmup_steps=warmup, seed=seed,
                              run_dir=run_dir if log else None, log_metrics=log)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = train.build_sac(cfg, io.StringIO())
        timer = Timer()
        instrument(pkg, run, timer, skip)
        gc_start = [0.0]

        def on_gc(phase: str, info: dict) -> None:  # time spent in the garbage collector, within any phase
            if phase == "start":
                gc_start[0] = time.perf_counter()
            elif timer.active:
                timer.gc_s += time.perf_counter() - gc_start[0]

        timer.gc_s = 0.0
        gc.callbacks.append(on_gc)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run.trainer.train(handle_signals=False)
        finally:
            gc.callbacks.remove(on_gc)
            run.env.close()
    stamps = timer.stamps
    n = len(stamps) - 1  # steady calls between the first and the last stamp
    wall, cpu = stamps[-1][0] - stamps[0][0], stamps[-1][1] - stamps[0][1]
    proc = stamps[-1][2] - stamps[0][2]
    scale = 1e6 / n
    # totals were taken over len(stamps) calls (the first stamped call to the end): per call
    per_wall = {k: v * 1e6 / len(stamps) for k, v in timer.wall.items()}
    per_cpu = {k: v * 1e6 / len(stamps) for k, v in timer.cpu.items()}
    top = [k for k in per_wall if not k.startswith("  ")]
    per_wall["loop"] = wall * scale - sum(per_wall[k] for k in top)
    per_cpu["loop"] = cpu * scale - sum(per_cpu[k] for k in top)
    per_wall["(of all: gc)"] = timer.gc_s * 1e6 / len(stamps)
    return {"env_steps_per_s": n / wall, "step_us": wall * scale, "step_cpu_us": cpu * scale,
            "process_cpu_us": proc * scale,
            "wall_us": per_wall, "cpu_us": per_cpu}


# ---- sbx, for reference ------------------------------------------------------------------------------
PEERS_SITE = HERE / ".peers-venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def sbx_run(env_id: str, steps: int, warmup: int, skip: int, seed: int = 0) -> dict[str, Any]:
    """sbx-rl's SAC at K = 1 (``peers_side.make_model``: the same settings as benchmarks/run.py's peers
    suites), in this process: sbx and stable-baselines3 are imported from benchmarks/.peers-venv (made by
    ``benchmarks/run.py``; the same jax, flax, optax and numpy versions as .venv, which this process
    uses). Env steps/s and process CPU over the env steps after ``warmup + skip``, stamped every 100."""
    if str(PEERS_SITE) not in sys.path:
        if not PEERS_SITE.is_dir():
            raise SystemExit(f"--sbx needs {PEERS_SITE} (benchmarks/run.py creates it for the peers suites)")
        sys.path.append(str(PEERS_SITE))  # after .venv's packages: its jax/flax/optax/numpy are ours
    import peers_side
    from stable_baselines3.common.callbacks import BaseCallback

    class Stamps(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[tuple[int, float, float]] = []

        def _on_step(self) -> bool:
            if self.num_timesteps % 100 == 0:
                self.stamps.append((self.num_timesteps, time.perf_counter(), time.process_time()))
            return True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peers_side.make_model("sbx", env_id, k=1, warmup_steps=warmup, seed=seed)
        cb = Stamps()
        model.learn(total_timesteps=warmup + steps, callback=cb)
        model.env.close()
    stamps = [st for st in cb.stamps if st[0] >= warmup + skip]
    (n0, t0, c0), (n1, t1, c1) = stamps[0], stamps[-1]
    return {"env_steps_per_s": (n1 - n0) / (t1 - t0), "process_cpu_us": (c1 - c0) / (n1 - n0) * 1e6}


# ---- update only -----------------------------------------------------------------------------------


def update_only(pkg: types.ModuleType, obs_dim: int, n_actions: int, calls: int) -> float:
    """Updates/s of the Trainer at K = 1 over a synthetic device batch (after a warm-up)."""
    import ours_side

    algos = importlib.import_module(f"{pkg.__name__}.algorithms")
    key = ("upd", pkg.__name__, obs_dim)
    if key not in _CACHE:
        callbacks, _ = algos.make_sac_callbacks(obs_dim=obs_dim, n_actions=n_actions, key=jax.random.key(0))
        loader = ours_side.SyntheticLoader(ours_side.synthetic_batch(obs_dim, n_actions, 256, 1), 1, 3)
        trainer = pkg.Trainer(callbacks, loader, steps_per_call=1)
        trainer.train(handle_signals=False)
        _CACHE[key] = (trainer, loader)
    trainer, loader = _CACHE[key]
    loader.n_calls = calls
    t0 = time.perf_counter()
    trainer.train(handle_signals=False)
    jax.block_until_ready(trainer.ctx.state)
    return calls / (time.perf_counter() - t0)


def chain(obs_dim: int, n_actions: int, steps_per_call: int, steps: int) -> float:
    """Steps/s of the same-shape matrix-product chain (benchmarks/flops.py) at ``steps_per_call``."""
    import flops
    import ours_side

    key = ("chain", obs_dim, steps_per_call)
    if key not in _CACHE:
        run, lhs, rhs = ours_side._make_chain(flops.sac_update_gemms(obs_dim, n_actions), steps_per_call)
        jax.block_until_ready(run(jnp.ones(()), lhs, rhs))
        _CACHE[key] = (run, lhs, rhs)
    run, lhs, rhs = _CACHE[key]
    c = jnp.ones(())
    n = max(1, steps // steps_per_call)
    t0 = time.perf_counter()
    for _ in range(n):
        c = run(c, lhs, rhs)
        if steps_per_call == 1:
            c.block_until_ready()  # one step per call and its result waited for, as the Trainer does
    c.block_until_ready()
    return n * steps_per_call / (time.perf_counter() - t0)


_CACHE: dict[Any, Any] = {}
SHAPES = {"Pendulum-v1": (3, 1), "HalfCheetah-v5": (17, 6)}


# ---- report ------------------------------------------------------------------------------------------


def _median_dicts(ds: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for d in ds for k in d))
    return {k: float(np.median([d.get(k, 0.0) for d in ds])) for k in keys}


def report(results: dict[tuple, list[dict]], variants: list[str]) -> str:
    lines = []
    for env_id, log in dict.fromkeys((e, lg) for e, lg, _ in results):
        lines.append(f"\n## {env_id}, log_metrics {'on (run_dir)' if log else 'off'}\n")
        meds = {v: results[(env_id, log, v)] for v in variants if (env_id, log, v) in results}
        walls = {v: _median_dicts([r["wall_us"] for r in rs]) for v, rs in meds.items()}
        cpus = {v: _median_dicts([r["cpu_us"] for r in rs]) for v, rs in meds.items()}
        phases = list(dict.fromkeys(k for v in walls for k in walls[v]))
        phases = [p for p in phases if p not in ("loop", "(of all: gc)")] + ["loop", "(of all: gc)"]
        head = " | ".join(f"{v} us | {v} cpu us" for v in walls)
        lines.append(f"| phase | {head} |")
        lines.append("| --- |" + " --- | --- |" * len(walls))
        for p in phases:
            cells = " | ".join(f"{walls[v].get(p, 0):.0f} | {cpus[v].get(p, float('nan')):.0f}" for v in walls)
            lines.append(f"| {p} | {cells} |")
        steps = " | ".join(f"{np.median([r['step_us'] for r in meds[v]]):.0f} | "
                           f"{np.median([r['step_cpu_us'] for r in meds[v]]):.0f}" for v in walls)
        lines.append(f"| **whole step** | {steps} |")
        for v, rs in meds.items():
            sps = [r["env_steps_per_s"] for r in rs]
            proc = np.median([r["process_cpu_us"] for r in rs])
            lines.append(f"\n{v}: {np.median(sps):.1f} env steps/s (median of {len(sps)}; "
                         f"{', '.join(f'{s:.1f}' for s in sps)}); process CPU (all threads) {proc:.0f} us per step")
        if len(meds) == 2:
            a, b = (np.median([r["env_steps_per_s"] for r in meds[v]]) for v in variants)
            pairs = [rb["env_steps_per_s"] / ra["env_steps_per_s"] for ra, rb in zip(*meds.values())]
            lines.append(f"{variants[1]} / {variants[0]}: {b / a:.2f}x (paired per repetition: "
                         f"{', '.join(f'{p:.2f}' for p in pairs)})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", nargs="+", default=["Pendulum-v1", "HalfCheetah-v5"])
    ap.add_argument("--log", choices=["on", "off", "both"], default="both")
    ap.add_argument("--steps", type=int, default=2000, help="env steps after the warm-up")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--skip", type=int, default=200, help="calls not timed (compilation, warm caches)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", default=None, help="git revision to compare against, alternating")
    ap.add_argument("--update-only", action="store_true", help="also time the update alone against the chain")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end runs")
    ap.add_argument("--sbx", action="store_true",
                    help="also run sbx-rl's SAC in this process (from benchmarks/.peers-venv), alternating")
    ap.add_argument("--json", default=None, help="write the raw results here")
    args = ap.parse_args()

    variants = {"current": package("emote_jax")}
    if args.baseline:
        variants = {"baseline": load_baseline(args.baseline), **variants}
    names = list(variants)
    logs = {"on": [True], "off": [False], "both": [False, True]}[args.log]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    results: dict[tuple, list[dict]] = defaultdict(list)
    sbx: dict[str, list[float]] = defaultdict(list)
    for rep in range(0 if args.no_e2e else args.reps):
        for env_id in args.env:
            runs = [(v, log) for log in logs for v in names] + ([("sbx", False)] if args.sbx else [])
            for v, log in (runs if rep % 2 == 0 else runs[::-1]):  # alternate, so that load hits all alike
                if v == "sbx":
                    r = sbx_run(env_id, args.steps, args.warmup, args.skip, seed=rep)
                    sbx[env_id].append(r["env_steps_per_s"])
                    print(f"rep {rep} {env_id} sbx: {r['env_steps_per_s']:.1f} env steps/s, process CPU "
                          f"{r['process_cpu_us']:.0f} us per step", flush=True)
                    continue
                r = sac_profile(variants[v], env_id, args.steps, args.warmup, args.skip, log, seed=rep)
                results[(env_id, log, v)].append(r)
                print(f"rep {rep} {env_id} log={log} {v}: {r['env_steps_per_s']:.1f} env steps/s, process CPU "
                      f"{r['process_cpu_us']:.0f} us per step", flush=True)
    if results:
        print(report(results, names))
    for env_id, rates in sbx.items():
        ours = {f"{v} log={lg}": np.median([r["env_steps_per_s"] for r in results[(env_id, lg, v)]])
                for v in names for lg in logs}
        print(f"\nsbx-rl {env_id}: {np.median(rates):.1f} env steps/s (median of {len(rates)}: "
              f"{', '.join(f'{x:.1f}' for x in rates)}); " +
              ", ".join(f"{k} {o / np.median(rates):.2f}x" for k, o in ours.items()))
    upd: dict[str, dict[str, list[float]]] = {}
    if args.update_only:
        for env_id in args.env:
            o, a = SHAPES[env_id]
            u = upd[env_id] = defaultdict(list)
            for rep in range(max(args.reps, 5)):
                for v in (names if rep % 2 == 0 else names[::-1]):
                    u[f"update {v}"].append(update_only(variants[v], o, a, 400))
                u["chain 1/call"].append(chain(o, a, 1, 400))
                u["chain 32/call"].append(chain(o, a, 32, 400))
            print(f"\n## update only at K = 1, {env_id} (steps/s, median of {len(u['chain 1/call'])})\n")
            for k, vals in u.items():
                extra = ""
                if k.startswith("update"):
                    extra = (f"  ({np.median(vals) / np.median(u['chain 1/call']):.0%} of chain 1/call, "
                             f"{np.median(vals) / np.median(u['chain 32/call']):.0%} of chain 32/call)")
                print(f"{k:18s} {np.median(vals):7.1f}{extra}")
    print(f"\nload average at end: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"runs": {f"{e}|{lg}|{v}": rs for (e, lg, v), rs in results.items()}, "update_only": upd, "sbx": sbx},
            indent=1))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
