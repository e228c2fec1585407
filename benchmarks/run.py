#!/usr/bin/env python3
"""emote_jax against the PyTorch reference (emote-rl 23.0.0) and the peers (sbx-rl, stable-baselines3): one command.

    python3 benchmarks/run.py            # the default suites (about 70 minutes on 2 cores)
    python3 benchmarks/run.py --quick    # a short smoke run of the default suites (a few minutes)
    python3 benchmarks/run.py --suites update compile memory
    python3 benchmarks/run.py --suites peers            # vs sbx-rl / SB3: update-only and end to end (~20-25 min)
    python3 benchmarks/run.py --suites peers-learning   # learning curves vs sbx-rl (many hours; resumable)
    python3 benchmarks/run.py --suites peers-learning --envs halfcheetah --steps 300000 --seeds 0 1 2

On first use it creates what it needs: the project's ``.venv`` (``pip install -e .`` plus
``benchmarks/requirements.txt``), the reference's own ``benchmarks/.ref-venv`` and, for the peers
suites, ``benchmarks/.peers-venv`` (``benchmarks/requirements-peers.txt``: sbx-rl 0.28.0 on the
project's jax 0.10.2, stable-baselines3 2.9.2 on torch 2.13.0+cpu). It writes
``benchmarks/results/<host>-<date>[-quick].{json,md}`` and ``<stem>-<suite>.png`` plots. Running a
subset of suites merges them into that day's file, so suites can be run separately.

Each side runs in its own long-lived worker subprocess (``ours_side.py`` in the project venv,
``reference_side.py`` in the reference venv, ``peers_side.py`` in the peers venv; JSON lines over
pipes, see ``_worker.py``). Every comparison runs the sides in this one run, alternating repetitions
(ABBA order), and reports medians and the ratio ours / other. CPU suites run JAX with ``JAX_PLATFORMS=cpu``.

The peers suites (section 6 and 7 of the Markdown; see :func:`suite_peers` and
:func:`suite_peers_learning` for the method):

* ``peers``: update-only updates/s (ours' ``Trainer`` on a synthetic device batch and on batches sampled
  from a ReplayTable; the peers' ``model.train(gradient_steps=K, batch_size=256)`` on a filled replay
  buffer) and end-to-end env steps/s (ours ``build_sac`` with steps_per_call K; the peers ``learn()`` with
  train_freq = gradient_steps = K), K = 1 and 32, Pendulum-v1 and HalfCheetah-v5, SB3 included. In the
  default set: it adds about half of the other suites' time, not double.
* ``peers-learning``: SAC learning curves, ours ``train_sac`` (default config) vs sbx (train_freq 1),
  mean of the last 10 episodes' returns every 5000 env steps (1000 for runs under 50k steps), options
  ``--steps --seeds --envs --learn-sides``. Each finished (side, env, seed, steps) run is written to
  the results JSON at once and skipped when the command is run again (also from an earlier day's file
  of this host, or another ``--out`` of it: the sides can run in parallel processes). A run under way
  checkpoints into ``benchmarks/.partial/`` every 10k steps (ours: ``--resume`` checkpoints; sbx: its
  train states, replay buffer and counters, no pickle), so a killed run resumes from there, its current
  episode restarted. Not in the default set.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PROJECT_VENV = REPO / ".venv"
REF_VENV = HERE / ".ref-venv"
RESULTS = HERE / "results"
#: peers-learning: the checkpoints of runs under way, so that a killed run resumes (removed once recorded).
PARTIAL = HERE / ".partial"
WORKDIR = Path(tempfile.gettempdir()) / "emote_jax_bench"  # workers' cwd: MuJoCo writes MUJOCO_LOG.TXT there

# The reference's install. emote-rl 23.0.0 pins setuptools==59.5, which torch 2.13 (setuptools>=77)
# cannot satisfy, so the one-line install fails to resolve: install its dependencies first and the
# package itself with --no-deps. gymnasium[mujoco] adds mujoco for HalfCheetah (v4 on gymnasium 0.29).
REF_DEPS = ["torch==2.13.0", "numpy<2", "onnx==1.16.1", "gymnasium[mujoco]==0.29.1", "psutil", "tensorboard"]
REF_PACKAGE = "emote-rl==23.0.0"
REF_MARKER = REF_VENV / ".benchmarks-ready"

# The peers (sbx-rl, stable-baselines3): their own venv, pinned in requirements-peers.txt.
PEERS_VENV = HERE / ".peers-venv"
PEERS_REQUIREMENTS = HERE / "requirements-peers.txt"
PEERS_MARKER = PEERS_VENV / ".benchmarks-ready"
PEER_NAMES = {"sbx": "sbx-rl (JAX)", "sb3": "stable-baselines3 (PyTorch)"}

SHAPES = {"pendulum": (3, 1), "halfcheetah": (17, 6)}
ENVS = {"pendulum": ("Pendulum-v1", "Pendulum-v1"), "halfcheetah": ("HalfCheetah-v5", "HalfCheetah-v4")}
SUITES = ["update", "e2e", "learning", "compile", "memory", "gpu", "peers", "peers-learning"]
# peers-learning (hours: 300k-step HalfCheetah runs) is never run unless named.
DEFAULT_SUITES = ["update", "e2e", "learning", "compile", "memory", "gpu", "peers"]
REF_SUITES = {"update", "e2e", "learning", "memory", "gpu"}  # the suites that need the reference's venv
PEER_SUITES = {"peers", "peers-learning"}


# ---- environments ------------------------------------------------------------------------------------
def _run(cmd: list[str], **kw: Any) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_project_venv() -> Path:
    """The project venv with emote_jax and the benchmark extras (matplotlib, mujoco) importable."""
    py = _venv_python(PROJECT_VENV)
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(PROJECT_VENV)])
    check = "import emote_jax.train, matplotlib, mujoco, gymnasium"
    if subprocess.run([str(py), "-c", check], cwd=REPO, capture_output=True).returncode != 0:
        _run([str(py), "-m", "pip", "install", "-q", "-e", str(REPO), "-r", str(HERE / "requirements.txt")])
    return py


def ensure_ref_venv() -> Path:
    """``benchmarks/.ref-venv`` with emote-rl 23.0.0 on torch 2.13 (CPU), created on first use."""
    py = _venv_python(REF_VENV)
    spec = json.dumps({"deps": REF_DEPS, "package": REF_PACKAGE})
    if REF_MARKER.exists() and REF_MARKER.read_text() == spec and py.exists():
        return py
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(REF_VENV)])
    _run([str(py), "-m", "pip", "install", "-q", *REF_DEPS])
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", REF_PACKAGE])
    WORKDIR.mkdir(exist_ok=True)
    _run([str(py), "-c", "import emote, emote.sac, emote.memory, torch, gymnasium; gymnasium.make('HalfCheetah-v4')"],
         cwd=WORKDIR)
    REF_MARKER.write_text(spec)
    return py


def ensure_peers_venv() -> Path:
    """``benchmarks/.peers-venv`` with sbx-rl and stable-baselines3 as pinned in requirements-peers.txt
    (created on first use; reinstalled when that file changes). The project's .venv is not touched."""
    py = _venv_python(PEERS_VENV)
    spec = PEERS_REQUIREMENTS.read_text()
    if PEERS_MARKER.exists() and PEERS_MARKER.read_text() == spec and py.exists():
        return py
    if not py.exists():
        _run([sys.executable, "-m", "venv", str(PEERS_VENV)])
    _run([str(py), "-m", "pip", "install", "-q", "-r", str(PEERS_REQUIREMENTS)])
    WORKDIR.mkdir(exist_ok=True)
    _run([str(py), "-c", "import sbx, stable_baselines3, torch, jax, gymnasium; gymnasium.make('HalfCheetah-v5')"],
         cwd=WORKDIR)
    PEERS_MARKER.write_text(spec)
    return py


# ---- workers -----------------------------------------------------------------------------------------
#: Worker processes alive now: a SIGTERM to this process ends them too (:func:`_end_workers_on_sigterm`).
_LIVE_WORKERS: set[subprocess.Popen] = set()


def _end_workers_on_sigterm() -> None:
    """On SIGTERM, terminate the workers (which would otherwise outlive this process, busy in a long command)
    and exit with 143; Ctrl+C already reaches them through the process group."""

    def handler(signum: int, frame: Any) -> None:
        for proc in list(_LIVE_WORKERS):
            proc.terminate()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


class Side:
    """A worker subprocess answering JSON commands (see ``_worker.py``)."""

    def __init__(self, name: str, python: Path, script: str, log: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = open(log, "a")
        WORKDIR.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [str(python), str(HERE / script)], cwd=WORKDIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, env={**os.environ, **(env or {})}, bufsize=1,
        )
        _LIVE_WORKERS.add(self.proc)

    def __call__(self, cmd: str, **kw: Any) -> Any:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker died during {cmd!r}; see {self.log.name}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"{self.name} {cmd}: {reply['error']}\n{reply['traceback']}")
        return reply["result"]

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        _LIVE_WORKERS.discard(self.proc)
        self.log.close()

    def __enter__(self) -> Side:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


CPU_ENV = {"JAX_PLATFORMS": "cpu"}


