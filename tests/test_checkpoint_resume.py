"""Exact resume: 2N steps straight equal N steps, a checkpoint, and N more in a new process.

A resumed run restarts its episodes at the checkpoint's step (an env's state is not checkpointable in
general; docs/decisions/0004), so the straight run does the same at step N:
``collector.restart_episodes(GymCollector.resume_seed(seed, N))``. Everything else (networks, optimizer
states, hparams, counters, the trainer's and the collector's RNG, the memory with its sampler RNG and
episode links, the collector's pending episode bookkeeping) comes from the checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from emote_jax import HostCallback, Trainer
from emote_jax.checkpoint import checkpoint_steps
from emote_jax.collectors import GymCollector
from emote_jax.train import SACConfig, build_sac

REPO = Path(__file__).resolve().parents[1]
N = 30
CFG = dict(env_id="HitTheMiddle-v0", num_envs=4, hidden_dims=(8, 8), batch_size=32, memory_size=300,
           warmup_steps=100, steps_per_call=2, seed=3, env_steps=10**6, log_metrics=False, eval_episodes=0,
           checkpoint_interval=N)

# Phase 2 in a fresh interpreter: resume from run_dir, train to 2N, dump everything.
RESUME = """
import json, sys
import jax, numpy as np
from emote_jax.train import SACConfig, build_sac
cfg = SACConfig(**json.loads(sys.argv[1]))
run = build_sac(cfg, out=None, resume=True)
t = run.trainer
ctx = t.train(lambda: t.bp_step > int(sys.argv[2]))
run.env.close()
flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(ctx.state)[0]}
flat["key_data"] = np.asarray(jax.random.key_data(ctx.key))
for k, v in run.table.state_dict()["columns"].items():
    flat["table/" + k] = v
flat["bp_samples"] = np.asarray(ctx.bp_samples)
flat["env_steps"] = np.asarray(run.collector.env_steps)
np.savez(sys.argv[3], **flat)
"""


def dump(run, ctx) -> dict[str, np.ndarray]:
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(ctx.state)[0]}
    flat["key_data"] = np.asarray(jax.random.key_data(ctx.key))
    for k, v in run.table.state_dict()["columns"].items():
        flat["table/" + k] = v
    flat["bp_samples"] = np.asarray(ctx.bp_samples)
    flat["env_steps"] = np.asarray(run.collector.env_steps)
    return flat


class RestartAt(HostCallback):
    """In the straight run: what a resumed run does at its first step."""

    def __init__(self, collector: GymCollector, step: int, seed: int):
        super().__init__(name="restart_at", cycle=1, order=2500)
        self.collector, self.step, self.seed = collector, step, seed

    def end_cycle(self, ctx):
        if ctx.bp_step == self.step:
            self.collector.restart_episodes(GymCollector.resume_seed(self.seed, self.step))


def test_resume_in_a_new_process_equals_the_straight_run_exactly(tmp_path):
    # the straight run: 2N steps, episodes restarted at step N
    straight = build_sac(SACConfig(**CFG), out=None)
    assert straight.checkpointer is None  # no run_dir: nothing written
    trainer = Trainer([*straight.trainer.callbacks, RestartAt(straight.collector, N, CFG["seed"])], straight.loader,
                      steps_per_call=CFG["steps_per_call"], seed=CFG["seed"])
    ctx = trainer.train(lambda: trainer.bp_step > 2 * N)
    straight.env.close()
    expected = dump(straight, ctx)

    # N steps with checkpoints, then a new process resumes and trains N more
    cfg = {**CFG, "run_dir": str(tmp_path / "run")}
    first = build_sac(SACConfig(**cfg), out=None)
    first.trainer.train(lambda: first.trainer.bp_step > N)
    first.env.close()
    at_n = dump(first, first.trainer.ctx)
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [N]
    out = tmp_path / "resumed.npz"
    proc = subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), str(2 * N), str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(out, allow_pickle=False))

    assert set(got) == set(expected)
    assert int(got["['trainer']['bp_step']"]) == 2 * N + 1
    assert int(got["bp_samples"]) == 2 * N * CFG["batch_size"]
    assert int(got["env_steps"]) == int(expected["env_steps"]) > 0
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    # the comparison is not vacuous: the parameters moved between the checkpoint and the end
    policy = [k for k in expected if k.startswith("['policy']['params']")]
    assert policy and any(not np.array_equal(at_n[k], got[k]) for k in policy)
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [N, 2 * N]
