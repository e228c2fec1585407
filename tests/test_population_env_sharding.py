"""A population whose members also split their envs (``--population 2 --shard-envs 2``): on 4 (forced) CPU
devices, a two-axis mesh of 2 groups of 2 devices, one member per group and each member's 4 envs and replay
buffer split over its group's 2. It trains as the same population on one device (within rtol = atol =
1e-6), in one compiled program that keeps the layout (PBT's exploit included); a checkpoint written on the
2 x 2 mesh resumes on one device and on one group of 2; device counts that do not fit are refused; and
``emote-jax train --population 2 --shard-envs 2`` trains, then resumes on one device with ``--shard-envs 0``.

As in :mod:`test_population_sharding`, the checks run in a fresh interpreter that sees 4 CPU devices.
"""

from __future__ import annotations

import textwrap

import pytest

from test_population_sharding import HELPERS, run_on_forced_devices

SCRIPT = HELPERS + textwrap.dedent('''
    import dataclasses, json, tempfile
    import jax, numpy as np
    from emote_jax.pbt import PopulationBasedTraining
    from emote_jax.population import Population
    from emote_jax.population_checkpoint import restore_population, save_population
    from emote_jax.population_layout import population_devices
    from emote_jax.recipes.common import build_run
    from emote_jax.recipes.sac import SAC, SACConfig

    SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=4, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                      memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0,
                      checkpoint_interval=0, env_steps=10**6)


    def population(shard_envs, devices=None):
        cfgs = [dataclasses.replace(SMALL, seed=s, lr_q=lr, shard_envs=shard_envs) for s, lr in ((0, 3e-4), (1, 1e-3))]
        return Population([build_run(SAC, c, out=None) for c in cfgs], devices=devices)


    def layout(pop):  # {leaf: [PartitionSpec, devices holding it]} of the collector's slot; the other slots' set
        coll = {jax.tree_util.keystr(p): [str(x.sharding.spec), len(x.sharding.device_set)]
                for p, x in jax.tree_util.tree_flatten_with_path(pop.state["collector"])[0]}
        other = sorted({f"{x.sharding.spec} {len(x.sharding.device_set)}" for k, s in pop.state.items()
                        if k != "collector" for x in jax.tree.leaves(s)})
        return coll, other

    out = {"device_count": jax.device_count()}
    grid, one = population(2), population(0, devices=1)
    out["placement"] = [grid.placement, one.placement]
    out["mesh"] = [list(grid.mesh.axis_names), list(grid.mesh.devices.shape)]
    out["layout_before"] = layout(grid)
    grid.train(20); one.train(20)
    out["layout_after"] = layout(grid)
    out["grid_vs_one"] = diff(flat(grid.state), flat(one.state))
    out["metrics_vs_one"] = diff(grid.metrics, one.metrics)
    out["compilations"] = [grid.num_compilations, one.num_compilations]
    grid.sync_monitors()
    out["env_steps"] = [r.collector.env_steps for r in grid.runs]

    d = tempfile.mkdtemp()
    save_population(grid, d)  # bp step 20, written from the 2 x 2 mesh
    grid.train(12)
    expected = flat(grid.state)
    for name, again in (("one_device", population(0, devices=1)), ("one_group", population(2, devices=2))):
        restore_population(again, d)
        out[f"restored_{name}_layout"] = layout(again)
        again.train(12)
        out[f"restored_{name}_vs_continued"] = diff(flat(again.state), expected)

    pbt = PopulationBasedTraining(["q1/learning_rate"], interval=1, seed=0, fitness=lambda p: np.arange(p.size))
    pbt.after_call(grid)
    out["pbt_layout"] = layout(grid)
    grid.train(4)
    out["compilations_after_pbt"] = grid.num_compilations
    out["default_devices"] = len(population_devices(2, None, 2))
    for name, args in (("three", (2, 3, 2)), ("odd_groups", (3, 4, 2)), ("wide", (2, None, 8))):
        try:
            population_devices(*args)
            out[name] = None
        except ValueError as e:
            out[name] = str(e)

    import contextlib, io, pathlib
    from emote_jax.cli import main
    run_dir = pathlib.Path(tempfile.mkdtemp()) / "run"
    common = ["--env", "jax:Pendulum-v1", "--num-envs", "4", "--warmup-steps", "64", "--batch-size", "32",
              "--hidden", "8,8", "--steps-per-call", "8", "--eval-episodes", "1", "--run-dir", str(run_dir)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        out["cli_status"] = main(["train", *common, "--population", "2", "--shard-envs", "2", "--steps", "400",
                                  "--checkpoint-interval", "96"])
        out["cli_resumed_on_one"] = main(["train", "--resume", "--run-dir", str(run_dir), "--steps", "600",
                                          "--shard-envs", "0", "--devices", "1"])
    out["cli_placements"] = [line.split("; ")[-1] for line in printed.getvalue().splitlines() if "population of" in line]
    result = json.loads((run_dir / "population.json").read_text())
    out["cli_members"] = [[m["env_steps"], m["eval_mean_return"] is not None] for m in result["members"]]
    print("RESULT " + json.dumps(out))
''')

