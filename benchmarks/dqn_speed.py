"""DQN speed: emote_jax's DQN against a plain PyTorch DQN (``dqn_torch_side.py``) in the reference's venv.

emote-rl 23.0.0 has no DQN, so the PyTorch side is the equivalent DQN issue 11 asks for, with the same
settings (``DQNConfig``'s defaults on CartPole-v1: 2x256, Adam 2.3e-3, Huber, clip 10, batch 64, a hard
target copy every 128 updates, 100k replay, 1,000 warm-up steps, one update per two env steps).

Two measurements, each side in its own fresh process, repetitions alternating between the sides:

* ``update``: updates/s on batches sampled from a replay of 10k random CartPole-shaped transitions. Ours
  through ``Trainer.train`` at K = 1 and K = 32 updates per compiled call (the sampling included, on the
  host, as on the PyTorch side).
* ``e2e``: env steps/s training on CartPole-v1 at the default schedule, timed over the env steps after
  ``--measure-from`` (so compilation and the random warm-up are outside it); ours at K = 1 (the default)
  and K = 32.

Writes ``benchmarks/results/dqn_speed-<host>-<date>.json`` and ``.md`` (medians and ranges, ratios
ours / torch). Pin both sides to the same cores with ``--cpus`` (``taskset``) or leave them unpinned.

    .venv/bin/python benchmarks/dqn_speed.py [--reps 3] [--cpus 0 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

OURS_UPDATE = """
import json, sys, time
import jax, numpy as np
from emote_jax import Trainer
from emote_jax.memory import MemoryLoader, ReplayTable
from emote_jax.recipes.dqn import DQN, DQNConfig
k, updates = int(sys.argv[1]), int(sys.argv[2])
cfg = DQNConfig(steps_per_call=k)
table = ReplayTable(cfg.memory_size, {"obs": ((4,), np.float32)}, (), action_dtype=np.int64, seed=0)
rng = np.random.default_rng(0)
for _ in range(10):  # 10 episodes of 1000 random CartPole-shaped transitions
    n, term = 1000, np.zeros(1000, bool)
    term[-1] = True
    table.add_transitions(agent_ids=np.zeros(n, np.int64), episode_ids=np.full(n, table.new_episode_id()),
                          steps=np.arange(n), observation={"obs": rng.standard_normal((n, 4), np.float32)},
                          actions=rng.integers(0, 2, n), rewards=rng.standard_normal(n).astype(np.float32),
                          next_observation={"obs": rng.standard_normal((n, 4), np.float32)},
                          terminated=term, truncated=np.zeros(n, bool))
loader = MemoryLoader(table, cfg.batch_size, 1, steps_per_call=k)
callbacks, _ = DQN.make_callbacks(cfg, 4, 2, jax.random.key(0))

class Calls:  # K-stacked batches sampled on the host each call (steps_per_call: the trainer takes them as they are)
    n, steps_per_call = 0, k
    def __iter__(self):
        for _ in range(self.n):
            yield loader.sample_batch()

