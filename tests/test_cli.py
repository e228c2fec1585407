"""The ``emote-jax train`` command end to end, on a short HitTheMiddle run."""

from __future__ import annotations

import json
import subprocess
import sys


def test_train_command_runs_reports_progress_and_writes_results(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "emote_jax", "train", "--env", "HitTheMiddle-v0", "--steps", "1200",
           "--num-envs", "4", "--hidden", "16,16", "--batch-size", "64", "--warmup-steps", "400",
           "--eval-episodes", "2", "--log-interval", "400", "--run-dir", str(run_dir), "--steps-per-call", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("env steps") for line in lines) >= 2
    assert any(line.startswith("evaluation over 2 deterministic episodes: mean return") for line in lines)
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env_id"] == "HitTheMiddle-v0" and config["steps_per_call"] == 4
    assert result["env_steps"] >= 1200 and len(result["eval_returns"]) == 2
    assert result["bp_steps"] > 0 and result["bp_steps"] % 4 == 0


def test_train_command_rejects_bad_settings_with_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "emote_jax", "train", "--batch-size", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--batch-size 0 is not valid: expected >= 1" in proc.stderr
