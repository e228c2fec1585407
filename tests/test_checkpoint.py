"""Checkpointer and CheckpointLoader: what is saved, what each flag restores, retention, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Callback, CallbackError, LossCallback, Trainer
from emote_jax.checkpoint import (
    CheckpointError,
    CheckpointLoader,
    CheckpointNotFoundError,
    Checkpointer,
    checkpoint_steps,
)
from emote_jax.memory import ReplayTable

REPO = Path(__file__).resolve().parents[1]


def toy_loss(name: str, hidden: int = 4, lr: float = 0.05, seed: int = 0) -> LossCallback:
    """A small regression: ``tanh(x @ w) @ v`` fits ``sin(sum(x))``; params w (3, hidden), v (hidden,)."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(3, hidden)), jnp.float32),
              "v": jnp.asarray(rng.normal(size=(hidden,)), jnp.float32)}

    def loss(p, ctx):
        pred = jnp.tanh(ctx.batch["x"] @ p["w"]) @ p["v"]
        return jnp.mean((pred - ctx.batch["y"]) ** 2)

    return LossCallback(name=name, params=params, loss_fn=loss, lr=lr)


def batches(seed: int = 0):
    """Batches of 8: x (8, 3), y (8,)."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}


def small_table(seed: int = 0, rows: int = 12) -> ReplayTable:
    """A table with ``rows`` transitions of 3-step episodes (the last one still running)."""
    table = ReplayTable(20, {"obs": ((2,), np.float32)}, (1,), seed=seed)
    for i in range(rows):
        eid = i // 3
        if i % 3 == 0:
            table.new_episode_id()
        one = {"obs": np.full((1, 2), i + 10 * seed, np.float32)}
        table.add_transitions(agent_ids=[0], episode_ids=[eid], steps=[i % 3], observation=one,
                              actions=np.full((1, 1), i, np.float32), rewards=[float(i)], next_observation=one,
                              terminated=np.array([i % 3 == 2 and i < rows - 1]))
    return table


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_trees_equal(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def assert_trees_differ(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert any(not np.array_equal(fa[k], fb[k]) for k in fa)


def trained(tmp_path, steps: int = 10, interval: int | None = 5, memory=None, **kw):
    """A trainer with two loss callbacks trained ``steps`` steps, checkpointing to tmp_path/ck."""
    cbs = [toy_loss("a", **kw), toy_loss("b", seed=1)]
    ck = Checkpointer(cbs, tmp_path / "ck", interval, memory=memory)
    t = Trainer([*cbs, ck], batches(), seed=0)
    t.train(lambda: t.bp_step > steps)
    return t, cbs, ck


def fresh(hidden: int = 4, lr: float = 0.5, pre_steps: int = 3):
    """Another run of the same layout: other params, other lr, optimizer state of its own."""
    cbs = [toy_loss("a", hidden=hidden, lr=lr, seed=5), toy_loss("b", seed=6, lr=lr)]
    t = Trainer(cbs, batches(seed=9), seed=1)
    t.train(lambda: t.bp_step > pre_steps)
    return t, cbs


def test_a_restore_brings_back_every_part_the_counters_and_the_key(tmp_path):
    t, _, ck = trained(tmp_path, steps=10)
    assert ck.saved_steps == [5, 10] and checkpoint_steps(tmp_path / "ck") == [5, 10]
    t2, cbs2 = fresh()
    ctx = CheckpointLoader(cbs2, tmp_path / "ck").load(t2._host_ctx())
    assert_trees_equal(ctx.state, t.ctx.state)
    np.testing.assert_array_equal(jax.random.key_data(ctx.key), jax.random.key_data(t.ctx.key))
    assert ctx.bp_samples == t.bp_samples == 10 * 8
    # restored into a trainer, training continues from step 11 exactly like the original
    t2.ctx = ctx.replace(metrics={})
    t2.bp_samples = ctx.bp_samples
    it1, it2 = batches(seed=4), batches(seed=4)
    t.dataloader, t2.dataloader = it1, it2
    t.train(lambda: t.bp_step > 13, handle_signals=False)
    t2.train(lambda: t2.bp_step > 13, handle_signals=False)
    assert t2.bp_step == t.bp_step == 14
    assert_trees_equal(t2.ctx.state, t.ctx.state)


@pytest.mark.parametrize("part", ["network", "optimizer", "hparams"])
def test_each_flag_restores_exactly_its_part_and_nothing_else(tmp_path, part):
    t, cbs, _ = trained(tmp_path, steps=5)
    t2, cbs2 = fresh()
    before = {cb.name: cb.state_dict(t2.ctx.state[cb.name]) for cb in cbs2}
    saved = {cb.name: cb.state_dict(t.ctx.state[cb.name]) for cb in cbs}
    flags = {f"load_{p}": p == part for p in ("network", "optimizer", "hparams")}
    loader = CheckpointLoader(cbs2, tmp_path / "ck", load_counters=False, **flags)
    ctx = loader.load(t2._host_ctx())
    for cb in cbs2:
        after = cb.state_dict(ctx.state[cb.name])
        for p in ("network", "optimizer", "hparams"):
            if p == part:
                assert_trees_equal(after[p], saved[cb.name][p])
                assert_trees_differ(after[p], before[cb.name][p])
            else:
                assert_trees_equal(after[p], before[cb.name][p])
    assert int(ctx.state["trainer"]["bp_step"]) == 4  # counters not loaded
    np.testing.assert_array_equal(jax.random.key_data(ctx.key), jax.random.key_data(t2.ctx.key))


def test_keeps_the_last_m_and_the_best_by_a_metric(tmp_path):
    class Score(Callback):  # a metric that peaks at step 6
        def backward(self, ctx):
            return ctx.log(score=-((ctx.bp_step - 6.0) ** 2))

    cb = toy_loss("a")
    ck = Checkpointer([cb], tmp_path / "best", 2, keep=2, best_metric="score", best_mode="max")
    t = Trainer([cb, Score(), ck], batches(), seed=0)
    t.train(lambda: t.bp_step > 14)
    assert ck.saved_steps == [2, 4, 6, 8, 10, 12, 14]
    assert checkpoint_steps(tmp_path / "best") == [6, 12, 14]
    cb2 = toy_loss("a")
    ck2 = Checkpointer([cb2], tmp_path / "last", 2, keep=3)
    t2 = Trainer([cb2, ck2], batches(), seed=0)
    t2.train(lambda: t2.bp_step > 13)  # 13 is not a multiple: the final checkpoint comes from end_training
    assert checkpoint_steps(tmp_path / "last") == [10, 12, 13]


def test_a_checkpoint_is_written_at_the_end_of_the_call_that_reaches_the_interval(tmp_path):
    cb = toy_loss("a")
    ck = Checkpointer([cb], tmp_path / "ck", 5, keep=None, save_at_end=False)

    def stacked():  # K = 4 steps per call
        it = batches()
        while True:
            items = [next(it) for _ in range(4)]
            yield {k: np.stack([b[k] for b in items]) for k in items[0]}

    stacked_loader = stacked()
    t = Trainer([cb, ck], _Stacked(stacked_loader, 4), seed=0)
    t.train(lambda: t.bp_step > 20)
    assert ck.saved_steps == [8, 12, 16, 20]  # multiples 5, 10, 15, 20 are reached in calls ending at 8, 12, 16, 20


class _Stacked:
    def __init__(self, it, k):
        self.it, self.steps_per_call = it, k

    def __iter__(self):
        return self.it


def test_duplicate_or_reserved_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"duplicated: \['a'\]"):
        Checkpointer([toy_loss("a"), toy_loss("a")], tmp_path, 5)
    with pytest.raises(ValueError, match=r"duplicated: \['a'\]"):
        CheckpointLoader([toy_loss("a"), toy_loss("a")], tmp_path)
    with pytest.raises(ValueError, match="'trainer' is reserved"):
        Checkpointer([toy_loss("trainer")], tmp_path, 5)


def _meta_file(ck_dir: Path, step: int) -> Path:
    return ck_dir / str(step) / "meta" / "metadata"


def _corrupt(ck_dir: Path, step: int, problem: str) -> str:
    """Damage the checkpoint of ``step``; return a phrase the error must contain."""
    state_dir = ck_dir / str(step) / "state"
    if problem == "format_version":
        meta = json.loads(_meta_file(ck_dir, step).read_text())
        meta["format_version"] = 99
        _meta_file(ck_dir, step).write_text(json.dumps(meta))
        return "format version 99 (written by emote_jax 0.1.0) is not supported"
    if problem == "meta_garbage":
        _meta_file(ck_dir, step).write_text("{not json")
        return "its metadata (meta/) is missing or unreadable"
    if problem == "truncated":
        files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]  # the array data
        assert files
        for p in files:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return "truncated or corrupted"
    if problem == "flipped":
        meta = json.loads(_meta_file(ck_dir, step).read_text())
        path = next(iter(meta["crc32"]))
        meta["crc32"][path] ^= 1  # as if the array's bytes had changed
        _meta_file(ck_dir, step).write_text(json.dumps(meta))
        return f"array {path} does not match its CRC-32: the checkpoint is corrupted"
    if problem == "no_state":
        for p in sorted(state_dir.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        state_dir.rmdir()
        return "its array metadata (state/) is missing, truncated or corrupted"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["format_version", "meta_garbage", "truncated", "flipped", "no_state"])
def test_a_damaged_checkpoint_is_refused_by_name_and_nothing_changes(tmp_path, problem):
    _, cbs, _ = trained(tmp_path, steps=5, memory=small_table(seed=1))
    phrase = _corrupt(tmp_path / "ck", 5, problem)
    cbs2 = [toy_loss("a", seed=5), toy_loss("b", seed=6)]
    table = small_table(seed=2)
    before_table = table.state_dict()
    loader = CheckpointLoader(cbs2, tmp_path / "ck", memory=table)
    t2 = Trainer([*cbs2, loader], batches(), seed=1)
    before = jax.tree.map(np.asarray, t2.ctx.state)
    with pytest.raises(CallbackError) as err:
        t2.train(lambda: t2.bp_step > 3)
    assert err.value.hook == "restore_state" and err.value.callback == "checkpoint_loader"
    cause = err.value.__cause__
    assert isinstance(cause, CheckpointError), cause
    assert phrase in str(cause) and str(tmp_path / "ck" / "5") in str(cause)
    assert_trees_equal(t2.ctx.state, before)
    after_table = table.state_dict()
    for k in before_table["columns"]:
        np.testing.assert_array_equal(after_table["columns"][k], before_table["columns"][k])
    assert after_table["rng_state"] == before_table["rng_state"]


def test_a_checkpoint_of_another_network_shape_is_refused_naming_the_arrays(tmp_path):
    trained(tmp_path, steps=5, hidden=4)
    t2, cbs2 = fresh(hidden=6)
    before = jax.tree.map(np.asarray, t2.ctx.state)
    with pytest.raises(CheckpointError) as err:
        CheckpointLoader(cbs2, tmp_path / "ck").load(t2._host_ctx())
    msg = str(err.value)
    assert "another network shape" in msg
    assert "a/network/w: checkpoint float32[3, 4], this run float32[3, 6]" in msg
    assert "a/network/v: checkpoint float32[4], this run float32[6]" in msg
    assert "b/" not in msg  # b has the same shape
    assert_trees_equal(t2.ctx.state, before)


def test_missing_names_and_missing_checkpoints_are_clear_errors(tmp_path):
    trained(tmp_path, steps=5)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \['c'\]"):
        cbs = [toy_loss("a"), toy_loss("b"), toy_loss("c")]
        CheckpointLoader(cbs, tmp_path / "ck").load(Trainer(cbs, batches())._host_ctx())
    with pytest.raises(CheckpointError, match=r"not in this run \['b'\]"):
        cbs = [toy_loss("a")]
        CheckpointLoader(cbs, tmp_path / "ck").load(Trainer(cbs, batches())._host_ctx())
    cbs = [toy_loss("a")]  # strict=False: restore a subset
    ctx = CheckpointLoader(cbs, tmp_path / "ck", strict=False).load(Trainer(cbs, batches())._host_ctx())
    assert int(ctx.state["trainer"]["bp_step"]) == 6
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint directory"):
        CheckpointLoader(cbs, tmp_path / "none").load(Trainer(cbs, batches())._host_ctx())
    with pytest.raises(CheckpointNotFoundError, match=r"no checkpoint of step 7 .* have \[5\]"):
        CheckpointLoader(cbs, tmp_path / "ck", step=7, strict=False).load(Trainer(cbs, batches())._host_ctx())


def test_the_memory_is_saved_inside_the_checkpoint_and_restored_exactly(tmp_path):
    table = small_table(seed=1)
    table.sample(3)
    trained(tmp_path, steps=5, memory=table)
    assert (tmp_path / "ck" / "5" / "memory" / "default" / "manifest.json").is_file()
    into = small_table(seed=3, rows=5)
    cbs2 = [toy_loss("a"), toy_loss("b")]
    CheckpointLoader(cbs2, tmp_path / "ck", memory=into).load(Trainer(cbs2, batches())._host_ctx())
    a, b = table.state_dict(), into.state_dict()
    for k in a["columns"]:
        np.testing.assert_array_equal(a["columns"][k], b["columns"][k])
    assert a["rng_state"] == b["rng_state"] and a["head"] == b["head"]
    np.testing.assert_array_equal(a["tips"], b["tips"])


CROSS_DEVICE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from emote_jax import Context, LossCallback
from emote_jax.checkpoint import Checkpointer
assert len(jax.devices()) == 2, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("x",))
params = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "v": jnp.ones(4, jnp.float32)}
cb = LossCallback(name="a", params=params, loss_fn=lambda p, c: 0.0)
slot = cb.init_state(jax.random.key(0))
slot = jax.device_put(slot, NamedSharding(mesh, P()))  # replicated over both devices
slot["params"]["w"] = jax.device_put(slot["params"]["w"], NamedSharding(mesh, P(None, "x")))  # sharded
key = jax.device_put(jax.random.key(7), jax.devices()[1])
ctx = Context(state={"trainer": {"bp_step": jnp.asarray(4, jnp.int32)}, "a": slot}, batch=None, key=key,
              metrics={}, bp_step=3, bp_samples=24)
assert Checkpointer([cb], sys.argv[1], None).save(ctx) == 3
"""


