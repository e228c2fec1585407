"""The device path on a GPU, in one command: on-device SAC against update-only, populations P = 1..256,
and SAC on brax's HalfCheetah for 1M env steps, alone and as a population.

Run it on a GPU machine as it is (the project's ``.venv`` with ``jax[cuda13]`` and ``emote-jax[brax]``):

    .venv/bin/python benchmarks/gpu_device.py            # not yet run on a GPU: its duration is unknown
    .venv/bin/python benchmarks/gpu_device.py --quick    # a few minutes: the same steps, tiny budgets (CPU too)

Parts, each a subprocess writing its own results file, gathered into
``benchmarks/results/gpu_device-<host>-<date>.json``:

* ``device``: ``device_collection.py``: env steps/s of SAC with the envs and replay on the device against
  the host collector and against update-only (target: device >= 0.95 x update-only).
* ``population``: ``population_scaling.py --sizes 1 2 4 ... 256`` on jax:Pendulum-v1 (target: the wall time
  of one call at P = 64 <= 2x P = 1).
* ``brax``: ``emote-jax train --env brax:halfcheetah --steps 1000000`` with 32 envs and 4 updates per
  vector step (one update per 8 env steps: 125k updates of batch 256), K = 32; its ``result.json``'s
  training wall time against rejax's published 8 minutes for one SAC agent on an A100
  (``--brax-num-envs`` and ``--brax-updates`` change the schedule).
* ``brax_population``: the same run as ``--population 300`` (100k replay per member), wall time per agent
  against the 9 s target.

What each part printed is kept beside the JSON (``.log``). A part that fails is recorded with its error
and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from run import _git_state  # noqa: E402

#: rejax's published figures for SAC on brax (one agent, 1M env steps, A100), and the issue's target at P = 300.
REJAX_ONE_AGENT_S, PER_AGENT_AT_300_S = 8 * 60, 9.0


def _part(name: str, cmd: list[str], log: Path, timeout_s: int) -> dict:
    """Run ``cmd``, appending its output to ``log``; ``{"ok", "wall_s", "command"[, "error"]}``."""
    t0 = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    with log.open("a") as f:
        f.write(f"\n==== {name}: {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout_s)
            ok, err = proc.returncode == 0, None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            ok, err = False, f"timed out after {timeout_s} s"
    out = {"ok": ok, "wall_s": time.perf_counter() - t0, "command": " ".join(cmd)}
    if err:
        out["error"] = err + f" (see {log})"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {'done' if ok else out['error']} in {out['wall_s']:.0f} s", flush=True)
    return out


def _train_result(run_dir: Path, population: bool) -> dict:
    path = run_dir / ("population.json" if population else "result.json")
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets: checks that every part runs (CPU too)")
    p.add_argument("--parts", nargs="+", default=["device", "population", "brax", "brax_population"],
                   choices=["device", "population", "brax", "brax_population"])
    p.add_argument("--brax-env", default="brax:halfcheetah")
    p.add_argument("--brax-steps", type=int, default=None, help="env steps of the brax runs (default 1M; quick 2k)")
    p.add_argument("--brax-population", type=int, default=None, help="members of the brax population (default 300)")
    p.add_argument("--brax-num-envs", type=int, default=32)
    p.add_argument("--brax-updates", type=int, default=4, help="backprop steps per vector step of the brax runs")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    import jax  # noqa: PLC0415  (after argparse: --help without JAX)

    host = socket.gethostname().split(".")[0]
    stem = a.out or HERE / "results" / f"gpu_device-{host}-{time.strftime('%Y%m%d')}{'-quick' if a.quick else ''}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    log = stem.with_suffix(".log")
    py = sys.executable
    res: dict = {"what": __doc__.splitlines()[0], "host": host, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "quick": a.quick, "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                 "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                 "versions": {"jax": jax.__version__}, "git": _git_state(), "command": " ".join(sys.argv), "parts": {}}
    if res["backend"] == "cpu" and not a.quick:
        print("note: JAX's backend is the CPU here; the targets are a GPU's (use --quick to check the parts run)")
    steps = a.brax_steps or (2000 if a.quick else 1_000_000)
    size = a.brax_population or (2 if a.quick else 300)
    work = Path(tempfile.mkdtemp(prefix="gpu-device-"))

    if "device" in a.parts:
        f = work / "device.json"
        part = _part("device", [py, str(HERE / "device_collection.py"), "--reps", "1" if a.quick else "5",
                                "--steps", "64" if a.quick else "4000", "--out", str(f)], log, 3600)
        part["result"] = json.loads(f.read_text()) if f.is_file() else None
        res["parts"]["device"] = part
    if "population" in a.parts:
        f = work / "population.json"
        sizes = ["1", "2"] if a.quick else [str(2**i) for i in range(9)]  # 1..256
        part = _part("population", [py, str(HERE / "population_scaling.py"), "--sizes", *sizes, "--reps",
                                    "1" if a.quick else "3", "--calls", "2" if a.quick else "20",
                                    "--memory-size", "2000" if a.quick else "100000", "--out", str(f)], log, 7200)
        part["result"] = json.loads(f.read_text()) if f.is_file() else None
        if part["result"]:
            part["p64_wall_vs_p1"] = part["result"]["wall_per_call_vs_first"].get("64")
        res["parts"]["population"] = part
    train = [py, "-m", "emote_jax", "train", "--env", a.brax_env, "--steps", str(steps), "--num-envs",
             "4" if a.quick else str(a.brax_num_envs), "--bp-steps-per-env-step", "1" if a.quick else str(a.brax_updates),
             "--steps-per-call", "4" if a.quick else "32", "--warmup-steps", "512" if a.quick else "10000",
             "--eval-episodes", "1" if a.quick else "10", "--no-log-metrics", "--checkpoint-interval", "0"]
    if "brax" in a.parts:
        run_dir = work / "brax"
        part = _part("brax", [*train, "--run-dir", str(run_dir)], log, 4 * 3600)
        r = _train_result(run_dir, population=False)
        part.update(train_wall_s=r.get("train_wall_s"), eval_mean_return=r.get("eval_mean_return"),
                    env_steps=r.get("env_steps"), rejax_one_agent_s=REJAX_ONE_AGENT_S)
        res["parts"]["brax"] = part
    if "brax_population" in a.parts:
        run_dir = work / "brax_population"
        part = _part("brax_population", [*train, "--run-dir", str(run_dir), "--population", str(size),
                                         "--memory-size", "2000" if a.quick else "100000"], log, 6 * 3600)
        r = _train_result(run_dir, population=True)
        wall = r.get("train_wall_s")
        part.update(population=size, train_wall_s=wall, per_agent_s=wall / size if wall else None,
                    target_per_agent_s=PER_AGENT_AT_300_S, eval_mean_return=r.get("eval_mean_return"))
        res["parts"]["brax_population"] = part
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2))
    print(f"wrote {stem.with_suffix('.json')} (output of the parts: {log})")
    return 0 if all(p["ok"] for p in res["parts"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
