"""A sweep over odd but legal ``emote-jax train`` settings: each trains a few hundred steps, or stops at once
with one line naming the option. Every case runs in its own process under a hard time limit, so a hang
fails the test instead of stalling the suite."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Small and quick: tiny networks, a few hundred env steps, no logs or checkpoints unless the case asks.
BASE = ["train", "--env", "HitTheMiddle-v0", "--steps", "300", "--hidden", "8,8", "--batch-size", "32",
        "--warmup-steps", "64", "--eval-episodes", "1", "--no-log-metrics", "--checkpoint-interval", "0"]
#: Seconds a case may take before it counts as a hang (a case takes about 5-10 s on 2 busy cores).
HARD_LIMIT_S = 120

TRAINS = {
    "16 envs, four env steps per backprop step, gamma 0": ["--num-envs", "16", "--bp-steps-per-env-step", "0.25",
                                                           "--gamma", "0"],
    "16 threaded envs, K=8": ["--num-envs", "16", "--threaded", "--steps-per-call", "8"],
    "2 async envs, acting on the device": ["--num-envs", "2", "--async-envs", "--act-on-device"],
    "K larger than the budget": ["--steps-per-call", "512"],
    "steps not a multiple of K, prefetch": ["--steps", "301", "--steps-per-call", "7", "--prefetch"],
    "warm-up 0, gamma 1, tau 1": ["--warmup-steps", "0", "--gamma", "1", "--tau", "1"],
    "warm-up below a batch": ["--warmup-steps", "5"],
    "warm-up below a batch, threaded": ["--warmup-steps", "5", "--threaded"],
    "warm-up above a batch, n-step 4": ["--warmup-steps", "200", "--rollout-length", "4"],
    "batch size 1": ["--batch-size", "1"],
    "threaded with prefetch": ["--threaded", "--prefetch"],
    "tiny memory that ejects during warm-up": ["--memory-size", "40", "--warmup-steps", "200"],
    "one env step per 10 backprop steps": ["--bp-steps-per-env-step", "10", "--steps", "100"],
    "no evaluation, checkpoints every 50 steps keeping 1": ["--eval-episodes", "0", "--checkpoint-interval", "50",
                                                           "--keep-checkpoints", "1"],
    "a JAX-native env stepped on the device, 3 envs, K=4, n-step 2": ["--env", "jax:Pendulum-v1", "--num-envs", "3",
                                                                      "--steps-per-call", "4", "--rollout-length", "2"],
}

#: Settings that cannot work: (extra args, the option the one-line error must name, exit status).
REFUSED = {
    "batch size 0": (["--batch-size", "0"], "--batch-size", 2),
    "warm-up beyond the budget": (["--warmup-steps", "300"], "--warmup-steps", 2),
    "memory smaller than a batch": (["--memory-size", "8"], "--memory-size", 2),
    "K = 0": (["--steps-per-call", "0"], "--steps-per-call", 2),
    "batch not a multiple of the n-step length": (["--rollout-length", "3"], "--batch-size", 2),
    "n-step beyond the time limit": (["--env", "Pendulum-v1", "--rollout-length", "250", "--batch-size", "250"],
                                     "--rollout-length", 2),
    "n-step longer than every episode": (["--rollout-length", "32"], "rollout_length", 1),
    "a discrete-action env": (["--env", "CartPole-v1"], "--env", 2),
    "an env id gymnasium does not know": (["--env", "NoSuchEnv-v0"], "--env", 2),
    "zero hidden units": (["--hidden", "0"], "--hidden", 2),
    "threaded collection of a JAX-native env": (["--env", "jax:Pendulum-v1", "--threaded"], "--threaded", 2),
}


def run_cli(args: list[str], run_dir) -> subprocess.CompletedProcess:
    """The CLI in a new interpreter; it shares the session's compilation cache (tests/conftest.py)."""
    cmd = [sys.executable, "-m", "emote_jax", *BASE, *args, "--run-dir", str(run_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HARD_LIMIT_S, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("case", sorted(TRAINS))
def test_odd_but_legal_settings_train(case, tmp_path):
    proc = run_cli(TRAINS[case], tmp_path / "run")
    assert proc.returncode == 0, f"{case}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["bp_steps"] > 0 and result["env_steps"] > 0, case
    assert result["interrupted_by"] is None, case


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_settings_that_cannot_work_stop_at_once_with_one_line(case, tmp_path):
    args, option, status = REFUSED[case]
    proc = run_cli(args, tmp_path / "run")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == status, f"{case}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("emote-jax: error:"), f"{case}: {proc.stderr[-3000:]}"
    assert option in lines[0], f"{case}: the error does not name {option}: {lines[0]}"
    assert not (tmp_path / "run" / "result.json").exists()
