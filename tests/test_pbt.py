"""Population-based training: the exploit step copies the better member's whole state into the worse one
bitwise (its replay and envs stay its own), perturbs the named hyperparameters by a drawn factor, and
neither the exploit nor the population's step compiles more than once."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from emote_jax.pbt import PopulationBasedTraining
from emote_jax.population import Population
from emote_jax.recipes.common import build_run
from emote_jax.recipes.sac import SAC, SACConfig

SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=2, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                  memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0, checkpoint_interval=0,
                  env_steps=10**6)
HP = ["q1/learning_rate", "q_target/tau"]


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.array(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def member(state: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in state.items()}


@pytest.fixture(scope="module")
def population():
    # the two members' critics learn at rates 100x apart
    cfgs = [dataclasses.replace(SMALL, seed=1, lr_q=1e-5), dataclasses.replace(SMALL, seed=2, lr_q=1e-3)]
    pop = Population([build_run(SAC, c, out=None) for c in cfgs])
    pop.train(16)
    return pop


def test_the_worse_member_takes_the_better_members_state_bitwise_and_nothing_recompiles(population):
    pop = population
    loss = {i: float(pop.metrics["q1/loss"][i, -1]) for i in range(2)}
    pbt = PopulationBasedTraining(HP, interval=4, fitness=lambda p: -p.metrics["q1/loss"][:, -1], seed=0)
    worse, better = sorted(loss, key=loss.get, reverse=True)
    before, key_before = flat(pop.state), np.array(jax.random.key_data(pop.key))
    event = pbt.after_call(pop)
    after = flat(pop.state)
    assert event is not None and event["receivers"] == [worse] and event["donors"] == [better]
    collector = pop.runs[0].collector.collector.name
    perturbed = {k for k in after if k.startswith(("['q1']['opt_state']", "['q_target']['hparams']"))
                 and k.endswith(("'learning_rate']", "['tau']"))}
    assert len(perturbed) == 2
    for k in after:
        if k.startswith(f"['{collector}']"):  # its own envs and replay
            np.testing.assert_array_equal(after[k][worse], before[k][worse], err_msg=k)
        elif k in perturbed:
            factor = after[k][worse] / before[k][better]
            assert min(abs(factor - 0.8), abs(factor - 1.2)) < 1e-6, (k, factor)
        else:
            np.testing.assert_array_equal(after[k][worse], before[k][better], err_msg=k)
        np.testing.assert_array_equal(after[k][better], before[k][better], err_msg=k)  # the donor is untouched
    params = [k for k in after if k.startswith(("['q1']['params']", "['policy']['params']", "['q_target']['target"))]
    assert params and all(not np.array_equal(before[k][0], before[k][1]) for k in params)  # a real copy, not a no-op
    np.testing.assert_array_equal(np.array(jax.random.key_data(pop.key)), key_before)  # each member keeps its own PRNG stream
    assert event["hyperparams"]["q1/learning_rate"][better] == pytest.approx(1e-3 if better == 1 else 1e-5)
    # later exploits and calls: the same two programs
    pop.train(12, pbt=pbt)
    assert len(pbt.history) == 4 and [e["bp_step"] for e in pbt.history] == [16, 20, 24, 28]
    assert pbt.num_compilations == 1 and pop.num_compilations == 1


def test_the_default_fitness_waits_for_episodes_and_settings_are_checked():
    pop = Population([build_run(SAC, dataclasses.replace(SMALL, seed=s), out=None) for s in (1, 2)])
    pop.train(4)
    pbt = PopulationBasedTraining(HP, interval=4)
    assert pbt.after_call(pop) is None and not pbt.history  # no episode has ended (Pendulum: 200 steps)
    with pytest.raises(ValueError, match="slot 'q1' has no hyperparameter 'momentum'.*learning_rate"):
        PopulationBasedTraining(["q1/momentum"], interval=4).after_call(pop)
    with pytest.raises(ValueError, match="no slot 'critic'"):
        PopulationBasedTraining(["critic/learning_rate"], interval=4).after_call(pop)
    with pytest.raises(ValueError, match="'slot/name'"):
        PopulationBasedTraining(["learning_rate"], interval=4)
    with pytest.raises(ValueError, match="fraction must be in"):
        PopulationBasedTraining(HP, interval=4, fraction=0.75)
    with pytest.raises(ValueError, match="one number per member"):
        PopulationBasedTraining(HP, interval=4, fitness=lambda p: np.zeros(3)).after_call(pop)
    solo = Population([build_run(SAC, SMALL, out=None)])
    with pytest.raises(ValueError, match="at least 2 members, got 1"):
        PopulationBasedTraining(HP, interval=4).after_call(solo)


def test_the_cli_runs_pbt_on_a_population_and_records_its_exploits(tmp_path, capfd):
    import json

    from emote_jax.cli import main

    run = tmp_path / "pbt"
    status = main(["train", "--env", "jax:Pendulum-v1", "--population", "2", "--pbt-interval", "400",
                   "--pbt-perturb", "lr_q,tau", "--steps", "1300", "--warmup-steps", "64", "--batch-size", "32",
                   "--hidden", "8,8", "--steps-per-call", "8", "--eval-episodes", "1", "--run-dir", str(run)])
    out = capfd.readouterr().out
    assert status == 0, out
    result = json.loads((run / "population.json").read_text())
    pbt = result["pbt"]
    assert pbt["hyperparams"] == ["q1/learning_rate", "q2/learning_rate", "q_target/tau"]
    assert len(pbt["exploits"]) == 3 and result["compilations"] == 1  # at bp steps >= 400, 800, 1200
    for e in pbt["exploits"]:
        (r,), (d,) = e["receivers"], e["donors"]
        assert r != d and e["fitness"][r] <= e["fitness"][d]
        assert e["hyperparams"]["q1/learning_rate"][r] / e["hyperparams"]["q1/learning_rate"][d] in \
            (pytest.approx(0.8), pytest.approx(1.2))
    assert f"pbt at bp step {pbt['exploits'][0]['bp_step']}: " in out


@pytest.mark.parametrize("args,message", [
    (["--pbt-interval", "100"], "--pbt-interval needs --population P >= 2"),
    (["--population", "2", "--pbt-perturb", "lr_q"], "--pbt-perturb needs --pbt-interval"),
    (["--population", "2", "--pbt-interval", "100", "--pbt-perturb", "hidden_dims"], "hidden_dims cannot be perturbed"),
    (["--population", "2", "--pbt-interval", "-5"], "--pbt-interval -5 is not valid"),
])
def test_pbt_settings_that_cannot_work_stop_with_one_line(args, message, tmp_path, capfd):
    from emote_jax.cli import main

    assert main(["train", "--env", "jax:Pendulum-v1", "--run-dir", str(tmp_path / "r"), *args]) == 2
    assert message in capfd.readouterr().err