class Bench:
    def __init__(self, args: argparse.Namespace, ours_py: Path, ref_py: Path | None, log: Path,
                 peers_py: Path | None = None):
        self.args, self.ours_py, self.ref_py, self.log, self.peers_py = args, ours_py, ref_py, log, peers_py
        self.quick = args.quick

    def ours(self, env: dict[str, str] | None = None) -> Side:
        return Side("ours", self.ours_py, "ours_side.py", self.log, CPU_ENV if env is None else env)

    def ref(self) -> Side:
        return Side("reference", self.ref_py, "reference_side.py", self.log)

    def peers(self) -> Side:
        return Side("peers", self.peers_py, "peers_side.py", self.log, CPU_ENV)

    def reps(self, full: int, quick: int) -> int:
        return self.args.reps or (quick if self.quick else full)


def _load() -> float:
    return os.getloadavg()[0]


def _stats(xs: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "values": xs}


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {_load():.1f}] {msg}", flush=True)


# ---- suite 1: update throughput --------------------------------------------------------------------
def suite_update(b: Bench, gpu: bool = False) -> dict:
    import flops

    ks = [1, 32] if b.quick else [1, 8, 32, 128]
    n_ours = 64 if b.quick else 384
    n_ref = 16 if b.quick else 96
    reps = b.reps(5, 2)
    out: dict[str, Any] = {"batch": 256, "hidden": [256, 256], "ks": ks, "reps": reps,
                           "updates_per_rep": {"ours": n_ours, "reference": n_ref}, "shapes": {}}
    ours_env = {} if gpu else None
    with b.ours(ours_env) as ours, b.ref() as ref:
        oi, ri = ours("info"), ref("info")
        if gpu:
            if oi["backend"] not in ("gpu", "cuda", "rocm"):
                return {"skipped": f"JAX sees no GPU (backend {oi['backend']!r})"}
        ref_device = "cuda" if gpu and ri["cuda"] else "cpu"
        if gpu and ref_device == "cpu":
            out["reference_note"] = "the reference venv's torch has no CUDA; its numbers are CPU"
        default_threads = ri["torch_threads"]
        ref_variants = [default_threads] if (gpu or default_threads == 1) else [default_threads, 1]
        out["reference_threads"] = ref_variants
        for shape, (o, a) in SHAPES.items():
            _say(f"update: {shape} setup")
            f = flops.sac_update_flops(o, a)
            for k in ks:
                ours("update_setup", name=f"{shape}-{k}", obs_dim=o, n_actions=a, k=k)
            ours("roofline_setup", name=f"{shape}-chain", obs_dim=o, n_actions=a)
            ours("roofline_setup", name=f"{shape}-square", obs_dim=o, n_actions=a, square=True)
            ref("update_setup", name=shape, obs_dim=o, n_actions=a, device=ref_device)
            raw: dict[str, list] = {f"ours_k{k}": [] for k in ks}
            raw.update({f"ref_t{t}": [] for t in ref_variants})
            raw.update({"chain_gflops": [], "square_gflops": [], "load": []})

            per_cpu_s: dict[str, list] = {n: [] for n in raw if n.startswith(("ours_", "ref_"))}

            def run_ours() -> None:
                for k in ks:
                    res = ours("update_run", name=f"{shape}-{k}", n_updates=n_ours)
                    raw[f"ours_k{k}"].append(res["updates_per_s"])
                    per_cpu_s[f"ours_k{k}"].append(res["updates"] / res["cpu_s"])
                raw["chain_gflops"].append(ours("roofline_run", name=f"{shape}-chain")["gflops"])
                raw["square_gflops"].append(ours("roofline_run", name=f"{shape}-square")["gflops"])

            def run_ref() -> None:
                for t in ref_variants:
                    res = ref("update_run", name=shape, n_updates=n_ref, threads=t)
                    raw[f"ref_t{t}"].append(res["updates_per_s"])
                    per_cpu_s[f"ref_t{t}"].append(res["updates"] / res["cpu_s"])

            for r in range(reps):
                raw["load"].append(_load())
                for fn in ((run_ours, run_ref) if r % 2 == 0 else (run_ref, run_ours)):
                    fn()
                _say(f"update: {shape} rep {r + 1}/{reps}: " + ", ".join(
                    f"{n} {v[-1]:.1f}" for n, v in raw.items() if n != "load"))
            for k in ks:
                ours("update_drop", name=f"{shape}-{k}")
            med = {n: statistics.median(v) for n, v in raw.items()}
            best_ref_name = max((n for n in raw if n.startswith("ref_")), key=lambda n: med[n])
            best_k = max(ks, key=lambda k: med[f"ours_k{k}"])
            chain_ups = med["chain_gflops"] * 1e9 / f
            out["shapes"][shape] = {
                "obs_dim": o, "n_actions": a, "flops_per_update": f,
                "updates_per_s": {n: _stats(v) for n, v in raw.items() if n not in ("chain_gflops", "square_gflops", "load")},
                "updates_per_cpu_s": {n: _stats(v) for n, v in per_cpu_s.items()},
                "chain_gflops": _stats(raw["chain_gflops"]), "square_gflops": _stats(raw["square_gflops"]),
                "load": raw["load"], "best_k": best_k, "best_reference": best_ref_name,
                "ratio_best": med[f"ours_k{best_k}"] / med[best_ref_name],
                "ratio_k1": med["ours_k1"] / med[best_ref_name],
                "ratio_vs_ref_default": med[f"ours_k{best_k}"] / med[f"ref_t{ref_variants[0]}"],
                "gflops": {f"ours_k{k}": med[f"ours_k{k}"] * f / 1e9 for k in ks} | {
                    n: med[n] * f / 1e9 for n in raw if n.startswith("ref_")},
                "roofline_fraction": {f"ours_k{k}": med[f"ours_k{k}"] / chain_ups for k in ks} | {
                    n: med[n] / chain_ups for n in raw if n.startswith("ref_")},
            }
        out["info"] = {"ours": oi, "reference": ri}
    return out


# ---- suite 2: end to end -----------------------------------------------------------------------------
def _rate(points: list[tuple[float, float]], start: int) -> float:
    """(env steps or bp steps, seconds) points -> steps per second from the first point >= start to the last."""
    pts = [(s, t) for s, t in points if s >= start]
    if len(pts) < 2 or pts[-1][1] <= pts[0][1]:
        return float("nan")
    return (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])