calls = Calls()
trainer = Trainer(callbacks, calls, steps_per_call=k, seed=0)
calls.n = max(2, 64 // k)
trainer.train()  # compile, warm up
jax.block_until_ready(trainer.ctx.state)
calls.n = -(-updates // k)
t0 = time.perf_counter()
trainer.train()
jax.block_until_ready(trainer.ctx.state)
dt = time.perf_counter() - t0
n = calls.n * k
print(json.dumps({"what": "update", "k": k, "updates": n, "seconds": dt, "updates_per_s": n / dt,
                  "compilations": trainer.num_compilations}))
"""

OURS_E2E = """
import json, sys, tempfile, time
from emote_jax.recipes.common import build_run
from emote_jax.recipes.dqn import DQN, DQNConfig
k, env_steps, measure_from = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = DQNConfig(steps_per_call=k, env_steps=env_steps, eval_interval=0, eval_episodes=0, log_metrics=False,
                checkpoint_interval=0, run_dir=tempfile.mkdtemp())
run = build_run(DQN, cfg, out=None)
t, col = run.trainer, run.collector
t.train(lambda: col.env_steps >= measure_from)
e0, b0, t0 = col.env_steps, t.bp_step, time.perf_counter()
t.train(lambda: col.env_steps >= env_steps)
dt = time.perf_counter() - t0
run.env.close()
n, u = col.env_steps - e0, t.bp_step - b0
print(json.dumps({"what": "e2e", "k": k, "env_steps": n, "updates": u, "seconds": dt, "env_steps_per_s": n / dt,
                  "updates_per_s": u / dt, "compilations": t.num_compilations}))
"""


def _run(argv: list[str], cpus: list[int] | None) -> dict:
    pin = ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([*pin, *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement, alternating sides")
    p.add_argument("--cpus", type=int, nargs="+", default=None, help="pin every process to these cores")
    p.add_argument("--updates", type=int, default=3_000, help="updates timed in the update measurement")
    p.add_argument("--env-steps", type=int, default=20_000, help="env steps of the end-to-end runs")
    p.add_argument("--measure-from", type=int, default=6_000, help="the end-to-end rate is over the steps after this")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    if a.quick:
        a.reps, a.updates, a.env_steps, a.measure_from = 1, 64, 2_500, 1_500
    ours_py, torch_py = str(ROOT / ".venv/bin/python"), str(HERE / ".ref-venv/bin/python")
    if not Path(torch_py).exists():
        from run import ensure_ref_venv
        ensure_ref_venv()
    from run import _git_state

    plan = [("update", "torch", [torch_py, str(HERE / "dqn_torch_side.py"), "update", "--updates", str(a.updates)])]
    for k in (1, 32):
        plan.append((f"update K={k}", "ours", [ours_py, "-c", OURS_UPDATE, str(k), str(a.updates)]))
    plan.append(("e2e", "torch", [torch_py, str(HERE / "dqn_torch_side.py"), "e2e", "--env-steps", str(a.env_steps),
                                  "--measure-from", str(a.measure_from)]))
    for k in (1, 32):
        plan.append((f"e2e K={k}", "ours", [ours_py, "-c", OURS_E2E, str(k), str(a.env_steps), str(a.measure_from)]))

    runs: dict[str, list[dict]] = {f"{side} {name}": [] for name, side, _ in plan}
    t_start = time.time()
    for rep in range(a.reps):
        for name, side, argv in (plan if rep % 2 == 0 else plan[::-1]):
            res = _run(argv, a.cpus)
            runs[f"{side} {name}"].append(res)
            rate = res.get("env_steps_per_s", res.get("updates_per_s"))
            print(f"rep {rep + 1}/{a.reps} {side:5s} {name:10s} {rate:8.1f} "
                  f"{'env steps/s' if 'env_steps_per_s' in res else 'updates/s'} ({time.time() - t_start:.0f} s)",
                  flush=True)

    def med(key: str, field: str) -> dict:
        return _summary([r[field] for r in runs[key]])

    table = {
        "update": {"torch": med("torch update", "updates_per_s"), "ours K=1": med("ours update K=1", "updates_per_s"),
                   "ours K=32": med("ours update K=32", "updates_per_s")},
        "e2e": {"torch": med("torch e2e", "env_steps_per_s"), "ours K=1": med("ours e2e K=1", "env_steps_per_s"),
                "ours K=32": med("ours e2e K=32", "env_steps_per_s")},
    }
    ratios = {f"{m} {k} / torch": table[m][k]["median"] / table[m]["torch"]["median"]
              for m in table for k in ("ours K=1", "ours K=32")}
    host = socket.gethostname().split(".")[0]
    out = a.out or HERE / "results" / f"dqn_speed-{'quick-' if a.quick else ''}{host}-{time.strftime('%Y%m%d')}.json"
    result = {"what": __doc__.split("\n\n")[0], "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M"),
              "git": _git_state(), "loadavg_end": os.getloadavg(), "cpus": a.cpus, "reps": a.reps,
              "settings": {"updates": a.updates, "env_steps": a.env_steps, "measure_from": a.measure_from},
              "table": table, "ratios": ratios, "runs": runs}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    lines = [f"# DQN speed, {result['date']} (git {result['git']})", "",
             f"{a.reps} alternating repetitions, medians [min-max]; cpus {a.cpus or 'all'}; "
             f"load at the end {os.getloadavg()[0]:.1f}.", "",
             "| measure | plain PyTorch DQN | emote_jax K=1 | emote_jax K=32 | ours/torch K=1 | ours/torch K=32 |",
             "|---|---|---|---|---|---|"]
    for m, unit in (("update", "updates/s"), ("e2e", "env steps/s")):
        cells = [f"{table[m][s]['median']:.0f} [{table[m][s]['min']:.0f}-{table[m][s]['max']:.0f}]"
                 for s in ("torch", "ours K=1", "ours K=32")]
        lines.append(f"| {m} ({unit}) | {' | '.join(cells)} | {ratios[f'{m} ours K=1 / torch']:.2f}x | "
                     f"{ratios[f'{m} ours K=32 / torch']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