def test_a_checkpoint_written_on_other_devices_loads_onto_this_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CROSS_DEVICE, str(tmp_path / "ck")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(jax.devices()) == 1
    cb = LossCallback(name="a", params={"w": jnp.zeros((3, 4)), "v": jnp.zeros(4)}, loss_fn=lambda p, c: 0.0)
    t = Trainer([cb], batches())
    ctx = CheckpointLoader([cb], tmp_path / "ck").load(t._host_ctx())
    w = ctx.state["a"]["params"]["w"]
    np.testing.assert_array_equal(np.asarray(w), np.arange(12, dtype=np.float32).reshape(3, 4))
    assert w.sharding == t.ctx.state["a"]["params"]["w"].sharding  # the running state's placement
    assert int(ctx.state["trainer"]["bp_step"]) == 4 and ctx.bp_samples == 24
    np.testing.assert_array_equal(jax.random.key_data(ctx.key), jax.random.key_data(jax.random.key(7)))


def test_a_directory_with_later_checkpoints_is_refused_rather_than_mixed(tmp_path):
    trained(tmp_path, steps=10)
    cbs = [toy_loss("a"), toy_loss("b", seed=1)]
    t = Trainer([*cbs, Checkpointer(cbs, tmp_path / "ck", 5)], batches(), seed=0)
    with pytest.raises(CallbackError) as err:
        t.train(lambda: t.bp_step > 3)
    assert "already holds checkpoints of steps [5, 10], later than this run's step 0" in str(err.value)
    assert checkpoint_steps(tmp_path / "ck") == [5, 10]


