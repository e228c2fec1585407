"""What a user sees of `emote-jax train` and `emote-jax eval`, end to end on short HitTheMiddle runs:
progress lines on a pipe and a bar on a terminal, TensorBoard logs with every default metric, metrics.csv,
learning_curve.png, the saved policy, and `eval` reproducing the evaluation at the end of training."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import select
import struct
import subprocess
import sys
import zlib

import pytest

from emote_jax.logging import read_histograms, read_scalars

TRAIN = ["--env", "HitTheMiddle-v0", "--num-envs", "4", "--hidden", "16,16", "--batch-size", "64",
         "--warmup-steps", "400", "--eval-episodes", "2", "--steps-per-call", "4"]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n

#: Logged by default (the SAC device metrics, the collector's episodes, throughput, compile time, system).
DEFAULT_TAGS = [
    "q1/loss", "q2/loss", "policy/loss", "alpha/loss",
    "q1/lr", "q2/lr", "policy/lr", "alpha/lr",
    "q1/grad_norm", "q2/grad_norm", "policy/grad_norm", "alpha/grad_norm",
    "alpha/alpha", "q1/q_mean", "q2/q_mean", "policy/q_pi_mean", "q_target/q_target_mean",
    "q1/loss/windowed", "alpha/alpha/windowed",
    "episode/return", "episode/length", "episode/return/windowed", "env/steps",
    "performance/env_steps_per_s", "performance/bp_steps_per_s", "performance/bp_samples_per_s",
    "performance/compile_s", "system/rss_mb", "system/cpu_percent",
]


def emote(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emote_jax", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "htm"
    proc = emote("train", *TRAIN, "--steps", "2000", "--log-interval", "400", "--metrics-interval", "20",
                 "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc.stdout


def test_a_pipe_gets_periodic_lines_without_control_characters(piped_run):
    _, stdout = piped_run
    assert not CONTROL.search(stdout), repr(CONTROL.search(stdout))
    lines = stdout.splitlines()
    progress = [line for line in lines if line.startswith("env steps")]
    assert len(progress) >= 3
    for line in progress:
        m = re.match(r"env steps +(\d+)/2000 \| bp step +(\d+) \| return \(last 10 episodes\) +(\S+) \| +\d+ updates/s"
                     r" \| +\d+ env steps/s \| +\d+ s \| ETA (\d+:\d\d|\?)$", line)
        assert m, line
    counts = [int(re.search(r"(\d+)/2000", line).group(1)) for line in progress]
    assert [c // 400 for c in counts] == list(range(1, len(progress) + 1))
    assert sum(line.startswith("done, overall:") for line in lines) == 1


def test_tensorboard_holds_every_default_metric_with_finite_values(piped_run):
    run_dir, _ = piped_run
    scalars = read_scalars(run_dir / "tensorboard")
    missing = [t for t in DEFAULT_TAGS if t not in scalars]
    assert not missing, f"missing tags {missing}; have {sorted(scalars)}"
    for tag in DEFAULT_TAGS:
        assert all(math.isfinite(v) for _, v in scalars[tag]), tag
    steps = [s for s, _ in scalars["q1/loss"]]
    assert steps[:-1] == list(range(20, 20 * len(steps), 20))  # every 20 bp steps, then the last step
    assert scalars["q1/lr"][-1][1] == pytest.approx(3e-4)
    assert 0 < scalars["alpha/alpha"][-1][1] <= 0.2  # max_alpha
    assert scalars["env/steps"][-1][1] == 2000
    assert all(v == 31 for _, v in scalars["episode/length"])  # HitTheMiddle episodes: 31 steps
    assert all(-31 * 100 <= v <= 0 for _, v in scalars["episode/return"])  # reward -pos^2, |pos| <= 10
    assert scalars["system/rss_mb"][0][1] > 50
    hists = read_histograms(run_dir / "tensorboard")
    assert "episode/return" in hists and "params/policy/MLP_0/Dense_0/kernel" in hists
    assert hists["params/policy/MLP_0/Dense_0/kernel"][-1][1].num == 2 * 16


def test_metrics_csv_and_episodes_csv_agree_with_the_result(piped_run):
    run_dir, _ = piped_run
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"step", "q1/loss", "episode/return/windowed", "performance/bp_steps_per_s"} <= set(rows[0])
    assert [int(r["step"]) for r in rows[:-1]] == list(range(20, 20 * len(rows), 20))
    result = json.loads((run_dir / "result.json").read_text())
    assert int(rows[-1]["step"]) == result["bp_steps"]
    with open(run_dir / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    assert len(episodes) == 4 * (500 // 31)  # 4 envs, 500 steps each, 31-step episodes
    assert [float(e["return"]) for e in episodes[-10:]] == pytest.approx(result["train_returns_last10"])
    assert all(int(e["length"]) == 31 for e in episodes)
    ends = [int(e["env_steps"]) for e in episodes]
    assert ends == sorted(ends) and ends[-1] <= 2000 and result["compile_s"] > 0


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])  # the header chunk is intact
    return struct.unpack(">II", data[16:24])


def test_the_learning_curve_is_a_png_of_sensible_size(piped_run):
    run_dir, _ = piped_run
    path = run_dir / "learning_curve.png"
    assert png_size(path) == (700, 400)
    assert 10_000 < path.stat().st_size < 1_000_000


def test_eval_reloads_the_policy_and_reproduces_the_final_evaluation(piped_run):
    run_dir, _ = piped_run
    result = json.loads((run_dir / "result.json").read_text())
    proc = emote("eval", str(run_dir), "--episodes", "2", "--video", str(run_dir / "video"))
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"mean return (-?\d+\.\d+) \(std (\d+\.\d+), min (-?\d+\.\d+), max (-?\d+\.\d+)\)", proc.stdout)
    assert m, proc.stdout
    assert float(m.group(1)) == pytest.approx(result["eval_mean_return"], abs=0.006)
    assert float(m.group(2)) == pytest.approx(result["eval_std_return"], abs=0.006)
    assert "video skipped: HitTheMiddle-v0 cannot render frames" in proc.stdout


def test_eval_of_a_directory_that_is_no_run_says_so(tmp_path):
    proc = emote("eval", str(tmp_path))
    assert proc.returncode == 2  # a bad argument (exit 1 is for failures at run time)
    assert "config.json does not exist" in proc.stderr and "a run directory of `emote-jax train`?" in proc.stderr


def test_a_terminal_gets_a_progress_bar(tmp_path):
    main, sub = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "emote_jax", "train", *TRAIN, "--steps", "1200",
                             "--run-dir", str(tmp_path / "run"), "--no-log-metrics"],
                            stdin=subprocess.DEVNULL, stdout=sub, stderr=subprocess.PIPE, close_fds=True,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(sub)
    out = b""
    while True:
        ready, _, _ = select.select([main], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(main)
    assert proc.returncode == 0, proc.stderr.read().decode()
    text = out.decode()
    frames = [f for f in re.split(r"[\r\n]+", text) if "% |" in f]
    assert frames, text
    assert "\r" in text and re.search(r"100% \|#+\| 1200/1200 env steps", text), text
    for frame in frames:
        assert re.match(r" *\d+% \|[#-]+\| \d+/1200 env steps \| return \S+ \| \S+ upd/s \S+ env/s \| \d+:\d\d<", frame)
    assert not any(line.startswith("env steps") for line in text.splitlines())  # the bar instead of lines
    assert "done, overall:" in text


def test_a_resumed_run_continues_its_metrics_and_its_learning_curve(tmp_path):
    run_dir = tmp_path / "run"
    first = emote("train", *TRAIN, "--steps", "1200", "--metrics-interval", "20", "--run-dir", str(run_dir))
    assert first.returncode == 0, first.stderr
    with open(run_dir / "metrics.csv") as f:
        rows_before = list(csv.DictReader(f))
    with open(run_dir / "episodes.csv") as f:
        episodes_before = list(csv.DictReader(f))
    bp_before = json.loads((run_dir / "result.json").read_text())["bp_steps"]
    second = emote("train", *TRAIN, "--steps", "2000", "--metrics-interval", "20", "--run-dir", str(run_dir),
                   "--resume")
    assert second.returncode == 0, second.stderr
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] > bp_before
    assert [r["step"] for r in rows[:len(rows_before)]] == [r["step"] for r in rows_before]
    assert [r["q1/loss"] for r in rows[:len(rows_before)]] == [r["q1/loss"] for r in rows_before]
    with open(run_dir / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    assert episodes[:len(episodes_before)] == episodes_before  # the first part, once
    later = episodes[len(episodes_before):]
    assert later and all(int(e["bp_step"]) > bp_before for e in later)
    ends = [int(e["env_steps"]) for e in episodes]
    assert ends == sorted(ends) and ends[-1] <= 2000
    assert png_size(run_dir / "learning_curve.png") == (700, 400)
    scalars = read_scalars(run_dir / "tensorboard")  # two event files, one per part
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert scalars["env/steps"][-1][1] == 2000
