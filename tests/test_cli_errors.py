"""The CLI never hangs or crashes in a user's face: errors as one line with the right exit status,
``--resume`` past a damaged checkpoint, ``--resume-step``, ``emote-jax checkpoints``, ``--debug``.

Most cases call :func:`emote_jax.cli.main` in-process (``capfd`` sees what a terminal would); the exit
status of the real command and the traceback of ``--debug`` are checked in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

from emote_jax import CallbackError
from emote_jax.checkpoint import checkpoint_steps
from emote_jax.cli import DEBUG_HINT, exit_status, main
from emote_jax.errors import ConfigError
from emote_jax.faults import NonFiniteError, TrainingAborted
from test_checkpoint_integrity import FLIPPED  # tests/ is on sys.path under pytest
from test_checkpoint_integrity import flip_array_bytes as flip_in_files
from test_checkpoint_integrity import rot_array as rot_in_storage

REPO = Path(__file__).resolve().parents[1]
#: A --steps budget that a resumed run has spent already (each checkpoint is beyond 100 env steps and
#: above the 64 warm-up steps), so it stops right after restoring: these tests are about what is restored.
DONE = "100"
TINY = ["--env", "HitTheMiddle-v0", "--hidden", "16,16", "--batch-size", "32", "--warmup-steps", "64",
        "--checkpoint-interval", "100", "--eval-episodes", "1", "--no-log-metrics"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of 300 env steps with checkpoints every 100 bp steps (three kept)."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "300", "--run-dir", str(run)]) == 0
    assert len(checkpoint_steps(run / "checkpoints")) == 3
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A fresh copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli(capfd, *args: str) -> tuple[int, str, list[str]]:
    """``(exit status, stdout, stderr lines)`` of ``emote-jax ARGS`` run in this process."""
    capfd.readouterr()
    status = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return status, out, err.splitlines()


def steps_of(run: Path) -> list[int]:
    return checkpoint_steps(run / "checkpoints")


def flip_array_bytes(run: Path, step: int) -> str:
    """Invert bytes in the middle of each array file of a checkpoint of ``run``; what its check will say."""
    flip_in_files(run / "checkpoints", step)
    return "FLIPPED"


def rot_array(run: Path, step: int) -> str:
    """Change one array of a checkpoint of ``run`` under valid storage checksums; what its check will say."""
    return f"array {rot_in_storage(run / 'checkpoints', step)} does not match its CRC-32"


def garble_meta(run: Path, step: int) -> str:
    """Replace a checkpoint's metadata JSON with its first half (a half-written file); what its check will say."""
    meta = run / "checkpoints" / str(step) / "meta" / "metadata"
    meta.write_text(meta.read_text()[: meta.stat().st_size // 2])
    return "its metadata (meta/) is missing or unreadable: JSONDecodeError"


def says(line: str, what: str) -> bool:
    return bool(FLIPPED.search(line)) if what == "FLIPPED" else what in line


def one_error(err: list[str]) -> str:
    assert len(err) == 1 and err[0].startswith("emote-jax: error: "), err
    return err[0]


# ---- --resume past a damaged checkpoint -------------------------------------------------------------------


@pytest.mark.parametrize("damage", [flip_array_bytes, rot_array, garble_meta])
def test_resume_passes_over_a_damaged_newest_checkpoint_with_one_warning(capfd, run, damage):
    steps = steps_of(run)
    what = damage(run, steps[-1])
    status, out, err = cli(capfd, "train", "--resume", "--run-dir", run, "--steps", DONE)
    assert status == 0, err
    assert len(err) == 1, err
    bad = run / "checkpoints" / str(steps[-1])
    assert err[0].startswith(f"emote-jax: warning: checkpoint {bad} fails its integrity check (")
    assert says(err[0], what) and f"loaded bp step {steps[-2]} instead" in err[0]
    assert f"resuming from the checkpoint of bp step {steps[-2]} in {run / 'checkpoints'}" in out
    assert json.loads((run / "result.json").read_text())["bp_steps"] == steps[-2]
    assert (run / "checkpoints" / f"{steps[-1]}.damaged").is_dir() and steps_of(run) == steps[:-1]


def test_resume_with_every_checkpoint_damaged_is_one_line_and_exit_status_1(capfd, run):
    steps = steps_of(run)
    whats = [damage(run, s) for s, damage in zip(steps, [rot_array, flip_array_bytes, garble_meta])]
    status, out, err = cli(capfd, "train", "--resume", "--run-dir", run, "--steps", DONE)
    assert status == 1
    line = one_error(err)
    assert line.startswith(f"emote-jax: error: CheckpointDamagedError: every checkpoint (3) in {run / 'checkpoints'} "
                           "fails its integrity check: ")
    parts = line.split("; ")
    assert len(parts) == 3 and all(f"{run / 'checkpoints' / str(s)}: " in p for s, p in zip(steps[::-1], parts))
    assert all(says(p, w) for p, w in zip(parts, whats[::-1]))
    assert line.endswith(DEBUG_HINT) and "resuming" not in out
    assert steps_of(run) == steps and not list((run / "checkpoints").glob("*.damaged"))


def test_resume_step_takes_exactly_the_asked_checkpoint(capfd, run):
    steps = steps_of(run)
    garble_meta(run, steps[-1])
    status, out, err = cli(capfd, "train", "--resume", "--resume-step", steps[-2], "--run-dir", run, "--steps", DONE)
    assert status == 0, err
    assert len(err) == 1 and f"loaded the asked bp step {steps[-2]}" in err[0], err
    assert f"resuming from the checkpoint of bp step {steps[-2]}" in out
    assert json.loads((run / "result.json").read_text())["bp_steps"] == steps[-2]


def test_resume_step_of_a_damaged_checkpoint_fails_without_falling_back(capfd, run):
    steps = steps_of(run)
    what = rot_array(run, steps[-1])
    status, out, err = cli(capfd, "train", "--resume", "--resume-step", steps[-1], "--run-dir", run, "--steps", DONE)
    assert status == 1
    line = one_error(err)
    assert f"checkpoint {run / 'checkpoints' / str(steps[-1])} fails its integrity check: {what}" in line
    assert "resuming" not in out and steps_of(run) == steps


def test_resume_takes_the_options_given_even_at_their_default_value(trained):
    """A resumed run keeps its config.json except for the options on the command line, also those given
    their default value (``--steps 15000`` is the default; the saved run had 300)."""
    from emote_jax.cli import _given_options, build_parser
    from emote_jax.cli_resume import resume_args as _resume_args

    argv = ["train", "--resume", "--run-dir", str(trained), "--steps", "15000", "--warmup-steps", "1000"]
    args = vars(build_parser("sac").parse_args(argv))
    for k in ("command", "resume", "resume_step"):
        args.pop(k)
    resolved = _resume_args(args, _given_options(argv), None)
    assert (resolved["env_steps"], resolved["warmup_steps"]) == (15_000, 1_000)  # given: the defaults
    assert (resolved["env_id"], tuple(resolved["hidden_dims"]), resolved["batch_size"]) == ("HitTheMiddle-v0", (16, 16), 32)


@pytest.mark.parametrize("case", ["missing", "later", "without_resume"])
def test_resume_step_that_cannot_be_honoured_is_a_usage_error(capfd, run, case):
    steps = steps_of(run)
    args = {"missing": ["--resume", "--resume-step", 99999],
            "later": ["--resume", "--resume-step", steps[0]],
            "without_resume": ["--resume-step", steps[0]]}[case]
    status, _, err = cli(capfd, "train", *args, "--run-dir", run)
    assert status == 2
    line = one_error(err)
    expected = {"missing": f"has no checkpoint of bp step 99999; it has {steps}",
                "later": f"also holds the later intact checkpoint(s) {steps[1:]}",
                "without_resume": "--resume-step needs --resume"}[case]
    assert expected in line
    assert steps_of(run) == steps


# ---- bad settings, missing directories: exit status 2 -----------------------------------------------------


@pytest.mark.parametrize("args, phrase", [
    (["train", "--batch-size", "0"], "0 is not valid"),
    (["train", "--steps", "many"], "argument --steps: invalid int value: 'many' (see `emote-jax train --help`)"),
    (["train", *TINY, "--env", "NoSuchEnv-v0", "--steps", "200"], "NoSuchEnv"),
    (["train", *TINY, "--env", "CartPole-v1", "--steps", "200"], "Box action space"),
    (["train", "--resume"], "--resume needs a run directory (--run-dir)"),
    (["train", "--resume", "--run-dir", "{tmp}/none"], "--resume: the run directory {tmp}/none does not exist"),
    (["eval", "{tmp}/none"], "eval: the run directory {tmp}/none does not exist"),
    (["eval", "{tmp}"], "eval: {tmp}/config.json does not exist; is {tmp} a run directory"),
    (["checkpoints", "{tmp}/none"], "checkpoints: the run directory {tmp}/none does not exist"),
    (["checkpoints", "{tmp}"], "checkpoints: {tmp} has no checkpoints/ directory"),
    (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ([], "the following arguments are required: command"),
])
def test_a_bad_setting_or_argument_is_one_line_and_exit_status_2(capfd, tmp_path, args, phrase):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[:1] == ["train"] and "--run-dir" not in args and "--resume" not in args:
        args += ["--run-dir", str(tmp_path / "run")]  # nothing may land in the working directory
    status, _, err = cli(capfd, *args)
    assert status == 2
    line = one_error(err)
    assert phrase.replace("{tmp}", str(tmp_path)) in line
    assert DEBUG_HINT not in line
    assert not (tmp_path / "run").exists()


def test_the_installed_command_exits_2_on_an_unknown_env_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "emote_jax", "train", "--env", "NoSuchEnv-v0", "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    assert one_error(proc.stderr.splitlines()) and "NoSuchEnv" in proc.stderr


# ---- failures at run time: exit status 1, --debug ---------------------------------------------------------


def no_policy(run: Path) -> Path:
    """A run directory whose policy/ is gone: eval fails at run time."""
    shutil.rmtree(run / "policy")
    return run


def test_a_failure_at_run_time_is_one_line_with_the_debug_hint(capfd, run):
    status, _, err = cli(capfd, "eval", no_policy(run), "--episodes", "1")
    assert status == 1
    line = one_error(err)
    assert str(run / "policy") in line and line.endswith(" " + DEBUG_HINT)


@pytest.mark.parametrize("how", ["--debug first", "--debug after", "EMOTE_JAX_DEBUG=1"])
def test_debug_lets_the_traceback_through(run, how):
    args = ["eval", str(no_policy(run)), "--episodes", "1"]
    env = {k: v for k, v in os.environ.items() if k != "EMOTE_JAX_DEBUG"}
    if how == "--debug first":
        args = ["--debug", *args]
    elif how == "--debug after":
        args = [*args, "--debug"]
    else:
        env["EMOTE_JAX_DEBUG"] = "1"
    proc = subprocess.run([sys.executable, "-m", "emote_jax", *args], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "emote-jax: error:" not in proc.stderr


def test_a_multi_line_message_comes_as_one_line(capfd, run):
    # another network shape: the loader lists each array that does not fit, one per line
    status, out, err = cli(capfd, "train", "--resume", "--run-dir", run, "--hidden", "8,8", "--steps", DONE)
    assert status == 1
    line = one_error(err)
    assert "its arrays do not fit this run (another network shape?): policy/" in line
    assert "checkpoint float32[16, 16], this run float32[8, 8]" in line and line.endswith(DEBUG_HINT)


def test_exit_status_of_wrapped_and_runtime_errors():
    assert exit_status(ConfigError("--tau 2 is not valid")) == 2
    assert exit_status(CallbackError("warmup", "begin_training", None, ConfigError("x"))) == 2
    wrapped = CallbackError("warmup", "begin_training", None, ConfigError("x"))
    wrapped.__cause__ = wrapped.original
    assert exit_status(wrapped) == 2
    assert exit_status(NonFiniteError("q1", 7)) == 1
    assert exit_status(FileNotFoundError("x")) == 1
    assert exit_status(ValueError("not a setting")) == 1
    assert exit_status(gymnasium.error.NameNotFound("Environment `NoSuchEnv` doesn't exist.")) == 2


def test_an_abort_keeps_exit_status_130_with_one_line(capfd, monkeypatch, tmp_path):
    def aborted(*args, **kwargs):
        raise TrainingAborted("second SIGINT")

    monkeypatch.setattr("emote_jax.cli.train_run", aborted)
    status, _, err = cli(capfd, "train", "--run-dir", tmp_path / "run")
    assert status == 130 and err == ["emote-jax train: aborted (second SIGINT)"]


# ---- emote-jax checkpoints --------------------------------------------------------------------------------


ROW = re.compile(r"^ +(\d+) +\d+\.\d (?:KiB|MiB) +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (.*)$")


def test_checkpoints_lists_each_step_and_flags_a_damaged_one(capfd, run):
    steps = steps_of(run)
    what = rot_array(run, steps[1])
    status, out, err = cli(capfd, "checkpoints", run)
    assert status == 0 and err == []
    lines = out.splitlines()
    assert lines[0] == f"checkpoints in {run / 'checkpoints'}:" and "integrity" in lines[1]
    rows = [ROW.match(line) for line in lines[2:]]
    assert all(rows) and [int(r.group(1)) for r in rows] == steps
    checks = [r.group(2) for r in rows]
    assert checks[0] == "ok" and checks[2] == "ok"
    assert checks[1] == f"FAILED: {what}: the checkpoint is corrupted"


def test_checkpoints_with_none_intact_says_so_and_exits_1(capfd, run):
    for s in steps_of(run):
        garble_meta(run, s)
    status, out, err = cli(capfd, "checkpoints", run)
    assert status == 1
    assert out.count("FAILED: its metadata (meta/) is missing or unreadable") == 3
    assert one_error(err) == f"emote-jax: error: no intact checkpoint in {run / 'checkpoints'}: nothing to resume from"