@pytest.mark.parametrize("load_hparams", [True, False])
def test_sac_hyperparameters_that_differ_from_the_running_ones_come_back_exactly_when_asked(tmp_path, load_hparams):
    """AlphaLoss's extras (target entropy, alpha cap), QTarget's hparams (gamma, tau, reward scale) and a
    loss's learning rate, saved with values other than a fresh run's, are restored only with load_hparams."""
    from emote_jax.algorithms import make_sac_callbacks
    from test_sac_parity import _batch  # tests/ is on sys.path under pytest

    def data(n):
        return [{"default": _batch(seed=s), "batch_size": 16} for s in range(n)]

    saved, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(8,), gamma=0.9,
                                  tau=0.02, reward_scale=3.0, target_entropy=-5.0, max_alpha=0.5, lr_q=1e-3)
    Trainer([*saved, Checkpointer(saved, tmp_path / "ck", None)], data(2)).train()
    running, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(1), hidden_dims=(8,))
    t = Trainer(running, data(1))
    ctx = CheckpointLoader(running, tmp_path / "ck", load_hparams=load_hparams).load(t._host_ctx())
    hp, extra = ctx.state["q_target"]["hparams"], ctx.state["alpha"]["extra"]
    got = (float(hp["gamma"]), float(hp["tau"]), float(hp["reward_scale"]), float(extra["target_entropy"]),
           float(np.exp(extra["max_ln_alpha"])), float(ctx.state["q1"]["opt_state"].hyperparams["learning_rate"]))
    expected = (0.9, 0.02, 3.0, -5.0, 0.5, 1e-3) if load_hparams else (0.99, 0.005, 1.0, -2.0, 0.2, 3e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
