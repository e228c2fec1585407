"""Populations over several devices: the members sharded over 4 (forced) CPU devices train as on one (within
rtol = atol = 1e-6: the per-device vmap batches differ), PBT keeps them where they are, and a checkpoint
written on 4 devices loads on 2 and on 1 and continues the same (within 1e-6).

JAX fixes its device count when it starts, so the checks run in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (:data:`SCRIPT`), which prints one JSON line of
what it found; the tests assert on that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

#: What the forced-device scripts share: ``flat`` (a pytree as ``{path: array}``) and ``diff`` (two of those
#: compared: ``[worst |a - b| / (1e-6 + 1e-6 |b|) over the leaves, its leaf, how many leaves differ at all]``,
#: so <= 1 is allclose(rtol=atol=1e-6); None when the leaves differ in name).
HELPERS = textwrap.dedent('''
    import jax, numpy as np

    def flat(tree):
        return {jax.tree_util.keystr(p): np.array(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def diff(a, b):
        if a.keys() != b.keys():
            return None
        def one(x, y):
            x, y = x.astype(np.float64), y.astype(np.float64)
            return float(np.max(np.abs(x - y) / (1e-6 + 1e-6 * np.abs(y)))) if x.size else 0.0
        worst = max(a, key=lambda k: one(a[k], b[k]))
        return [one(a[worst], b[worst]), worst, sum(not np.array_equal(a[k], b[k]) for k in a)]
''')

SCRIPT = HELPERS + textwrap.dedent('''
    import dataclasses, json, sys, tempfile
    import jax, numpy as np
    from emote_jax.pbt import PopulationBasedTraining
    from emote_jax.population import Population, population_devices
    from emote_jax.population_checkpoint import restore_population, save_population
    from emote_jax.recipes.common import build_run
    from emote_jax.recipes.sac import SAC, SACConfig

    SMALL = SACConfig(env_id="jax:Pendulum-v1", num_envs=2, hidden_dims=(8, 8), batch_size=32, warmup_steps=64,
                      memory_size=1000, steps_per_call=4, log_metrics=False, eval_episodes=0,
                      checkpoint_interval=0, env_steps=10**6)
    CFGS = [dataclasses.replace(SMALL, seed=s, lr_q=lr) for s, lr in zip(range(4), (3e-4, 1e-3, 3e-4, 1e-3))]


    def population(devices):
        return Population([build_run(SAC, c, out=None) for c in CFGS], devices=devices)


    out = {"device_count": jax.device_count()}
    four, one = population(4), population(1)
    out["placement"] = [four.placement, one.placement]
    out["devices_per_leaf"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(four.state)})
    four.train(20); one.train(20)
    out["sharded_vs_one"] = diff(flat(four.state), flat(one.state))
    out["metrics_vs_one"] = diff(four.metrics, one.metrics)
    out["compilations"] = [four.num_compilations, one.num_compilations]

    d = tempfile.mkdtemp()
    save_population(four, d)  # bp step 20, written from 4 devices
    four.train(12)
    expected = flat(four.state)
    for m in (2, 1):
        again = population(m)
        restore_population(again, d)
        out[f"restored_devices_{m}"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(again.state)})
        again.train(12)
        out[f"restored_on_{m}_vs_continued"] = diff(flat(again.state), expected)

    pbt = PopulationBasedTraining(["q1/learning_rate"], interval=1, seed=0, fitness=lambda p: np.arange(p.size))
    pbt.after_call(four)
    out["pbt_devices"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(four.state)})
    out["pbt_event"] = pbt.history[-1]["receivers"] + pbt.history[-1]["donors"]
    four.train(4)  # the exploited population trains on, in its one program
    out["compilations_after_pbt"] = four.num_compilations
    out["member_run_devices"] = sorted({len(x.devices()) for x in jax.tree.leaves(four.to_member(3).trainer.ctx.state)})
    out["default_for_3"] = len(population_devices(3))
    try:
        population_devices(4, 3)
    except ValueError as e:
        out["three_of_four"] = str(e)
    try:
        population_devices(4, 8)
    except ValueError as e:
        out["eight"] = str(e)
    print("RESULT " + json.dumps(out))
''')


#: How XLA:CPU ends a process whose in-process collective waited 40 s for a participant that never came.
XLA_RENDEZVOUS_ABORT = "Termination timeout for"


def run_on_forced_devices(script: str, count: int = 4) -> dict:
    """Run ``script`` in a fresh process that sees ``count`` forced CPU devices; the JSON of its last
    ``RESULT {...}`` line.

    The forced devices share one thread per device, and XLA:CPU's collectives block their thread while they
    wait for the other participants; now and then (on 2 cores: twice in six runs of a long sequence of the
    device, population and sharding tests, never in five runs of a script alone) the programs interleave so
    that every thread waits, and XLA aborts the process after 40 s ("Termination timeout for `all reduce`"). That abort, and only that, is retried once, with a warning that ends with
    the script's Python stack at the abort (``PYTHONFAULTHANDLER``: where the host was); any other failure,
    or the abort twice, fails the test."""
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"),
           "JAX_PLATFORMS": "cpu", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 and XLA_RENDEZVOUS_ABORT in proc.stderr:
        at = proc.stderr.rfind("Fatal Python error")
        warnings.warn("XLA:CPU aborted a forced-device script at a collective's rendezvous; running it again. "
                      "Its Python stack at the abort:\n" + (proc.stderr[at:] if at >= 0 else proc.stderr)[-3000:])
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def found() -> dict:
    return run_on_forced_devices(SCRIPT)


def test_the_population_is_sharded_over_four_devices_and_trains_as_on_one(found):
    assert found["device_count"] == 4
    assert found["placement"] == ["4 members on 4 cpu devices (1 per device)", "4 members on 1 cpu device (4 per device)"]
    assert found["devices_per_leaf"] == [4]  # every leaf of the state split over the four
    # Within rtol = atol = 1e-6, not bit for bit: one member per device is a vmap of batch 1 there and of 4
    # here, and XLA:CPU blocks the batched matmuls differently (as the population is to the solo run).
    assert found["sharded_vs_one"][0] <= 1.0, found["sharded_vs_one"]
    assert found["metrics_vs_one"][0] <= 1.0, found["metrics_vs_one"]
    assert found["compilations"] == [1, 1]


def test_a_checkpoint_written_on_four_devices_loads_on_two_and_one(found):
    assert found["restored_devices_2"] == [2] and found["restored_devices_1"] == [1]
    assert found["restored_on_2_vs_continued"][0] <= 1.0, found["restored_on_2_vs_continued"]
    assert found["restored_on_1_vs_continued"][0] <= 1.0, found["restored_on_1_vs_continued"]


def test_pbt_keeps_the_members_on_their_devices_without_recompiling(found):
    assert found["pbt_devices"] == [4]
    assert found["pbt_event"] == [0, 3]  # the worst (fitness 0) took the best's (fitness 3) state
    assert found["compilations_after_pbt"] == 1
    assert found["member_run_devices"] == [1]  # a member taken out is a solo run on one device


def test_device_counts_that_do_not_divide_the_population(found):
    assert found["default_for_3"] == 3  # 3 members: 3 of the 4 devices
    assert "4 members cannot be split evenly over 3 device(s)" in found["three_of_four"]
    assert "devices=8, but this process sees 4 device(s)" in found["eight"]