def suite_e2e(b: Bench, ref_threads: int) -> dict:
    warmup, measured, skip = 1000, (400 if b.quick else 2000), 200
    reps = b.reps(3, 1)
    envs = ["pendulum"] if b.quick else ["pendulum", "halfcheetah"]
    variants = [("ours_gym_k1", dict(k=1, threaded=False)), ("ours_threaded_k1", dict(k=1, threaded=True)),
                ("ours_gym_k32", dict(k=32, threaded=False)),
                ("ours_gym_device_act_k32", dict(k=32, threaded=False, act_on_host=False))]
    ks = sorted({kw["k"] for _, kw in variants})
    only_updates = 400 if b.quick else 1600
    out: dict[str, Any] = {"warmup_steps": warmup, "measured_steps": measured, "skip_steps": skip, "reps": reps,
                           "reference_threads": ref_threads, "update_only_updates": only_updates, "envs": {}}
    with b.ours() as ours, b.ref() as ref:
        ref("set_threads", threads=ref_threads)
        for env in envs:
            ours_id, ref_id = ENVS[env]
            try:
                ours("check_env", env_id=ours_id)
                ref("check_env", env_id=ref_id)
            except RuntimeError as e:
                out["envs"][env] = {"skipped": str(e).splitlines()[0]}
                continue
            raw: dict[str, list] = {n: [] for n, _ in variants}
            raw.update({"reference": [], "load": []})
            upd: dict[str, list] = {n: [] for n, _ in variants}
            only: dict[str, list] = {f"ours_k{k}": [] for k in ks}  # update-only, same shapes, same process
            total = warmup + skip + measured
            o, a = SHAPES[env]
            for k in ks:
                ours("update_setup", name=f"e2e-{env}-{k}", obs_dim=o, n_actions=a, k=k)

            def run_ours() -> None:
                for n, kw in variants:
                    res = ours("sac_run", env_id=ours_id, env_steps=total, warmup_steps=warmup, **kw)
                    pts = [(r["env_steps"], r["elapsed_s"]) for r in res["rows"]]
                    raw[n].append(_rate(pts, warmup + skip))
                    upd[n].append(_rate([(r["bp_step"], r["elapsed_s"]) for r in res["rows"] if r["env_steps"] >= warmup + skip], 0))
                for k in ks:
                    only[f"ours_k{k}"].append(ours("update_run", name=f"e2e-{env}-{k}", n_updates=only_updates)["updates_per_s"])

            def run_ref() -> None:
                res = ref("sac_run", env_id=ref_id, env_steps=total, warmup_steps=warmup)
                raw["reference"].append(_rate([tuple(p) for p in res["stamps"]], warmup + skip))

            for r in range(reps):
                raw["load"].append(_load())
                for fn in ((run_ours, run_ref) if r % 2 == 0 else (run_ref, run_ours)):
                    fn()
                _say(f"e2e: {env} rep {r + 1}/{reps}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in raw.items() if n != "load"))
            med = {n: statistics.median(v) for n, v in raw.items() if n != "load"}
            out["envs"][env] = {
                "env_ids": {"ours": ours_id, "reference": ref_id},
                "env_steps_per_s": {n: _stats(v) for n, v in raw.items() if n != "load"},
                "updates_per_s": {n: _stats(v) for n, v in upd.items()},
                "update_only_per_s": {n: _stats(v) for n, v in only.items()},
                "ratio": {n: med[n] / med["reference"] for n, _ in variants}, "load": raw["load"],
            }
            for k in ks:
                ours("update_drop", name=f"e2e-{env}-{k}")
    return out


# ---- suite 3: learning ---------------------------------------------------------------------------------
def _curve_from_episodes(episodes: list[tuple[int, float]], grid: list[int]) -> list[float]:
    out = []
    for g in grid:
        done = [ret for s, ret in episodes if s <= g][-10:]
        out.append(statistics.fmean(done) if done else float("nan"))
    return out


def _nanstat(fn: Any, xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return fn(xs) if xs else float("nan")


def suite_learning(b: Bench, ref_threads: int) -> dict:
    steps = 2000 if b.quick else 15_000
    seeds = [0] if b.quick else [0, 1, 2]
    interval = 500
    grid = list(range(interval, steps + 1, interval))
    eval_episodes = 2 if b.quick else 10
    out: dict[str, Any] = {"env_id": "Pendulum-v1", "env_steps": steps, "seeds": seeds, "grid": grid,
                           "metric": "mean return of the last 10 completed episodes", "reference_threads": ref_threads,
                           "eval_episodes": eval_episodes,
                           "ours": {}, "reference": {}}
    with b.ours() as ours, b.ref() as ref:
        ref("set_threads", threads=ref_threads)
        for i, seed in enumerate(seeds):
            def run_ours() -> None:
                res = ours("sac_run", env_id="Pendulum-v1", env_steps=steps, seed=seed, log_interval=interval,
                           eval_episodes=eval_episodes)
                by_step = {r["env_steps"]: r["return_last10"] for r in res["rows"]}
                out["ours"][str(seed)] = {"curve": [by_step.get(g, float("nan")) for g in grid],
                                          "eval_returns": res["eval_returns"], "wall_s": res["wall_s"]}

            def run_ref() -> None:
                res = ref("sac_run", env_id="Pendulum-v1", env_steps=steps, seed=seed, eval_episodes=eval_episodes)
                out["reference"][str(seed)] = {"curve": _curve_from_episodes(res["episodes"], grid),
                                               "eval_returns": res["eval_returns"], "wall_s": res["wall_s"]}

            for fn in ((run_ours, run_ref) if i % 2 == 0 else (run_ref, run_ours)):
                fn()
            _say(f"learning: seed {seed}: ours eval {statistics.fmean(out['ours'][str(seed)]['eval_returns'] or [float('nan')]):.0f} "
                 f"({out['ours'][str(seed)]['wall_s']:.0f} s), reference eval "
                 f"{statistics.fmean(out['reference'][str(seed)]['eval_returns'] or [float('nan')]):.0f} "
                 f"({out['reference'][str(seed)]['wall_s']:.0f} s)")
    for side in ("ours", "reference"):
        curves = [out[side][str(s)]["curve"] for s in seeds]
        out[f"{side}_mean"] = [_nanstat(statistics.fmean, [c[j] for c in curves]) for j in range(len(grid))]
        out[f"{side}_std"] = [_nanstat(statistics.pstdev, [c[j] for c in curves]) for j in range(len(grid))]
        evals = [statistics.fmean(out[side][str(s)]["eval_returns"]) for s in seeds if out[side][str(s)]["eval_returns"]]
        out[f"{side}_eval_mean"] = statistics.fmean(evals) if evals else None
    return out


# ---- suite 4: compile time and memory ------------------------------------------------------------------
def suite_compile(b: Bench) -> dict:
    configs = [("pendulum", 1)] if b.quick else [("pendulum", 1), ("pendulum", 32), ("halfcheetah", 1), ("halfcheetah", 32)]
    reps = b.reps(3, 1)
    out: dict[str, Any] = {"definition": "first call of trainer._compiled (trace, lower, compile, run) minus a steady call, "
                                         "each in a fresh process", "reps": reps, "configs": {}}
    for shape, k in configs:
        o, a = SHAPES[shape]
        vals, firsts, cpus, setups, loads = [], [], [], [], []
        for _ in range(reps):
            loads.append(_load())
            with b.ours() as ours:
                res = ours("compile_time", obs_dim=o, n_actions=a, k=k)
            vals.append(res["compile_s"])
            firsts.append(res["first_call_s"])
            cpus.append(res["compile_cpu_s"])
            setups.append(res["setup_s"])
        out["configs"][f"{shape}-k{k}"] = {"compile_s": _stats(vals), "first_call_s": _stats(firsts),
                                           "compile_cpu_s": _stats(cpus), "setup_s": _stats(setups), "load": loads}
        _say(f"compile: {shape} K={k}: {statistics.median(vals):.2f} s")
    return out


def suite_memory(b: Bench) -> dict:
    n = 100_000 if b.quick else 1_000_000
    out: dict[str, Any] = {"transitions": n, "obs_dim": 17, "n_actions": 6, "episode_len": 1000}
    with b.ours() as ours:
        out["ours"] = ours("memory_fill", transitions=n)
    with b.ref() as ref:
        out["reference"] = ref("memory_fill", transitions=n)
    for side in ("ours", "reference"):
        r = out[side]
        r["table_mb"] = r["peak_rss_mb"] - r["rss_before_mb"]
    out["ratio_table_mb"] = out["ours"]["table_mb"] / out["reference"]["table_mb"]
    _say(f"memory: ours {out['ours']['table_mb']:.0f} MB, reference {out['reference']['table_mb']:.0f} MB")
    return out


def suite_gpu(b: Bench) -> dict:
    with b.ours(env={}) as ours:
        oi = ours("info")
    if oi["backend"] not in ("gpu", "cuda", "rocm"):
        return {"skipped": f"no GPU: JAX's default backend is {oi['backend']!r} (install jax[cuda13] into .venv "
                           "on a GPU machine, and a CUDA torch into benchmarks/.ref-venv for the reference)"}
    return suite_update(b, gpu=True)


# ---- suite 6: the peers, sbx-rl and stable-baselines3 -----------------------------------------------------
def _rotate(fns: list, r: int) -> list:
    """The order of the sides in repetition ``r``: forward on even repetitions, reversed on odd (ABBA)."""
    return fns if r % 2 == 0 else fns[::-1]


def suite_peers(b: Bench, peer_threads: str) -> dict:
    """Ours against sbx-rl and stable-baselines3: update-only throughput, then end-to-end env steps/s.

    Update only, per env's shapes and K in (1, 32), alternating repetitions of: ours through ``Trainer``
    on a synthetic device batch (``ours_k``, the update suite's method) and on batches sampled from a
    ReplayTable holding 10k random transitions (``ours_sampled_k``); each peer's
    ``model.train(gradient_steps=K, batch_size=256)`` on a replay buffer holding 10k random transitions
    (the peers sample inside ``train``; SB3 at torch's default thread count and at 1 thread).
    End to end, per env and K: ``sac_run`` (ours: ``build_sac``, steps_per_call K, one update per env
    step) and ``model.learn`` (peers: train_freq = gradient_steps = K), 1000 random warm-up steps
    (``learning_starts``); env steps/s from the time stamp at the first multiple of 100 env steps
    >= warm-up + skip (taken after that cycle's update) to the last; same stamping rule on both sides.
    """
    warmup, measured, skip = 1000, (400 if b.quick else 2000), 200
    reps = b.reps(3, 1)
    envs = ["pendulum"] if b.quick else ["pendulum", "halfcheetah"]
    ks = [1, 32]
    algos = ["sbx", "sb3"]
    only_n = {"ours": 256 if b.quick else 800, "sbx": 256 if b.quick else 800, "sb3": 64 if b.quick else 200}
    total = warmup + skip + measured
    out: dict[str, Any] = {"warmup_steps": warmup, "measured_steps": measured, "skip_steps": skip, "reps": reps,
                           "ks": ks, "batch": 256, "hidden": [256, 256], "update_only_updates": only_n,
                           "update_only_fill": 10_000, "envs": {}}
    with b.ours() as ours, b.peers() as peers:
        pi = peers("info")
        out["peers_info"] = pi
        default_threads = int(pi["torch_threads"])
        sb3_threads = [default_threads] if default_threads == 1 else [default_threads, 1]
        env_ids = {}
        for env in envs:
            env_id = ENVS[env][0]
            try:
                ours("check_env", env_id=env_id)
                peers("check_env", env_id=env_id)
                env_ids[env] = env_id
            except RuntimeError as e:
                out["envs"][env] = {"skipped": str(e).splitlines()[0]}

        # -- update only
        for env, env_id in env_ids.items():
            _say(f"peers: update-only {env} setup")
            o, a = SHAPES[env]
            for k in ks:
                ours("update_setup", name=f"p-{env}-{k}", obs_dim=o, n_actions=a, k=k)
                ours("update_setup", name=f"ps-{env}-{k}", obs_dim=o, n_actions=a, k=k, sampled=True)
                for algo in algos:
                    peers("update_setup", name=f"{algo}-{env}-{k}", algo=algo, env_id=env_id, k=k)
            raw: dict[str, list] = {}
            for k in ks:
                raw[f"ours_k{k}"], raw[f"ours_sampled_k{k}"], raw[f"sbx_k{k}"] = [], [], []
                raw.update({f"sb3_t{t}_k{k}": [] for t in sb3_threads})
            load: list[float] = []

            def only_ours() -> None:
                for k in ks:
                    raw[f"ours_k{k}"].append(ours("update_run", name=f"p-{env}-{k}", n_updates=only_n["ours"])["updates_per_s"])
                    raw[f"ours_sampled_k{k}"].append(
                        ours("update_run", name=f"ps-{env}-{k}", n_updates=only_n["ours"])["updates_per_s"])

            def only_sbx() -> None:
                for k in ks:
                    raw[f"sbx_k{k}"].append(peers("update_run", name=f"sbx-{env}-{k}", n_updates=only_n["sbx"])["updates_per_s"])

            def only_sb3() -> None:
                for t in sb3_threads:
                    peers("set_threads", threads=t)
                    for k in ks:
                        raw[f"sb3_t{t}_k{k}"].append(
                            peers("update_run", name=f"sb3-{env}-{k}", n_updates=only_n["sb3"])["updates_per_s"])
                peers("set_threads", threads=0)

            for r in range(reps):
                load.append(_load())
                for fn in _rotate([only_ours, only_sbx, only_sb3], r):
                    fn()
                _say(f"peers: update-only {env} rep {r + 1}/{reps}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in raw.items()))
            for k in ks:
                ours("update_drop", name=f"p-{env}-{k}")
                ours("update_drop", name=f"ps-{env}-{k}")
                for algo in algos:
                    peers("update_drop", name=f"{algo}-{env}-{k}")
            med = {n: statistics.median(v) for n, v in raw.items()}
            out["envs"][env] = {"env_id": env_id, "update_only_per_s": {n: _stats(v) for n, v in raw.items()},
                                "update_only_load": load,
                                "update_only_ratio": {f"k{k}": {
                                    "ours_sampled/sbx": med[f"ours_sampled_k{k}"] / med[f"sbx_k{k}"],
                                    "ours/sbx": med[f"ours_k{k}"] / med[f"sbx_k{k}"],
                                    "ours_sampled/sb3": med[f"ours_sampled_k{k}"] / max(med[f"sb3_t{t}_k{k}"] for t in sb3_threads),
                                } for k in ks}}

        # -- SB3's torch threads for the end-to-end runs
        if peer_threads == "auto":
            votes = []
            for env in env_ids:
                u = out["envs"][env]["update_only_per_s"]
                votes += [max(sb3_threads, key=lambda t: u[f"sb3_t{t}_k{k}"]["median"]) for k in ks]
            threads = statistics.mode(votes) if votes else default_threads
        else:
            threads = int(peer_threads)
        out["sb3_threads"] = threads
        out["sb3_threads_choice"] = ("auto: the faster in this suite's update-only runs" if peer_threads == "auto"
                                     else "--peer-threads")
        out["sbx_threads"] = default_threads  # sbx computes in JAX; torch only holds its replay samples

        # -- end to end
        for env, env_id in env_ids.items():
            names = [f"{side}_k{k}" for side in ("ours", *algos) for k in ks]
            raw = {n: [] for n in names}
            upd: dict[str, list] = {n: [] for n in names}
            load = []
            settings: dict[str, Any] = {}

            def e2e_ours() -> None:
                for k in ks:
                    res = ours("sac_run", env_id=env_id, env_steps=total, warmup_steps=warmup, k=k)
                    raw[f"ours_k{k}"].append(_rate([(r["env_steps"], r["elapsed_s"]) for r in res["rows"]], warmup + skip))
                    upd[f"ours_k{k}"].append(_rate([(r["bp_step"], r["elapsed_s"]) for r in res["rows"]
                                                    if r["env_steps"] >= warmup + skip], 0))

            def e2e_peer(algo: str) -> Any:
                def run() -> None:
                    peers("set_threads", threads=threads if algo == "sb3" else 0)
                    for k in ks:
                        res = peers("sac_run", algo=algo, env_id=env_id, env_steps=total, warmup_steps=warmup, k=k)
                        raw[f"{algo}_k{k}"].append(_rate([(s[0], s[1]) for s in res["stamps"]], warmup + skip))
                        upd[f"{algo}_k{k}"].append(_rate([(s[2], s[1]) for s in res["stamps"] if s[0] >= warmup + skip], 0))
                        settings[f"{algo}_k{k}"] = res["settings"]
                return run

            for r in range(reps):
                load.append(_load())
                for fn in _rotate([e2e_ours, e2e_peer("sbx"), e2e_peer("sb3")], r):
                    fn()
                _say(f"peers: e2e {env} rep {r + 1}/{reps}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in raw.items()))
            med = {n: statistics.median(v) for n, v in raw.items()}
            out["envs"][env].update({
                "env_steps_per_s": {n: _stats(v) for n, v in raw.items()},
                "updates_per_s": {n: _stats(v) for n, v in upd.items()},
                "ratio": {f"k{k}": {f"ours/{algo}": med[f"ours_k{k}"] / med[f"{algo}_k{k}"] for algo in algos} for k in ks},
                "load": load, "peer_settings": settings,
            })
    return out


def _learning_runs_before(stem: Path, quick: bool) -> dict:
    """Finished peers-learning runs in this host's earlier results files (same --quick), newest last wins:
    what a resumed peers-learning suite may skip."""
    host = stem.name.split("-")[0]
    # <host>-<date>[-quick].json and any --out <host>-<date>-<tag>.json (e.g. one per side run in parallel)
    files = [f for f in RESULTS.glob(f"{host}-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*.json")
             if f.stem.endswith("-quick") == quick]
    runs: dict = {}
    files = sorted(files, key=lambda p: p.stat().st_mtime)
    if stem.with_suffix(".json") not in files and stem.with_suffix(".json").exists():
        files.append(stem.with_suffix(".json"))
    for f in files:
        try:
            runs.update(json.loads(f.read_text()).get("suites", {}).get("peers-learning", {}).get("runs", {}))
        except (OSError, ValueError):
            continue
    return runs


LEARN_STEPS = {"halfcheetah": 300_000, "pendulum": 20_000}
#: Settings of a recorded run that do not change what it learns (where it logged, how often it saved).
_BOOKKEEPING = {"env_id", "env_steps", "seed", "run_dir", "log_interval", "log_metrics", "metrics_interval",
                "metric_names", "wandb_project", "wandb_mode", "checkpoint_interval", "keep_checkpoints"}


def suite_peers_learning(b: Bench, previous: dict, save: Any) -> dict:
    """SAC learning curves, ours (``train_sac``, default SACConfig) against the peers (``learn``, train_freq 1).

    Per (env, seed), the sides in alternating order; each run records every completed episode's
    ``(env step, return)``; the curve is the mean return of the last 10 episodes completed by each
    multiple of the interval (5000 env steps for runs >= 50k steps). Deterministic evaluation (10
    episodes, seeds seed + 10000..) at the end. A finished run (same side, env, seed, env steps) found in
    this or an earlier results file of this host is not run again; ``save`` writes the JSON after each run.
    """
    a = b.args
    envs = a.envs or (["pendulum"] if b.quick else ["halfcheetah", "pendulum"])
    seeds = a.seeds if a.seeds is not None else ([0] if b.quick else [0, 1, 2])
    sides = a.learn_sides or ["ours", "sbx"]
    eval_episodes = 2 if b.quick else 10
    runs = dict(previous)
    out: dict[str, Any] = {"metric": "mean return of the last 10 completed episodes", "seeds": seeds, "sides": sides,
                           "eval_episodes": eval_episodes, "envs": {}, "runs": runs}
    plan = []
    for env in envs:
        steps = a.steps or (2000 if b.quick else LEARN_STEPS[env])
        interval = 5000 if steps >= 50_000 else (500 if steps <= 5000 else 1000)
        out["envs"][env] = {"env_id": ENVS[env][0], "env_steps": steps, "interval": interval,
                            "grid": list(range(interval, steps + 1, interval))}
        for i, seed in enumerate(seeds):
            for side in (sides if i % 2 == 0 else sides[::-1]):
                plan.append((env, seed, side, steps))
    ours_side = peers_side = None
    try:
        todo = []
        for env, seed, side, steps in plan:
            done = runs.get(f"{side}/{env}/{seed}/{steps}")
            if done and side == "ours":  # recorded at other settings (an older default): not this code's run
                ours_side = ours_side or b.ours()
                now = ours_side("train_sac_settings", env_id=ENVS[env][0], env_steps=steps, seed=seed,
                                eval_episodes=eval_episodes)
                changed = sorted(k for k in (set(now) | set(done["settings"])) - _BOOKKEEPING
                                 if now.get(k) != done["settings"].get(k))
                if changed:
                    _say(f"peers-learning: ours {env} seed {seed} was recorded with other settings ({', '.join(changed)}"
                         "): running it again")
                    done = None
            if not done:
                todo.append((env, seed, side, steps))
        _say(f"peers-learning: {len(plan)} runs, {len(plan) - len(todo)} already done")
        for env, seed, side, steps in todo:
            if side == "ours" and ours_side is None:
                ours_side = b.ours()
            if side != "ours" and peers_side is None:
                peers_side = b.peers()
            env_id, load0, t0, git0 = ENVS[env][0], _load(), time.perf_counter(), _git_state()
            _say(f"peers-learning: {side} {env_id} seed {seed}, {steps} env steps")
            work = PARTIAL / f"{side}-{env}-{seed}-{steps}"  # an unfinished run's state (sb3: not resumable)
            if side == "ours":
                res = ours_side("train_sac_run", env_id=env_id, env_steps=steps, seed=seed, eval_episodes=eval_episodes,
                                work_dir=str(work))
                entry = {"episodes": res["episodes"], "eval_returns": res["result"]["eval_returns"],
                         "wall_s": res["result"]["train_wall_s"], "updates": res["result"]["bp_steps"],
                         "resumed_from": res["resumed_from"],
                         "settings": {k: v for k, v in res["config"].items() if k not in ("env_id", "env_steps", "seed")}}
            else:
                res = peers_side("sac_run", algo=side, env_id=env_id, env_steps=steps, seed=seed, k=1,
                                 stamp_every=1000, eval_episodes=eval_episodes,
                                 work_dir=str(work) if side == "sbx" else None)
                entry = {"episodes": res["episodes"], "eval_returns": res["eval_returns"], "wall_s": res["wall_s"],
                         "updates": res["updates"], "resumed_from": res["resumed_from"], "settings": res["settings"]}
            entry.update(side=side, env=env, env_id=env_id, seed=seed, env_steps=steps, run_s=time.perf_counter() - t0,
                         load_start=load0, load_end=_load(), finished=_dt.datetime.now().isoformat(timespec="seconds"),
                         git_start=git0, git=_git_state())
            runs[f"{side}/{env}/{seed}/{steps}"] = entry
            shutil.rmtree(work, ignore_errors=True)  # the run is in the results now
            ev = statistics.fmean(entry["eval_returns"]) if entry["eval_returns"] else float("nan")
            _say(f"peers-learning: {side} {env_id} seed {seed}: eval {ev:.0f}, {entry['wall_s']:.0f} s")
            save(out)
    finally:
        for s in (ours_side, peers_side):
            if s is not None:
                s.close()
    return out


def learning_table(ln: dict, env: str) -> dict:
    """Per side: the curves on the env's grid (one per seed that finished), their mean and std, the
    evaluation mean and the mean wall time."""
    e = ln["envs"][env]
    grid, steps = e["grid"], e["env_steps"]
    out = {}
    for side in ln["sides"]:
        found = [ln["runs"].get(f"{side}/{env}/{sd}/{steps}") for sd in ln["seeds"]]
        found = [r for r in found if r]
        curves = {str(r["seed"]): _curve_from_episodes([tuple(x) for x in r["episodes"]], grid) for r in found}
        cs = list(curves.values())
        evals = [statistics.fmean(r["eval_returns"]) for r in found if r["eval_returns"]]
        out[side] = {
            "curves": curves, "n": len(found),
            "mean": [_nanstat(statistics.fmean, [c[j] for c in cs]) for j in range(len(grid))],
            "std": [_nanstat(statistics.pstdev, [c[j] for c in cs]) for j in range(len(grid))],
            "eval_mean": statistics.fmean(evals) if evals else None,
            "wall_s": statistics.fmean(r["wall_s"] for r in found) if found else None,
        }
    return out


# ---- report --------------------------------------------------------------------------------------------
def _fmt(x: float | None, nd: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:,.{nd}f}"


def targets(res: dict) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met?) for every acceptance target whose suite ran."""
    s = res["suites"]
    rows: list[tuple[str, str, bool | None]] = []
    up = s.get("update", {})
    for shape, r in up.get("shapes", {}).items():
        rows.append((f"update throughput >= 3x reference ({shape})",
                     f"{r['ratio_best']:.2f}x (ours K={r['best_k']} vs {r['best_reference']}); K=1: {r['ratio_k1']:.2f}x",
                     r["ratio_best"] >= 3))
        best = f"ours_k{r['best_k']}"
        frac = r["roofline_fraction"][best]
        rows.append((f">= 60% of matmul roofline at best K ({shape})",
                     f"{100 * frac:.0f}% ({r['gflops'][best]:.1f} of {r['chain_gflops']['median']:.1f} GFLOP/s)",
                     frac >= 0.6))
    e2e = s.get("e2e", {})
    for env, r in e2e.get("envs", {}).items():
        if "skipped" in r:
            rows.append((f"end-to-end >= 3x reference ({env})", "skipped: " + r["skipped"], None))
            continue
        best = max(r["ratio"], key=lambda n: r["ratio"][n])
        rows.append((f"end-to-end >= 3x reference ({env})",
                     f"{r['ratio'][best]:.2f}x ({best}); " + ", ".join(f"{n} {v:.2f}x" for n, v in r["ratio"].items()),
                     r["ratio"][best] >= 3))
        # update-only throughput at the same K: measured inside the e2e suite, alternating with the e2e runs
        # (older results: from the update suite)
        only_by_k = r.get("update_only_per_s") or up.get("shapes", {}).get(r.get("shape", env), {}).get("updates_per_s")
        if only_by_k:
            fracs = []
            for n in r["ratio"]:
                k = int(n.rsplit("_k", 1)[1])
                only = only_by_k.get(f"ours_k{k}", {}).get("median")
                if only:
                    fracs.append((n, r["updates_per_s"][n]["median"] / only))
            if fracs:
                bestf = max(fracs, key=lambda t: t[1])
                rows.append((f"end-to-end >= 90% of update-only throughput ({env})",
                             ", ".join(f"{n} {100 * f:.0f}%" for n, f in fracs), bestf[1] >= 0.9))
    comp = s.get("compile", {})
    if comp.get("configs"):
        worst = max(c["compile_s"]["median"] for c in comp["configs"].values())
        rows.append(("compile time < 3 s on CPU", ", ".join(f"{n} {c['compile_s']['median']:.2f} s"
                                                            for n, c in comp["configs"].items()), worst < 3))
    pe = s.get("peers", {})
    for env, r in pe.get("envs", {}).items():
        if "skipped" in r or "ratio" not in r:
            continue
        for kk, rr in r["ratio"].items():
            rows.append((f"end-to-end ahead of sbx-rl at K={kk[1:]} ({r['env_id']})",
                         f"ours/sbx {rr['ours/sbx']:.2f}x, ours/SB3 {rr['ours/sb3']:.2f}x", rr["ours/sbx"] >= 1))
    pl = s.get("peers-learning")
    if pl and pl.get("envs"):
        for env, e in pl["envs"].items():
            t = learning_table(pl, env)
            if "ours" not in t or not t["ours"]["n"]:
                continue
            for side in (x for x in pl["sides"] if x != "ours" and t[x]["n"]):
                j = len(e["grid"]) - 1
                om, pm = t["ours"]["mean"][j], t[side]["mean"][j]
                noise = max(t["ours"]["std"][j], t[side]["std"][j])
                rows.append((f"learning no worse than {side} at {e['grid'][j]} steps, {e['env_id']} (within noise)",
                             f"ours {om:.0f} +- {t['ours']['std'][j]:.0f} ({t['ours']['n']} seeds), {side} {pm:.0f} +- "
                             f"{t[side]['std'][j]:.0f} ({t[side]['n']} seeds)",
                             (om >= pm - noise) if t["ours"]["n"] == t[side]["n"] == len(pl["seeds"]) >= 2 else None))
    ln = s.get("learning")
    if ln and ln.get("grid"):
        g = ln["grid"]
        j = min(range(len(g)), key=lambda i: abs(g[i] - 10_000))
        om, rm = ln["ours_mean"][j], ln["reference_mean"][j]
        noise = max(ln["ours_std"][j], ln["reference_std"][j])
        rows.append((f"learning no worse at {g[j]} steps (within noise)",
                     f"ours {om:.0f} +- {ln['ours_std'][j]:.0f}, reference {rm:.0f} +- {ln['reference_std'][j]:.0f} "
                     f"(last-10-episode mean over {len(ln['seeds'])} seeds)", om >= rm - noise))
    return rows


PEER_DIFFERENCES = """What differs between the sides and cannot be set alike through the peers' API (read back from the
models into `peer_settings` in the JSON):

- Entropy coefficient: ours (emote's recipe) starts alpha at min(1.0, 0.2) = 0.2 and clamps it to <= 0.2 after
  every step (`max_alpha`); sbx and SB3 start at 1.0 and leave it unbounded. Target entropy is -n_actions on every side.
- Gradient clipping: no side clips (ours since 2026-12-02, docs/decisions/0013; `--preset emote` clips at 10 as
  the reference does); sbx uses plain `optax.adam`.
- Initialisation: ours orthogonal (gain sqrt 2 in the trunk, 0.01 policy head, 1 Q head), zero biases; sbx flax's
  defaults (lecun-normal); SB3 torch's defaults (kaiming-uniform).
- Policy head: ours clamps the mean to +-5; log std is clipped to [-20, 2] on every side.
- Warm-up: ours takes 1000 random steps, then one update per env step; the peers act randomly while
  `num_timesteps < learning_starts` and train after a rollout once `num_timesteps > learning_starts` (with K = 1
  the first update comes one env step later than ours; with K = 32 at 1024 env steps).
- Twin Q: sbx evaluates both critics as one `vmap`ped network (batched matmuls); ours and SB3 run two networks.
- Order inside an update: sbx updates the critics, soft-updates the target, then the actor, then alpha; SB3 alpha,
  critics, actor, target; ours its callbacks q1, q2, policy, alpha, target. One sampled batch for all losses everywhere.
- Replay sampling: sbx draws all K batches for a `train` call in one host-side `sample(256 K)` (SB3's ReplayBuffer,
  as torch tensors converted to NumPy) and moves them to JAX; SB3 samples per gradient step; ours samples K
  batches in one gather from its ReplayTable.
- Observations: SB3's buffer stores HalfCheetah's float64 observations as float64 (sbx casts them to float32 in
  JAX); ours stores float32."""


def write_markdown(res: dict, path: Path, stem: str) -> None:
    s = res["suites"]
    m = res["machine"]
    L = [f"# emote_jax vs emote-rl 23.0.0: {res['host']} {res['date']}{' (quick)' if res.get('quick') else ''}", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}. Other work on the machine makes every number "
         "noisy, so each suite records the 1-minute load average around it. Medians over alternating repetitions; "
         "ratio = ours / reference.", "",
         "| suite | finished | load (start-end) | wall s | command |", "| --- | --- | --- | --- | --- |"]
    for name, su in s.items():
        L.append(f"| {name} | {su.get('finished', '')} | {_fmt(su.get('load_start'))}-{_fmt(su.get('load_end'))} | "
                 f"{_fmt(su.get('wall_s'), 0)} | `{su.get('command', '')}` |")
    L.append("")
    L += ["## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t, v, ok in targets(res):
        L.append(f"| {t} | {v} | {'yes' if ok else ('n/a' if ok is None else '**no**')} |")
    up = s.get("update")
    if up and up.get("shapes"):
        L += ["", "## 1. SAC update throughput (updates/s)", "",
              f"Batch {up['batch']}, hidden {up['hidden']}, {up['reps']} repetitions; emote_jax through `Trainer` with a "
              "synthetic loader of pre-stacked device batches (K steps per compiled call); the reference through "
              "`emote.Trainer` with its SAC callbacks on synthetic batches, at torch's default thread count and at 1 thread. "
              "Roofline: the same matrix products (benchmarks/flops.py) as a plain jitted chain.", "",
              "Updates per CPU-second (process CPU time, all threads) is less sensitive to other load on the machine.", "",
              "| shapes | variant | updates/s (median, min-max) | updates per CPU-s | GFLOP/s | of roofline |",
              "| --- | --- | --- | --- | --- | --- |"]
        for shape, r in up["shapes"].items():
            for n, st in r["updates_per_s"].items():
                cpu = r.get("updates_per_cpu_s", {}).get(n, {}).get("median")
                L.append(f"| {shape} (obs {r['obs_dim']}, act {r['n_actions']}) | {n} | {_fmt(st['median'])} "
                         f"({_fmt(st['min'])}-{_fmt(st['max'])}) | {_fmt(cpu)} | {_fmt(r['gflops'][n])} | "
                         f"{100 * r['roofline_fraction'][n]:.0f}% |")
            L.append(f"| {shape} | matmul chain (roofline) | {_fmt(r['chain_gflops']['median'] * 1e9 / r['flops_per_update'])} "
                     f"| | {_fmt(r['chain_gflops']['median'])} | 100% |")
            L.append(f"| {shape} | 256x256x256 chain, same FLOPs | {_fmt(r['square_gflops']['median'] * 1e9 / r['flops_per_update'])} "
                     f"| | {_fmt(r['square_gflops']['median'])} | |")
        L += ["", "| shapes | MFLOP/update | best ours / best reference | ours K=1 / best reference |", "| --- | --- | --- | --- |"]
        for shape, r in up["shapes"].items():
            L.append(f"| {shape} | {r['flops_per_update'] / 1e6:.1f} | {r['ratio_best']:.2f}x (K={r['best_k']}) | {r['ratio_k1']:.2f}x |")
        L += ["", f"![update throughput]({stem}-update.png)"]
    e2e = s.get("e2e")
    if e2e and e2e.get("envs"):
        L += ["", "## 2. End-to-end training throughput (env steps/s, one update per env step)", "",
              f"1 env, batch 256, {e2e['warmup_steps']} random warm-up steps, then {e2e['measured_steps']} steps timed "
              f"after skipping {e2e['skip_steps']} (compilation); {e2e['reps']} repetitions. Reference at "
              f"{e2e['reference_threads']} torch thread(s), driven by this harness's own collector callback. "
              "`device_act`: the collector calls the jitted policy every env step instead of its NumPy mirror on the host. "
              f"Update-only: {e2e.get('update_only_updates', '?')} updates through `Trainer` on a synthetic batch of the "
              "same shapes at the same K, in the same worker, alternating with the e2e runs; "
              "of update-only = updates/s of the e2e run / that.", "",
              "| env | variant | env steps/s (median, min-max) | updates/s | update-only updates/s | of update-only | ratio |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for env, r in e2e["envs"].items():
            if "skipped" in r:
                L.append(f"| {env} | skipped | {r['skipped']} | | |")
                continue
            for n, st in r["env_steps_per_s"].items():
                u = r["updates_per_s"].get(n, {}).get("median")
                ratio = f"{r['ratio'][n]:.2f}x" if n in r["ratio"] else ""
                only = frac = None
                if n != "reference" and r.get("update_only_per_s"):
                    only = r["update_only_per_s"].get(f"ours_k{int(n.rsplit('_k', 1)[1])}", {}).get("median")
                    frac = f"{100 * u / only:.0f}%" if (u and only) else None
                L.append(f"| {r['env_ids']['ours' if n != 'reference' else 'reference']} | {n} | {_fmt(st['median'])} "
                         f"({_fmt(st['min'])}-{_fmt(st['max'])}) | {_fmt(u)} | {_fmt(only)} | {frac or ''} | {ratio} |")
        L += ["", f"![end to end]({stem}-e2e.png)"]
    ln = s.get("learning")
    if ln and ln.get("grid"):
        L += ["", "## 3. Learning: Pendulum-v1", "",
              f"{ln['env_steps']} env steps, seeds {ln['seeds']}, {ln['metric']}; both with 2x256 networks, lr 3e-4, "
              "batch 256, 1000 random warm-up steps, one update per env step. Deterministic evaluation "
              f"({ln.get('eval_episodes', 10)} episodes) at the end; reference at {ln['reference_threads']} torch thread(s).", "",
              "| env steps | ours (mean +- std) | reference (mean +- std) |", "| --- | --- | --- |"]
        for j, g in enumerate(ln["grid"]):
            if g % 1000 == 0 or g == ln["grid"][-1]:
                L.append(f"| {g} | {_fmt(ln['ours_mean'][j], 0)} +- {_fmt(ln['ours_std'][j], 0)} | "
                         f"{_fmt(ln['reference_mean'][j], 0)} +- {_fmt(ln['reference_std'][j], 0)} |")
        L.append(f"| final evaluation | {_fmt(ln['ours_eval_mean'], 0)} | {_fmt(ln['reference_eval_mean'], 0)} |")
        walls = {side: statistics.fmean(ln[side][str(sd)]["wall_s"] for sd in ln["seeds"]) for side in ("ours", "reference")}
        L.append(f"| wall time per run (s) | {walls['ours']:.0f} | {walls['reference']:.0f} |")
        L += ["", f"![learning]({stem}-learning.png)"]
    comp = s.get("compile")
    if comp and comp.get("configs"):
        L += ["", "## 4a. Compile time of the SAC step (CPU)", "", comp["definition"] + ".", "",
              "CPU s is the process CPU time of the same difference (all threads): less sensitive to other load. "
              "Setup s: `make_sac_callbacks` + `Trainer(...)` (network init, optimizer state) before the first call.", "",
              "| config | compile s (median, min-max) | compile CPU s | first call s | setup s |", "| --- | --- | --- | --- | --- |"]
        for n, c in comp["configs"].items():
            cpu = c.get("compile_cpu_s", {}).get("median")
            setup = c.get("setup_s", {}).get("median")
            L.append(f"| {n} | {c['compile_s']['median']:.2f} ({c['compile_s']['min']:.2f}-{c['compile_s']['max']:.2f}) | "
                     f"{_fmt(cpu, 2)} | {c['first_call_s']['median']:.2f} | {_fmt(setup, 2)} |")
    mem = s.get("memory")
    if mem and "ours" in mem:
        L += ["", "## 4b. Replay memory, HalfCheetah shapes", "",
              f"{mem['transitions']:,} transitions (obs {mem['obs_dim']}, act {mem['n_actions']}, {mem['episode_len']}-step "
              "episodes) written through each table's own API, in a fresh process; table MB = peak RSS - RSS before.", "",
              "| side | table MB | peak RSS MB | fill s | sample(256) ms |", "| --- | --- | --- | --- | --- |"]
        for side in ("ours", "reference"):
            r = mem[side]
            L.append(f"| {side} | {r['table_mb']:.0f} | {r['peak_rss_mb']:.0f} | {r['fill_s']:.2f} | {r['sample_256_ms']:.2f} |")
    gpu = s.get("gpu")
    if gpu:
        L += ["", "## 5. GPU", ""]
        L.append(f"Skipped: {gpu['skipped']}" if "skipped" in gpu else "See `suites.gpu` in the JSON (same layout as suite 1).")
    pe = s.get("peers")
    if pe and pe.get("envs"):
        pi = pe.get("peers_info", {})
        L += ["", "## 6. vs sbx / SB3 (SAC on the CPU)", "",
              f"Peers: sbx-rl {pi.get('sbx_rl')} (JAX {pi.get('jax')}, flax {pi.get('flax')}, optax {pi.get('optax')}) and "
              f"stable-baselines3 {pi.get('stable_baselines3')} (torch {pi.get('torch')}), in their own venv "
              "(benchmarks/.peers-venv, pinned in benchmarks/requirements-peers.txt); gymnasium "
              f"{pi.get('gymnasium')}, mujoco {pi.get('mujoco')} on every side. Same settings on every side where the "
              "peers let them be set: policy and twin Q 2x256 ReLU, batch 256, Adam lr 3e-4, gamma 0.99, tau 0.005, "
              "buffer 1M, 1000 uniform-random warm-up steps (the peers' `learning_starts`), target entropy -n_actions "
              "(`ent_coef=\"auto\"`), one env. "
              f"{pe['reps']} alternating repetitions (the sides' order reversed every other one); medians (min-max); "
              "ratio = ours / peer. SB3 in the end-to-end runs at "
              f"{pe.get('sb3_threads')} torch thread(s) ({pe.get('sb3_threads_choice', '')}); sbx always at torch's "
              f"default ({pe.get('sbx_threads', '?')}; it uses torch only to hold its replay samples).", "",
              f"**End to end** (env steps/s): ours `build_sac` with steps_per_call K (one update per env step, the "
              f"collector acting with the host NumPy policy, the default); the peers `learn()` with train_freq = "
              f"gradient_steps = K. {pe['warmup_steps']} warm-up steps, then {pe['skip_steps']} more skipped "
              f"(compilation), then {pe['measured_steps']} timed: from the time stamp at the first multiple of 100 env "
              "steps past warm-up + skip to the last, each stamp taken after the update that follows the env steps "
              "(ours: the progress row at the end of a collect + update cycle; the peers: a callback at the next "
              "rollout's start and at the end of `learn`).", "",
              "| env | K | ours | sbx | SB3 | ours / sbx | ours / SB3 |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for env, r in pe["envs"].items():
            if "skipped" in r:
                L.append(f"| {env} | skipped: {r['skipped']} | | | | | |")
                continue
            if "env_steps_per_s" not in r:
                continue
            for k in pe["ks"]:
                cell = lambda n: (lambda st: f"{_fmt(st['median'])} ({_fmt(st['min'])}-{_fmt(st['max'])})")(  # noqa: E731
                    r["env_steps_per_s"][n])
                rr = r["ratio"][f"k{k}"]
                L.append(f"| {r['env_id']} | {k} | {cell(f'ours_k{k}')} | {cell(f'sbx_k{k}')} | {cell(f'sb3_k{k}')} | "
                         f"{rr['ours/sbx']:.2f}x | {rr['ours/sb3']:.2f}x |")
        L += ["", f"**Update only** (updates/s): `ours` is `Trainer` on a synthetic device batch (the update suite's "
              "method); `ours_sampled` is `Trainer` on batches a `MemoryLoader` samples from a ReplayTable holding "
              f"{pe.get('update_only_fill', 10000):,} random transitions; the peers are `model.train(gradient_steps=K, "
              f"batch_size=256)` on a replay buffer holding as many (sbx samples 256 K transitions on the host, moves "
              "them to JAX and runs one jitted K-step loop; SB3 samples once per gradient step). So "
              "`ours_sampled` / sbx is the like-for-like ratio. Updates per repetition: "
              + ", ".join(f"{n} {v}" for n, v in pe["update_only_updates"].items()) + ".", "",
              "| env | variant | K=" + " | K=".join(str(k) for k in pe["ks"]) + " |",
              "| --- | --- |" + " --- |" * len(pe["ks"])]
        for env, r in pe["envs"].items():
            u = r.get("update_only_per_s")
            if not u:
                continue
            variants = sorted({n.rsplit("_k", 1)[0] for n in u}, key=lambda n: (not n.startswith("ours"), n))
            for v in variants:
                L.append(f"| {r['env_id']} | {v} | " + " | ".join(
                    f"{_fmt(u[f'{v}_k{k}']['median'])} ({_fmt(u[f'{v}_k{k}']['min'])}-{_fmt(u[f'{v}_k{k}']['max'])})"
                    for k in pe["ks"]) + " |")
        L += ["", "| env | K | ours_sampled / sbx | ours / sbx | ours_sampled / best SB3 |", "| --- | --- | --- | --- | --- |"]
        for env, r in pe["envs"].items():
            for k in pe["ks"] if r.get("update_only_ratio") else []:
                rr = r["update_only_ratio"][f"k{k}"]
                L.append(f"| {r['env_id']} | {k} | {rr['ours_sampled/sbx']:.2f}x | {rr['ours/sbx']:.2f}x | "
                         f"{rr['ours_sampled/sb3']:.2f}x |")
        L += ["", PEER_DIFFERENCES, "", f"![vs peers]({stem}-peers.png)"]
    pl = s.get("peers-learning")
    if pl and pl.get("envs"):
        L += ["", "## 7. Learning vs sbx", "",
              f"Ours: `emote_jax.train.train_sac` with the default SACConfig in a temporary run dir (checkpoints off; "
              "its metric logging on, which writes the episodes.csv read here, so its wall time includes that); the peers: "
              "`SAC(...).learn()` with train_freq = gradient_steps = 1 and the settings of section 6. "
              f"{pl['metric'].capitalize()} at each grid point; mean +- std over the seeds {pl['seeds']} "
              f"(n = seeds finished so far); deterministic evaluation over {pl['eval_episodes']} episodes at the end. "
              "Runs are resumable: a finished (side, env, seed, steps) in this host's results is not run again.", ""]
        for env, e in pl["envs"].items():
            t = learning_table(pl, env)
            sides = pl["sides"]
            L += [f"**{e['env_id']}**, {e['env_steps']:,} env steps:", "",
                  "| env steps | " + " | ".join(f"{sd} (mean +- std, n)" for sd in sides) + " |",
                  "| --- |" + " --- |" * len(sides)]
            every = max(1, len(e["grid"]) // 12)
            for j, g in enumerate(e["grid"]):
                if (j + 1) % every == 0 or j == len(e["grid"]) - 1:
                    L.append(f"| {g:,} | " + " | ".join(
                        f"{_fmt(t[sd]['mean'][j], 0)} +- {_fmt(t[sd]['std'][j], 0)} ({t[sd]['n']})" for sd in sides) + " |")
            L.append("| final evaluation | " + " | ".join(_fmt(t[sd]["eval_mean"], 0) for sd in sides) + " |")
            L.append("| wall time per run (s) | " + " | ".join(_fmt(t[sd]["wall_s"], 0) for sd in sides) + " |")
            L.append("")
        L += [f"![learning vs peers]({stem}-peers-learning.png)"]
    L += ["", "## Versions", "", "```", json.dumps(res.get("versions", {}), indent=1), "```", ""]
    path.write_text("\n".join(L))


def write_plots(res: dict, stem_path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    s = res["suites"]
    up = s.get("update")
    if up and up.get("shapes"):
        fig, axes = plt.subplots(1, len(up["shapes"]), figsize=(6 * len(up["shapes"]), 4), squeeze=False)
        for ax, (shape, r) in zip(axes[0], up["shapes"].items()):
            names = list(r["updates_per_s"])
            meds = [r["updates_per_s"][n]["median"] for n in names]
            lo = [m - r["updates_per_s"][n]["min"] for n, m in zip(names, meds)]
            hi = [r["updates_per_s"][n]["max"] - m for n, m in zip(names, meds)]
            colors = ["tab:blue" if n.startswith("ours") else "tab:orange" for n in names]
            ax.bar(names, meds, yerr=[lo, hi], color=colors, capsize=3)
            ax.axhline(r["chain_gflops"]["median"] * 1e9 / r["flops_per_update"], color="k", ls="--", label="matmul roofline")
            ax.set_title(f"{shape}: SAC updates/s (batch 256, 2x256)")
            ax.set_ylabel("updates/s")
            ax.tick_params(axis="x", rotation=30)
            ax.legend()
        fig.tight_layout()
        p = stem_path.with_name(stem_path.name + "-update.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p.name)
    e2e = s.get("e2e")
    envs = {k: v for k, v in (e2e or {}).get("envs", {}).items() if "skipped" not in v}
    if envs:
        fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
        for ax, (env, r) in zip(axes[0], envs.items()):
            names = list(r["env_steps_per_s"])
            meds = [r["env_steps_per_s"][n]["median"] for n in names]
            ax.bar(names, meds, color=["tab:orange" if n == "reference" else "tab:blue" for n in names])
            ax.set_title(f"{env}: env steps/s, 1 update per env step")
            ax.set_ylabel("env steps/s")
            ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        p = stem_path.with_name(stem_path.name + "-e2e.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p.name)
    ln = s.get("learning")
    if ln and ln.get("grid"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for side, color in (("ours", "tab:blue"), ("reference", "tab:orange")):
            for sd in ln["seeds"]:
                ax.plot(ln["grid"], ln[side][str(sd)]["curve"], color=color, alpha=0.25, lw=1)
            ax.plot(ln["grid"], ln[f"{side}_mean"], color=color, lw=2,
                    label=f"{'emote_jax' if side == 'ours' else 'emote-rl 23.0.0'} (mean of {len(ln['seeds'])} seeds)")
        ax.set_xlabel("env steps")
        ax.set_ylabel("return, mean of last 10 episodes")
        ax.set_title("SAC on Pendulum-v1")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = stem_path.with_name(stem_path.name + "-learning.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p.name)
    pe = s.get("peers")
    penvs = {k: v for k, v in (pe or {}).get("envs", {}).items() if "env_steps_per_s" in v}
    if penvs:
        colors = {"ours": "tab:blue", "ours_sampled": "tab:cyan", "sbx": "tab:green", "sb3": "tab:red"}
        fig, axes = plt.subplots(2, len(penvs), figsize=(6 * len(penvs), 8), squeeze=False)
        for col, (env, r) in enumerate(penvs.items()):
            for row, (key, title) in enumerate((("env_steps_per_s", "end to end, env steps/s"),
                                                ("update_only_per_s", "update only, updates/s"))):
                ax = axes[row][col]
                data = r[key]
                variants = sorted({n.rsplit("_k", 1)[0] for n in data}, key=lambda n: (not n.startswith("ours"), n))
                width = 0.8 / len(variants)
                for i, v in enumerate(variants):
                    xs = [j + i * width for j in range(len(pe["ks"]))]
                    st = [data[f"{v}_k{k}"] for k in pe["ks"]]
                    meds = [x["median"] for x in st]
                    ax.bar(xs, meds, width, yerr=[[m - x["min"] for m, x in zip(meds, st)],
                                                  [x["max"] - m for m, x in zip(meds, st)]],
                           color=colors.get(v.split("_t")[0], "tab:gray"), alpha=0.6 if "_t1" in v else 1.0,
                           capsize=3, label=v)
                ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pe["ks"]))], [f"K={k}" for k in pe["ks"]])
                ax.set_title(f"{r['env_id']}: {title}")
                ax.legend(fontsize=8)
        fig.tight_layout()
        p = stem_path.with_name(stem_path.name + "-peers.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p.name)
    pl = s.get("peers-learning")
    if pl and pl.get("envs"):
        fig, axes = plt.subplots(1, len(pl["envs"]), figsize=(7 * len(pl["envs"]), 4.5), squeeze=False)
        colors = {"ours": "tab:blue", "sbx": "tab:green", "sb3": "tab:red"}
        for ax, (env, e) in zip(axes[0], pl["envs"].items()):
            t = learning_table(pl, env)
            for side in pl["sides"]:
                for c in t[side]["curves"].values():
                    ax.plot(e["grid"], c, color=colors.get(side, "tab:gray"), alpha=0.25, lw=1)
                if t[side]["n"]:
                    ax.plot(e["grid"], t[side]["mean"], color=colors.get(side, "tab:gray"), lw=2,
                            label=f"{'emote_jax' if side == 'ours' else PEER_NAMES.get(side, side)} "
                                  f"(mean of {t[side]['n']} seeds)")
            ax.set_xlabel("env steps")
            ax.set_ylabel("return, mean of last 10 episodes")
            ax.set_title(f"SAC on {e['env_id']}")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.tight_layout()
        p = stem_path.with_name(stem_path.name + "-peers-learning.png")
        fig.savefig(p, dpi=100)
        plt.close(fig)
        written.append(p.name)
    return written


# ---- main ----------------------------------------------------------------------------------------------
def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_state() -> dict:
    def g(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip()

    # The code the figures depend on: emote_jax/ and benchmarks/ without its results. A results file
    # describes HEAD's code when its two tree digests equal HEAD's and neither folder was dirty.
    code = {"emote_jax": ["emote_jax"], "benchmarks": ["benchmarks", ":(exclude)benchmarks/results"]}
    dirty = {k: bool(g("status", "--porcelain", "--", *paths)) for k, paths in code.items()}
    listing = {k: [ln for ln in g("ls-tree", "-r", "HEAD", "--", k).splitlines() if "\tbenchmarks/results/" not in ln]
               for k in code}
    trees = {k: hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16] for k, lines in listing.items()}
    return {"commit": g("rev-parse", "HEAD"), "dirty": any(dirty.values()), "dirty_emote_jax": dirty["emote_jax"],
            "dirty_benchmarks": dirty["benchmarks"], "tree_emote_jax": trees["emote_jax"],
            "tree_benchmarks": trees["benchmarks"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a short smoke run of every suite")
    ap.add_argument("--suites", nargs="+", choices=SUITES, default=DEFAULT_SUITES,
                    help=f"suites to run (default: {' '.join(DEFAULT_SUITES)}; peers-learning only when named)")
    ap.add_argument("--reps", type=int, default=0, help="repetitions per comparison (default: per suite)")
    ap.add_argument("--ref-threads", default="auto",
                    help="torch threads of the reference in the e2e and learning suites: a number, or 'auto' (the faster "
                         "setting measured by the update suite of this day's results, else torch's default)")
    ap.add_argument("--peer-threads", default="auto",
                    help="torch threads of stable-baselines3 in the peers suite's end-to-end runs: a number, or 'auto' "
                         "(the faster of torch's default and 1 in that suite's update-only runs)")
    ap.add_argument("--steps", type=int, default=0,
                    help="peers-learning: env steps per run (default: HalfCheetah-v5 300000, Pendulum-v1 20000; "
                         "--quick 2000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="peers-learning: seeds (default: 0 1 2; --quick 0)")
    ap.add_argument("--envs", nargs="+", choices=sorted(ENVS), default=None,
                    help="peers-learning: envs (default: halfcheetah pendulum; --quick pendulum)")
    ap.add_argument("--learn-sides", nargs="+", choices=["ours", "sbx", "sb3"], default=None,
                    help="peers-learning: sides (default: ours sbx)")
    ap.add_argument("--out", default=None, help="results file stem (default: results/<host>-<date>[-quick])")
    ap.add_argument("--report-only", action="store_true", help="rewrite the Markdown and plots from the JSON; run nothing")
    args = ap.parse_args(argv)
    _end_workers_on_sigterm()

    ours_py = ensure_project_venv()
    if Path(sys.prefix).resolve() != PROJECT_VENV.resolve() and os.environ.get("EMOTE_BENCH_REEXEC") != "1":
        os.environ["EMOTE_BENCH_REEXEC"] = "1"
        os.execv(str(ours_py), [str(ours_py), str(Path(__file__).resolve()), *(argv if argv is not None else sys.argv[1:])])
    if args.report_only:
        stem = Path(args.out) if args.out else None
        if stem is None:
            pattern = "*-[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]" + ("-quick" if args.quick else "") + ".json"
            found = sorted(RESULTS.glob(pattern), key=lambda p: p.stat().st_mtime)
            if not found:
                raise SystemExit("no results JSON to report on")
            stem = found[-1].with_suffix("")
        sys.path.insert(0, str(HERE))
        res = json.loads(stem.with_suffix(".json").read_text())
        res["plots"] = write_plots(res, stem)
        write_markdown(res, stem.with_suffix(".md"), stem.name)
        print(f"wrote {stem.with_suffix('.md')} and {res['plots']}")
        return 0
    needs_ref = bool(REF_SUITES & set(args.suites))
    needs_peers = bool(PEER_SUITES & set(args.suites))
    if set(args.suites) & PEER_SUITES == {"peers-learning"} and set(args.learn_sides or ["ours", "sbx"]) <= {"ours"}:
        needs_peers = False  # learning curves of our side only: no peers venv to build
    ref_py = ensure_ref_venv() if needs_ref else None
    peers_py = ensure_peers_venv() if needs_peers else None
    sys.path.insert(0, str(HERE))

    RESULTS.mkdir(exist_ok=True)
    date = _dt.date.today().isoformat()
    host = socket.gethostname().split(".")[0]
    stem = Path(args.out) if args.out else RESULTS / f"{host}-{date}{'-quick' if args.quick else ''}"
    json_path = stem.with_suffix(".json")
    res: dict[str, Any] = json.loads(json_path.read_text()) if json_path.exists() else {"suites": {}}
    res.update(host=host, date=date, quick=args.quick, command="python3 benchmarks/run.py " + " ".join(sys.argv[1:]),
               machine={"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(), "load_start": _load()},
               git=_git_state())
    log = stem.with_suffix(".log")
    bench = Bench(args, ours_py, ref_py, log, peers_py)
    _say(f"writing {json_path} (worker logs: {log})")

    versions = res.setdefault("versions", {})
    with bench.ours() as o:
        versions["ours"] = o("info")
    if needs_ref:
        with bench.ref() as r:
            versions["reference"] = r("info")
    if needs_peers:
        with bench.peers() as p:
            versions["peers"] = p("info")

    def save(suite: str, out: dict) -> None:
        res["suites"][suite] = out
        json_path.write_text(json.dumps(res, indent=1))

    def ref_threads() -> int:
        if args.ref_threads != "auto":
            return int(args.ref_threads)
        up = res["suites"].get("update", {}).get("shapes", {})
        if up:
            best = statistics.mode(r["best_reference"] for r in up.values())
            return int(best.split("_t")[1])
        return int(res["versions"]["reference"]["torch_threads"])

    order = [s for s in SUITES if s in args.suites]
    for suite in order:
        _say(f"suite {suite}")
        t0, load0 = time.perf_counter(), _load()
        if suite == "update":
            out = suite_update(bench)
        elif suite == "e2e":
            out = suite_e2e(bench, ref_threads())
            for env, r in out["envs"].items():
                r["shape"] = env
        elif suite == "learning":
            out = suite_learning(bench, ref_threads())
        elif suite == "compile":
            out = suite_compile(bench)
        elif suite == "memory":
            out = suite_memory(bench)
        elif suite == "gpu":
            out = suite_gpu(bench)
        elif suite == "peers":
            out = suite_peers(bench, args.peer_threads)
        else:
            out = suite_peers_learning(bench, _learning_runs_before(stem, args.quick),
                                       lambda o: save("peers-learning", o))
        out["wall_s"] = time.perf_counter() - t0
        out["command"] = res["command"]
        out["load_start"], out["load_end"] = load0, _load()
        out["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        res["suites"][suite] = out
        res["machine"]["load_end"] = _load()
        json_path.write_text(json.dumps(res, indent=1))  # after every suite: a later failure loses nothing
    res["plots"] = write_plots(res, stem)
    json_path.write_text(json.dumps(res, indent=1))
    write_markdown(res, stem.with_suffix(".md"), stem.name)
    _say(f"wrote {json_path}, {stem.with_suffix('.md')}, plots {res['plots']}")
    for t, v, ok in targets(res):
        print(f"  {'MET ' if ok else ('n/a ' if ok is None else 'MISS')} {t}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