#: The collector slot's leaves split over the envs axis behind the members (the envs' states, observations
#: and episode counters; the replay buffer's per-transition arrays, whose env axis is their second).
SPLIT = {"['env_state']": "P('population', 'envs')", "['obs']": "P('population', 'envs')",
         "['ep_step']": "P('population', 'envs')", "['ep_return']": "P('population', 'envs')",
         **{f"['replay']['{k}']": "P('population', None, 'envs')" for k in
            ("obs", "next_obs", "actions", "rewards", "terminated", "truncated", "ep_step")}}
MEMBERS = "P('population',)"


@pytest.fixture(scope="module")
def found() -> dict:
    return run_on_forced_devices(SCRIPT)


def test_members_split_over_groups_and_envs_within_each_and_train_as_on_one_device(found):
    assert found["device_count"] == 4
    assert found["mesh"] == [["population", "envs"], [2, 2]]
    assert found["placement"] == ["2 members on 2 groups of 2 cpu devices (1 per group, its envs split over 2)",
                                  "2 members on 1 cpu device (2 per device)"]
    for when in ("layout_before", "layout_after", "pbt_layout"):
        coll, other = found[when]
        assert {k: coll[k] for k in SPLIT} == {k: [v, 4] for k, v in SPLIT.items()}, when
        assert {tuple(v) for k, v in coll.items() if k not in SPLIT} == {(MEMBERS, 4)}, when  # key, counters, ring
        assert other == [f"{MEMBERS} 4"], when  # parameters, optimizer states: by member, whole within a group
    assert found["grid_vs_one"][0] <= 1.0, found["grid_vs_one"]
    assert found["metrics_vs_one"][0] <= 1.0, found["metrics_vs_one"]
    assert found["compilations"] == [1, 1] and found["compilations_after_pbt"] == 1
    assert found["env_steps"] == [4 * (16 + 20)] * 2  # 4 envs: 16 warm-up vector steps, then one per bp step


def test_a_checkpoint_of_the_two_axis_mesh_resumes_on_one_device_and_on_one_group(found):
    coll, other = found["restored_one_device_layout"]
    assert {tuple(v) for v in coll.values()} == {(MEMBERS, 1)} and other == [f"{MEMBERS} 1"]
    coll, _ = found["restored_one_group_layout"]
    assert coll["['obs']"] == ["P('population', 'envs')", 2]
    assert found["restored_one_device_vs_continued"][0] <= 1.0, found["restored_one_device_vs_continued"]
    assert found["restored_one_group_vs_continued"][0] <= 1.0, found["restored_one_group_vs_continued"]


def test_device_counts_that_do_not_fit_groups_of_the_env_shards_are_refused(found):
    assert found["default_devices"] == 4
    assert "3 device(s) cannot be cut into groups of 2" in found["three"]
    assert "3 members cannot be split evenly over 2 groups of 2 devices" in found["odd_groups"]
    assert "each member's envs split over 8 devices, but this process sees 4 device(s)" in found["wide"]


def test_the_command_line_trains_and_resumes_such_a_population_on_another_layout(found):
    assert found["cli_status"] == 0 and found["cli_resumed_on_one"] == 0
    assert found["cli_placements"] == ["2 members on 2 groups of 2 cpu devices (1 per group, its envs split over 2)",
                                       "2 members on 1 cpu device (2 per device)"]
    # whole calls: 64 warm-up env steps, then 32 per call (K = 8, 4 envs), so the first count >= 600 is 608
    assert found["cli_members"] == [[608, True], [608, True]]
