"""One run's envs split over several devices (``--shard-envs D``): SAC on ``jax:Pendulum-v1`` with its 4 envs
and its replay buffer's env axis sharded over 4 (forced) CPU devices trains as on one (within rtol = atol =
1e-6), in one compiled program whose outputs keep the layout; a checkpoint written on 4 devices resumes on 2
and on 1 and continues as the straight run; the settings that cannot work are refused, naming the option.

JAX fixes its device count when it starts, so the run checks go in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (:data:`SCRIPT`), which prints one JSON line of
what it found; the tests assert on that. The command-line refusals run here (they stop before JAX runs).
"""

from __future__ import annotations

import textwrap

import pytest

from test_population_sharding import HELPERS, run_on_forced_devices

from emote_jax.cli import main

SCRIPT = HELPERS + textwrap.dedent('''
    import dataclasses, json, logging, tempfile
    import jax, numpy as np
    from emote_jax.errors import ConfigError
    from emote_jax.recipes.common import build_run
    from emote_jax.recipes.sac import SAC, SACConfig

    SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=4, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                      memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0,
                      checkpoint_interval=0, env_steps=10**6)

    compiles = []  # "Compiling jit(_run_steps) ...": one per XLA compilation (or cache look-up) of the step
    class Count(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Compiling jit(_run_steps)"):
                compiles.append(1)
    logging.getLogger("jax").addHandler(Count())
    logging.getLogger("jax").propagate = False  # count them, do not print them
    jax.config.update("jax_log_compiles", True)



    def layout(run):  # {leaf of the collector's slot: [its PartitionSpec, how many devices hold it]}
        slot = run.trainer.ctx.state["collector"]
        return {jax.tree_util.keystr(p): [str(x.sharding.spec) if hasattr(x.sharding, "spec") else "single",
                                          len(x.sharding.device_set)]
                for p, x in jax.tree_util.tree_flatten_with_path(slot)[0]}

    def train(run, bp_steps):  # on until bp_steps backprop steps are done; the step's traces and compilations
        t, before = run.trainer, len(compiles)
        t.train(lambda: t.bp_step > bp_steps, handle_signals=False)
        return [t.num_compilations, len(compiles) - before]

    out = {"device_count": jax.device_count()}
    d = tempfile.mkdtemp()
    four = build_run(SAC, dataclasses.replace(SMALL, shard_envs=4, run_dir=d, checkpoint_interval=12), out=None)
    out["layout_before"] = layout(four)
    out["compilations_four"] = train(four, 24)  # checkpoints at bp steps 12 and 24, written from 4 devices
    out["layout_after"] = layout(four)
    out["other_slots_devices"] = sorted({len(x.sharding.device_set) for k, s in four.trainer.ctx.state.items()
                                         if k != "collector" for x in jax.tree.leaves(s)})
    one = build_run(SAC, SMALL, out=None)
    out["compilations_one"] = train(one, 24)
    expected = flat(four.trainer.ctx.state)
    out["sharded_vs_one"] = diff(expected, flat(one.trainer.ctx.state))
    out["metrics_vs_one"] = diff(four.trainer.last_metrics, one.trainer.last_metrics)
    out["bp_steps"] = [four.trainer.bp_step - 1, one.trainer.bp_step - 1]

    for m in (2, 1):
        again = build_run(SAC, dataclasses.replace(SMALL, shard_envs=m, run_dir=d), out=None, resume=True,
                          resume_step=12)
        out[f"compilations_resumed_on_{m}"] = train(again, 24)
        out[f"resumed_on_{m}_layout"] = layout(again)
        out[f"resumed_on_{m}_vs_straight"] = diff(flat(again.trainer.ctx.state), expected)

    for name, bad in (("not_divisible", dict(shard_envs=3)), ("too_many", dict(num_envs=8, shard_envs=8)),
                      ("host_env", dict(env_id="Pendulum-v1", shard_envs=2))):
        try:
            build_run(SAC, dataclasses.replace(SMALL, **bad), out=None)
            out[name] = None
        except ConfigError as e:
            out[name] = [e.option, str(e)]
    print("RESULT " + json.dumps(out))
''')

