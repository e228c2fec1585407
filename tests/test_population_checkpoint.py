"""Population checkpoints: a population restored from a checkpoint continues bitwise as the saved one did,
and a checkpoint of another population is refused with what differs."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from emote_jax.population import Population
from emote_jax.population_checkpoint import population_checkpoint_steps, restore_population, save_population
from emote_jax.recipes.common import build_run
from emote_jax.recipes.sac import SAC, SACConfig

SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=2, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                  memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0, checkpoint_interval=0,
                  env_steps=10**6)
CFGS = [dataclasses.replace(SMALL, seed=3), dataclasses.replace(SMALL, seed=5, lr_q=1e-3)]


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.array(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_a_restored_population_continues_bitwise(tmp_path):
    pop = Population([build_run(SAC, c, out=None) for c in CFGS])
    pop.train(8)
    path = save_population(pop, tmp_path / "ckpt")
    assert path.name == "8" and population_checkpoint_steps(tmp_path / "ckpt") == [8]
    pop.train(12)
    expected, expected_key = flat(pop.state), np.array(jax.random.key_data(pop.key))
    returns = [list(r.collector.episode_returns) for r in pop.runs]

    again = Population([build_run(SAC, c, out=None) for c in CFGS])
    assert restore_population(again, tmp_path / "ckpt") == 8 and again.bp_step == 9
    again.train(12)
    got = flat(again.state)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    np.testing.assert_array_equal(np.array(jax.random.key_data(again.key)), expected_key)
    again.sync_monitors()
    assert [list(r.collector.episode_returns) for r in again.runs] == returns
    assert again.num_compilations == 1


def test_another_populations_checkpoint_is_refused_and_changes_nothing(tmp_path):
    pop = Population([build_run(SAC, c, out=None) for c in CFGS])
    save_population(pop, tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match="exists already"):
        save_population(pop, tmp_path / "ckpt")
    three = Population([build_run(SAC, dataclasses.replace(SMALL, seed=s), out=None) for s in (1, 2, 3)])
    with pytest.raises(ValueError, match="population of 2 members; this one has 3"):
        restore_population(three, tmp_path / "ckpt")
    wider = Population([build_run(SAC, dataclasses.replace(c, hidden_dims=(16, 16)), out=None) for c in CFGS])
    before = flat(wider.state)
    with pytest.raises(ValueError, match=r"is \(2, .*\) float32 there, \(2, .*\) float32 here"):
        restore_population(wider, tmp_path / "ckpt")
    after = flat(wider.state)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(FileNotFoundError, match="no checkpoint of bp step 5 .* have \\[0\\]"):
        restore_population(pop, tmp_path / "ckpt", step=5)
    with pytest.raises(FileNotFoundError, match="no population checkpoint"):
        restore_population(pop, tmp_path / "nothing")


def test_the_cli_checkpoints_a_population_and_resumes_it_to_a_larger_budget(tmp_path, capfd):
    import json

    from emote_jax.cli import main

    run = tmp_path / "pop"
    common = ["--warmup-steps", "64", "--batch-size", "32", "--hidden", "8,8", "--steps-per-call", "8",
              "--eval-episodes", "1"]
    assert main(["train", "--env", "jax:Pendulum-v1", "--population", "2", "--steps", "400",
                 "--checkpoint-interval", "96", "--keep-checkpoints", "2", "--run-dir", str(run), *common]) == 0
    first = json.loads((run / "population.json").read_text())
    assert population_checkpoint_steps(run / "population-checkpoints") == [288, 336]  # the last 2: 96-step saves, end
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "600"]) == 0
    out = capfd.readouterr().out
    assert "resumed the population from its checkpoint of bp step 336 (400 env steps per member)" in out
    second = json.loads((run / "population.json").read_text())
    assert [m["env_steps"] for m in second["members"]] == [600, 600]
    assert [m["bp_steps"] for m in second["members"]] == [536, 536] and first["members"][0]["bp_steps"] == 336
    assert population_checkpoint_steps(run / "population-checkpoints")[-1] == 536
    assert main(["train", "--resume", "--run-dir", str(run), "--steps", "700", "--gamma", "0.5"]) == 2
    assert "only --steps, --devices and --shard-envs may change, got --gamma" in capfd.readouterr().err


def test_a_restored_pbt_run_continues_bitwise_with_its_draws_and_history(tmp_path):
    from emote_jax.pbt import PopulationBasedTraining

    def pbt(seed: int) -> PopulationBasedTraining:  # member 1 always the fitter: only the draws decide the scales
        return PopulationBasedTraining(["q1/learning_rate"], interval=4, seed=seed, fitness=lambda p: np.arange(p.size))

    pop, first = Population([build_run(SAC, c, out=None) for c in CFGS]), pbt(0)
    pop.train(8, pbt=first)
    save_population(pop, tmp_path / "ckpt", pbt=first)
    pop.train(12, pbt=first)
    expected, history = flat(pop.state), first.history
    assert len(history) == 5  # exploits at bp steps 4, 8, 12, 16, 20

    again, second = Population([build_run(SAC, c, out=None) for c in CFGS]), pbt(99)  # another seed: overwritten
    restore_population(again, tmp_path / "ckpt", pbt=second)
    assert second.history == history[:2]
    again.train(12, pbt=second)
    assert second.history == history  # the same draws: the same scales at 12, 16 and 20
    got = flat(again.state)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
