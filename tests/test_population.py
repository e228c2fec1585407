"""Populations: member i of a vmapped population equals the solo run of its config, members may differ
in hyperparameters that live in the state without a recompilation, and a member comes out as a run."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from emote_jax.population import Population
from emote_jax.recipes.common import build_run, evaluate
from emote_jax.recipes.sac import SAC, SACConfig

SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=2, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                  memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0, checkpoint_interval=0,
                  env_steps=10**6)
STEPS = 40


def flat(state) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def solo(cfg: SACConfig) -> dict[str, np.ndarray]:
    run = build_run(SAC, cfg, out=None)
    return flat(run.trainer.train(lambda: run.trainer.bp_step > STEPS, handle_signals=False).state)


@pytest.fixture(scope="module")
def population():
    cfgs = [dataclasses.replace(SMALL, seed=3), dataclasses.replace(SMALL, seed=5, lr_q=1e-3, gamma=0.9)]
    pop = Population([build_run(SAC, c, out=None) for c in cfgs])
    pop.train(STEPS)
    return cfgs, pop


def test_each_member_equals_the_solo_run_of_its_config(population):
    cfgs, pop = population
    assert pop.bp_step == STEPS + 1 and pop.num_compilations == 1  # two seeds, two lrs, two gammas: one program
    for i, cfg in enumerate(cfgs):
        expected = solo(cfg)
        got = flat(pop.member_state(i)[0])
        assert got.keys() == expected.keys()
        for k in expected:  # within 1e-6: vmap may batch a reduction differently from the solo program
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-6, atol=1e-6, err_msg=f"member {i}: {k}")
    m0, m1 = flat(pop.member_state(0)[0]), flat(pop.member_state(1)[0])
    kernels = [k for k in m0 if k.startswith("['policy']['params']") and "kernel" in k]
    assert kernels and not any(np.array_equal(m0[k], m1[k]) for k in kernels)  # the members are not one


def test_metrics_come_back_per_member_and_step(population):
    _, pop = population
    assert pop.metrics["q1/loss"].shape == (2, 4)
    np.testing.assert_allclose(pop.metrics["q1/lr"][0], 3e-4, rtol=1e-6)
    np.testing.assert_allclose(pop.metrics["q1/lr"][1], 1e-3, rtol=1e-6)


def test_a_member_comes_out_as_a_run_that_evaluates(population):
    cfgs, pop = population
    run = pop.to_member(1)
    assert run.trainer.bp_step == STEPS + 1
    assert run.collector.env_steps == 2 * (32 + STEPS)  # warm-up of 64 env steps over 2 envs, then 1 vector step each
    params = run.trainer.ctx.state["policy"]["params"]
    returns = evaluate(SAC, cfgs[1], run.policy_net, params, 2, seed=0)
    assert len(returns) == 2 and all(-2000 < r <= 0 for r in returns)


def test_a_member_collecting_on_the_host_is_refused():
    host = build_run(SAC, dataclasses.replace(SMALL, env_id="Pendulum-v1"), out=None)
    try:
        with pytest.raises(ValueError, match=r"members \[0\] collect on the host"):
            Population([host])
    finally:
        host.env.close()


def test_the_cli_trains_a_population_into_member_run_directories(tmp_path, capfd):
    import json

    from emote_jax.cli import main

    run = tmp_path / "pop"
    status = main(["train", "--env", "jax:Pendulum-v1", "--population", "3", "--sweep", "gamma=0.9,0.99",
                   "--steps", "200", "--warmup-steps", "64", "--batch-size", "32", "--hidden", "8,8",
                   "--eval-episodes", "1", "--run-dir", str(run)])
    out = capfd.readouterr().out
    assert status == 0, out
    result = json.loads((run / "population.json").read_text())
    assert result["population"] == 3 and result["compilations"] == 1
    assert [m["seed"] for m in result["members"]] == [0, 1, 2]
    assert [m["gamma"] for m in result["members"]] == [0.9, 0.99, 0.9]
    assert all(m["env_steps"] >= 200 and len(m["eval_returns"]) == 1 for m in result["members"])
    assert "member 1 (seed 1, gamma 0.99): evaluation mean return" in out
    saved = json.loads((run / "member-1" / "config.json").read_text())
    assert saved["seed"] == 1 and saved["gamma"] == 0.99 and saved["env_id"] == "jax:Pendulum-v1"
    assert main(["eval", str(run / "member-1"), "--episodes", "1"]) == 0  # a member is a run directory
    from emote_jax.logging.events import read_scalars

    tb = read_scalars(run / "tensorboard")  # one series per member, and the spread over members
    losses = {i: dict(tb[f"member/{i}/q1/loss"]) for i in range(3)}
    steps = sorted(losses[0])
    # every 100 bp steps (--metrics-interval), and at the end: 200 env steps - 64 warm-up = 136 bp steps
    assert steps == [100, result["members"][0]["bp_steps"]] == [100, 136]
    assert all(sorted(v) == steps for v in losses.values())
    at = steps[-1]
    by_member = [losses[i][at] for i in range(3)]
    assert len(set(by_member)) == 3  # three members, three losses
    assert dict(tb["population/q1/loss/min"])[at] == pytest.approx(min(by_member))
    assert dict(tb["population/q1/loss/median"])[at] == pytest.approx(float(np.median(by_member)))
    assert dict(tb["population/q1/loss/max"])[at] == pytest.approx(max(by_member))
    assert [dict(tb[f"member/{i}/q1/lr"])[at] for i in range(3)] == pytest.approx([3e-4] * 3)
    assert "member/1/episode/return" in tb and (run / "metrics.csv").is_file()


@pytest.mark.parametrize("args,message", [
    (["--population", "2"], "--population 2 needs a JAX-native env"),  # the default env is gymnasium's
    (["--env", "jax:Pendulum-v1", "--population", "2", "--sweep", "hidden_dims=8"], "NAME one of lr_q"),
    (["--env", "jax:Pendulum-v1", "--population", "2", "--sweep", "lr_q=fast"], "expected numbers"),
    (["--env", "jax:Pendulum-v1", "--population", "0"], "--population 0 is not valid"),
    (["--env", "jax:Pendulum-v1", "--sweep", "lr_q=1e-3"], "--sweep needs --population P > 1"),
    (["--env", "jax:Pendulum-v1", "--devices", "1"], "--devices 1 needs --population P > 1"),
    (["--env", "jax:Pendulum-v1", "--population", "2", "--devices", "2"], "--devices 2, but this process sees 1"),
    (["--algo", "dqn", "--env", "jax:CartPole-v1", "--population", "2", "--sweep", "lr_q=1e-3"],
     "--sweep with --algo dqn"),
])
def test_population_settings_that_cannot_work_stop_with_one_line(args, message, tmp_path, capfd):
    from emote_jax.cli import main

    status = main(["train", *args, "--run-dir", str(tmp_path / "run")])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(err) == 1 and message in err[0], err