#: The env-axis leaves of the collector's slot (the envs' states, observations and episode counters on axis
#: 0; the replay buffer's per-transition arrays on axis 1) and the leaves every device holds whole.
SPLIT = {"['env_state']": "P('envs',)", "['obs']": "P('envs',)", "['ep_step']": "P('envs',)",
         "['ep_return']": "P('envs',)", **{f"['replay']['{k}']": "P(None, 'envs')" for k in
                                           ("obs", "next_obs", "actions", "rewards", "terminated", "truncated",
                                            "ep_step")}}
WHOLE = ["['key']", "['vector_steps']", "['episodes']", "['ring_returns']", "['ring_lengths']", "['replay']['pos']",
         "['replay']['size']"]


@pytest.fixture(scope="module")
def found() -> dict:
    return run_on_forced_devices(SCRIPT)


def test_the_envs_and_the_replay_buffer_are_split_over_four_devices_and_stay_so(found):
    assert found["device_count"] == 4
    for when in ("layout_before", "layout_after"):
        lay = found[when]
        assert set(lay) == set(SPLIT) | set(WHOLE), lay
        assert {k: lay[k] for k in SPLIT} == {k: [v, 4] for k, v in SPLIT.items()}, when
        assert {k: lay[k] for k in WHOLE} == {k: ["P()", 4] for k in WHOLE}, when
    assert found["other_slots_devices"] == [4]  # parameters, optimizer states, ...: whole on each of the 4
    # one trace and one compilation of the step: its outputs keep the layout, so the next call's inputs match
    assert found["compilations_four"] == [1, 1] and found["compilations_one"] == [1, 1]


def test_the_sharded_run_trains_as_on_one_device(found):
    assert found["bp_steps"] == [24, 24]
    # Within rtol = atol = 1e-6, not bit for bit: with one env per device XLA:CPU evaluates the env's
    # arithmetic in other vector widths, and the rewards differ in the last bits (on 2 devices it is bitwise).
    assert found["sharded_vs_one"][0] <= 1.0, found["sharded_vs_one"]
    assert found["metrics_vs_one"][0] <= 1.0, found["metrics_vs_one"]


def test_a_checkpoint_written_on_four_devices_resumes_on_two_and_one(found):
    lay2, lay1 = found["resumed_on_2_layout"], found["resumed_on_1_layout"]
    assert {k: lay2[k] for k in SPLIT} == {k: [v, 2] for k, v in SPLIT.items()}
    assert {n for _, n in lay1.values()} == {1}
    for m in (2, 1):
        assert found[f"resumed_on_{m}_vs_straight"][0] <= 1.0, found[f"resumed_on_{m}_vs_straight"]
        assert found[f"compilations_resumed_on_{m}"] == [1, 1]


def test_settings_that_cannot_work_are_refused_naming_the_option(found):
    option, message = found["not_divisible"]
    assert option == "--shard-envs" and "a divisor of --num-envs (4)" in message
    assert "change --num-envs to a multiple of 3 or --shard-envs to a divisor of 4" in message
    option, message = found["too_many"]
    assert option == "--shard-envs" and "sees 4 cpu device(s)" in message and "expected at most 4" in message
    option, message = found["host_env"]
    assert option == "--shard-envs" and "expected 0 or 1 with --env Pendulum-v1: only a JAX-native env" in message


def test_the_command_line_refuses_them_before_training(capfd, tmp_path):
    jax_run = ["train", "--env", "jax:Pendulum-v1", "--num-envs", "4", "--run-dir", str(tmp_path / "run")]
    cases = [([*jax_run, "--shard-envs", "3"], "--shard-envs 3 is not valid: expected a divisor of --num-envs (4)"),
             ([*jax_run, "--population", "2", "--shard-envs", "2"],
              "--shard-envs 2 is not valid: this process sees 1 cpu device(s)"),
             (["train", "--env", "Pendulum-v1", "--shard-envs", "2", "--run-dir", str(tmp_path / "run")],
              "--shard-envs 2 is not valid: expected 0 or 1 with --env Pendulum-v1")]
    for argv, expected in cases:
        capfd.readouterr()
        assert main(argv) == 2, argv
        err = capfd.readouterr().err
        assert err.startswith("emote-jax: error: ") and expected in err, err
    assert not (tmp_path / "run").exists()
