"""DQN through the recipe layer: exact resume in a new process, ``emote-jax train --algo dqn`` and ``eval``,
and the one-line errors for an env of the other algorithm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emote_jax import Trainer
from emote_jax.checkpoint import checkpoint_steps
from emote_jax.cli import main
from emote_jax.recipes.dqn import DQNConfig, build_dqn

from test_checkpoint_resume import RestartAt, dump  # the resume-test harness, shared

REPO = Path(__file__).resolve().parents[1]
N = 30
# epsilon decays over the first 260 env steps: the resumed half (env steps 160..220) explores with a
# schedule position that comes from the checkpoint; the target is copied every 7 steps, in both halves
CFG = dict(num_envs=2, hidden_dims=(8, 8), batch_size=32, memory_size=300, warmup_steps=100, steps_per_call=2,
           seed=3, env_steps=10**6, log_metrics=False, eval_episodes=0, checkpoint_interval=N,
           tau=1.0, target_update_interval=7, epsilon_decay_steps=260)

RESUME = """
import json, sys
import jax, numpy as np
from emote_jax.recipes.dqn import DQNConfig, build_dqn
cfg = DQNConfig(**json.loads(sys.argv[1]))
run = build_dqn(cfg, out=None, resume=True)
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


def test_dqn_resume_in_a_new_process_equals_the_straight_run_exactly(tmp_path):
    straight = build_dqn(DQNConfig(**CFG), out=None)
    trainer = Trainer([*straight.trainer.callbacks, RestartAt(straight.collector, N, CFG["seed"])], straight.loader,
                      steps_per_call=CFG["steps_per_call"], seed=CFG["seed"])
    ctx = trainer.train(lambda: trainer.bp_step > 2 * N)
    straight.env.close()
    expected = dump(straight, ctx)

    cfg = {**CFG, "run_dir": str(tmp_path / "run")}
    first = build_dqn(DQNConfig(**cfg), out=None)
    first.trainer.train(lambda: first.trainer.bp_step > N)
    first.env.close()
    at_n = dump(first, first.trainer.ctx)
    eps_at_n = first.collector.actions.epsilon(first.collector.env_steps)
    proc = subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), str(2 * N), str(tmp_path / "resumed.npz")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(tmp_path / "resumed.npz", allow_pickle=False))

    assert set(got) == set(expected)
    assert int(got["['trainer']['bp_step']"]) == 2 * N + 1
    assert int(got["env_steps"]) == int(expected["env_steps"]) > int(at_n["env_steps"])
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    # not vacuous: the resumed half explored with epsilon between 1 and its end, stored int64 actions,
    # and moved the Q network and its target
    assert 0.05 < eps_at_n < 1.0 and got["table/actions"].dtype == np.int64
    for slot in ("['q']['params']", "['q_target']['target_params']"):
        keys = [k for k in expected if k.startswith(slot)]
        assert keys and any(not np.array_equal(at_n[k], got[k]) for k in keys), slot
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [N, 2 * N]


TINY = ["--steps", "600", "--num-envs", "2", "--hidden", "8,8", "--batch-size", "32", "--warmup-steps", "100",
        "--eval-episodes", "2", "--checkpoint-interval", "100", "--no-log-metrics", "--epsilon-decay-steps", "300",
        "--eval-interval", "300"]


def cli(capfd, *args) -> tuple[int, str, str]:
    capfd.readouterr()
    status = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return status, out, err


def test_cli_train_dqn_writes_a_run_dir_that_eval_and_resume_take(capfd, tmp_path):
    run_dir = tmp_path / "dqn"
    status, out, err = cli(capfd, "train", "--algo", "dqn", *TINY, "--run-dir", run_dir)
    assert status == 0, err
    assert "emote_jax DQN on CartPole-v1" in out  # CartPole-v1 is --algo dqn's default env
    config, result = (json.loads((run_dir / f).read_text()) for f in ("config.json", "result.json"))
    assert config["algo"] == "dqn" and config["env_id"] == "CartPole-v1" and result["env_steps"] >= 600
    assert len(result["eval_returns"]) == 2 and all(r >= 1 for r in result["eval_returns"])
    # evaluations during training at 300 and 600 env steps; the last one is of the final policy
    assert [h[0] // 300 for h in result["eval_history"]] == [1, 2] and result["eval_history"][1][0] < 602
    assert result["eval_history"][-1][1] == result["eval_mean_return"]
    status, out, err = cli(capfd, "eval", run_dir, "--episodes", "2")
    assert status == 0 and err == ""
    assert f"mean return {result['eval_mean_return']:.2f}" in out  # the same greedy episodes as after training
    status, out, err = cli(capfd, "train", "--resume", "--run-dir", run_dir, "--steps", "800")
    assert status == 0, err
    assert json.loads((run_dir / "result.json").read_text())["env_steps"] >= 800


def test_the_help_of_algo_dqn_lists_its_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--algo", "dqn", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "DQN options (--algo dqn)" in out
    for option in ("--target-update-interval", "--double-dqn", "--epsilon-decay-steps", "--loss", "CartPole-v1"):
        assert option in out, option


@pytest.mark.parametrize("algo, env, message", [
    ("dqn", "Pendulum-v1", "--env Pendulum-v1: DQN needs a Discrete action space, got Box"),
    ("sac", "CartPole-v1", "--env CartPole-v1: SAC needs a continuous Box action space, got Discrete(2) "
                           "(--algo dqn takes Discrete actions)"),
])
def test_an_env_of_the_other_algorithm_stops_with_one_line(capfd, tmp_path, algo, env, message):
    status, out, err = cli(capfd, "train", "--algo", algo, "--env", env, "--steps", "2000", "--run-dir", tmp_path / "r")
    assert status == 2 and message in err and err.count("\n") == 1
    assert ("--algo sac" if algo == "dqn" else "--algo dqn") in err
