"""Checkpoint integrity: verify_checkpoint, the loader's fall back to the newest intact checkpoint, an
exact ``step``, and inspect_checkpoints (what ``emote-jax checkpoints`` prints)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from emote_jax import CallbackError, LossCallback, Trainer
from emote_jax.checkpoint import (
    CheckpointDamagedError,
    CheckpointError,
    CheckpointLoader,
    Checkpointer,
    CheckpointSkippedWarning,
    checkpoint_steps,
    inspect_checkpoints,
    verify_checkpoint,
)
from emote_jax.memory import ReplayTable

STEPS = (5, 10, 15)


def fit(name: str, seed: int = 0, hidden: int = 1024) -> LossCallback:
    """A regression whose weights (3 x 1024 floats) are big enough to be stored in the OCDBT data files, not
    inline in its b-tree nodes (which carry a checksum of their own)."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(3, hidden)), jnp.float32),
              "v": jnp.asarray(rng.normal(size=(hidden,)), jnp.float32)}
    def loss(p, ctx):
        return jnp.mean((jnp.tanh(ctx.batch["x"] @ p["w"]) @ p["v"] - ctx.batch["y"]) ** 2)

    return LossCallback(name=name, params=params, lr=0.05, loss_fn=loss)


def batches(seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield {"x": x, "y": np.sin(x.sum(1)).astype(np.float32)}


def table(seed: int = 0) -> ReplayTable:
    t = ReplayTable(20, {"obs": ((2,), np.float32)}, (1,), seed=seed)
    t.new_episode_id()
    for i in range(4):
        one = {"obs": np.full((1, 2), i + 10 * seed, np.float32)}
        t.add_transitions(agent_ids=[0], episode_ids=[0], steps=[i], observation=one,
                          actions=np.full((1, 1), i, np.float32), rewards=[float(i)], next_observation=one,
                          terminated=np.array([False]))
    return t


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    """A checkpoint directory with the steps 5, 10, 15 (and memory), and the weights ``a/w`` at each."""
    root = tmp_path_factory.mktemp("integrity")
    cb = fit("a")
    t = Trainer([cb, Checkpointer([cb], root / "ck", 5, keep=None, memory=table())], batches(), seed=0)
    weights = {}
    for step in STEPS:
        t.train(lambda: t.bp_step > step)  # noqa: B023
        weights[step] = np.asarray(t.ctx.state["a"]["params"]["w"]).copy()
    assert checkpoint_steps(root / "ck") == list(STEPS)
    return root / "ck", weights


@pytest.fixture
def ck(written, tmp_path) -> Path:
    """A fresh copy of the written checkpoints, to damage."""
    return Path(shutil.copytree(written[0], tmp_path / "ck"))


def _key(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def rot_array(ck: Path, step: int) -> str:
    """Change one array of a checkpoint's state/ while keeping Orbax's and TensorStore's own checksums
    right (state/ rewritten whole, one weight changed: bit rot that no storage layer sees); only the
    CRC-32 in meta/ tells. The array's path, as the checkpoint's messages name it."""
    state = (ck / str(step) / "state").absolute()
    with contextlib.closing(ocp.StandardCheckpointer()) as rw:
        tree = rw.restore(state)
        paths = sorted(_key(p) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
                       if np.asarray(leaf).dtype.kind == "f" and np.asarray(leaf).size > 1)
        target = paths[0]
        rotten = jax.tree_util.tree_map_with_path(lambda p, x: x + 1.0 if _key(p) == target else x, tree)
        rw.save(state.with_name("state.rotten"), rotten)
        rw.wait_until_finished()
    shutil.rmtree(state)
    state.with_name("state.rotten").rename(state)
    return target


def flip_array_bytes(ck: Path, step: int) -> None:
    """Invert 16 bytes in the middle of each array file of a checkpoint's state/ (the OCDBT data files and
    b-tree nodes). Whichever layer sees it first (TensorStore's checksum of a b-tree node, a value that
    does not decode, our CRC-32), the checkpoint must fail its check."""
    for f in [p for p in (ck / str(step) / "state").rglob("*") if p.is_file() and p.parent.name == "d"]:
        raw = bytearray(f.read_bytes())
        mid = len(raw) // 2
        raw[mid:mid + 16] = bytes(b ^ 0xFF for b in raw[mid:mid + 16])
        f.write_bytes(bytes(raw))


#: What a check says about flipped bytes in the array files, whichever layer sees them first.
FLIPPED = re.compile(r"does not match (its|their) CRC-32|its array metadata \(state/\) is missing, truncated or "
                     r"corrupted: ValueError|its arrays \(state/\) could not be read")


def truncate_btree(ck: Path, step: int) -> None:
    """Cut the top-level OCDBT b-tree node of state/ in half (TensorStore's own checksum fails)."""
    node = next((ck / str(step) / "state" / "d").iterdir())
    node.write_bytes(node.read_bytes()[: node.stat().st_size // 2])


def garble_meta(ck: Path, step: int) -> None:
    """Cut the metadata JSON in half (a half-written file)."""
    meta = ck / str(step) / "meta" / "metadata"
    meta.write_text(meta.read_text()[: meta.stat().st_size // 2])


def loader_run(ck: Path, **kw) -> tuple[Trainer, CheckpointLoader, ReplayTable]:
    cb = fit("a", seed=7)
    mem = table(seed=3)
    loader = CheckpointLoader([cb], ck, memory=mem, **kw)
    return Trainer([cb, loader], batches(), seed=1), loader, mem


def state_of(t: Trainer) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(t.ctx.state)[0]}


# ---- verify_checkpoint ------------------------------------------------------------------------------------


def test_an_intact_checkpoint_has_no_problems(ck):
    assert all(verify_checkpoint(ck, s) == [] for s in STEPS)


def test_an_array_changed_under_valid_storage_checksums_is_caught_by_its_crc(ck):
    path = rot_array(ck, 15)
    assert verify_checkpoint(ck, 15) == [f"array {path} does not match its CRC-32: the checkpoint is corrupted"]


def test_flipped_bytes_in_the_array_files_fail_the_check(ck):
    flip_array_bytes(ck, 15)
    problems = verify_checkpoint(ck, 15)
    assert len(problems) == 1 and FLIPPED.search(problems[0]), problems


@pytest.mark.parametrize("damage, phrase", [
    (garble_meta, "its metadata (meta/) is missing or unreadable: JSONDecodeError"),
    (lambda ck, s: (ck / str(s) / "meta" / "metadata").write_text('{"format": "emote_jax.checkpoint", '
                                                                  '"format_version": 1, "crc32": []}'),
     "its metadata (meta/) is malformed"),
    (truncate_btree, "its array metadata (state/) is missing, truncated or corrupted: ValueError"),
    (lambda ck, s: shutil.rmtree(ck / str(s) / "state"), "state (a half-written"),
    (lambda ck, s: shutil.rmtree(ck / str(s) / "memory"), "memory (a half-written"),
    (lambda ck, s: next((ck / str(s) / "memory").rglob("*.npy")).write_bytes(b"\x93NUMPY"),
     "its memory (memory/) could not be read"),
])
def test_each_kind_of_damage_is_named(ck, damage, phrase):
    damage(ck, 15)
    problems = verify_checkpoint(ck, 15)
    assert len(problems) >= 1 and phrase in " ".join(problems), problems
    assert all("\n" not in p for p in problems)
    assert verify_checkpoint(ck, 10) == []  # the others are untouched


def test_verify_without_memory_skips_the_memory(ck):
    next((ck / "15" / "memory").rglob("*.npy")).write_bytes(b"junk")
    assert verify_checkpoint(ck, 15, memory=False) == []
    assert verify_checkpoint(ck, 15) != []


# ---- the loader -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", [flip_array_bytes, rot_array, garble_meta])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_one_warning(written, ck, damage):
    damage(ck, 15)
    t, loader, _ = loader_run(ck)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.train(lambda: t.bp_step > 1)  # restores, then stops at once (bp_step is 11 > 1)
    skipped = [w for w in caught if issubclass(w.category, CheckpointSkippedWarning)]
    assert len(skipped) == 1, [str(w.message) for w in caught]
    msg = str(skipped[0].message)
    assert f"checkpoint {ck / '15'} fails its integrity check" in msg and "loaded bp step 10 instead" in msg
    assert "\n" not in msg
    assert loader.loaded_step == 10 and t.bp_step == 11
    np.testing.assert_array_equal(t.ctx.state["a"]["params"]["w"], written[1][10])
    # set aside, out of the way of the steps the resumed run writes
    assert checkpoint_steps(ck) == [5, 10] and (ck / "15.damaged").is_dir()
    assert loader.set_aside == {15: ck / "15.damaged"}


def test_a_given_step_is_loaded_exactly_and_later_intact_ones_stay(written, ck):
    t, loader, _ = loader_run(ck, step=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointSkippedWarning)
        t.train(lambda: t.bp_step > 1)
    assert loader.loaded_step == 5 and t.bp_step == 6
    np.testing.assert_array_equal(t.ctx.state["a"]["params"]["w"], written[1][5])
    assert checkpoint_steps(ck) == list(STEPS)


def test_a_given_step_that_is_damaged_fails_without_falling_back_and_changes_nothing(ck):
    path = rot_array(ck, 10)
    t, loader, mem = loader_run(ck, step=10)
    before, rows = state_of(t), mem.state_dict()["columns"]["rewards"].copy()
    with pytest.raises(CallbackError) as err:
        t.train(lambda: t.bp_step > 1)
    cause = err.value.__cause__
    assert isinstance(cause, CheckpointDamagedError) and list(cause.problems) == [10]
    assert str(cause) == (f"checkpoint {ck / '10'} fails its integrity check: array {path} does not match its "
                          "CRC-32: the checkpoint is corrupted")
    assert loader.loaded_step is None
    assert state_of(t).keys() == before.keys() and all(np.array_equal(state_of(t)[k], before[k]) for k in before)
    np.testing.assert_array_equal(mem.state_dict()["columns"]["rewards"], rows)
    assert checkpoint_steps(ck) == list(STEPS)  # nothing renamed


def test_later_damaged_checkpoints_are_set_aside_after_loading_a_given_step(ck):
    garble_meta(ck, 15)
    t, loader, _ = loader_run(ck, step=10)
    with pytest.warns(CheckpointSkippedWarning, match="loaded the asked bp step 10"):
        t.train(lambda: t.bp_step > 1)
    assert loader.loaded_step == 10 and checkpoint_steps(ck) == [5, 10]


def test_every_checkpoint_damaged_is_one_error_listing_them_and_nothing_changes(ck):
    for s in STEPS:
        flip_array_bytes(ck, s) if s != 10 else garble_meta(ck, s)
    t, loader, mem = loader_run(ck)
    before = state_of(t)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointSkippedWarning)  # no warnings: the one error says it all
        with pytest.raises(CallbackError) as err:
            t.train(lambda: t.bp_step > 1)
    cause = err.value.__cause__
    assert isinstance(cause, CheckpointDamagedError) and sorted(cause.problems) == list(STEPS)
    msg = str(cause)
    assert msg.startswith(f"every checkpoint (3) in {ck} fails its integrity check")
    assert all(str(ck / str(s)) in msg for s in STEPS) and "\n" not in msg
    assert all(np.array_equal(state_of(t)[k], before[k]) for k in before)
    assert checkpoint_steps(ck) == list(STEPS)


def test_an_unsupported_format_version_is_an_error_not_a_fall_back(ck):
    meta_file = ck / "15" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["format_version"] = 99
    meta_file.write_text(json.dumps(meta))
    t, loader, _ = loader_run(ck)
    with pytest.raises(CallbackError) as err:
        t.train(lambda: t.bp_step > 1)
    cause = err.value.__cause__
    assert type(cause) is CheckpointError and "format version 99" in str(cause) and str(ck / "15") in str(cause)
    assert checkpoint_steps(ck) == list(STEPS)


# ---- inspect_checkpoints ----------------------------------------------------------------------------------


def test_inspect_lists_each_checkpoint_with_size_time_and_integrity(ck):
    path = rot_array(ck, 10)
    (ck / "20.orbax-checkpoint-tmp-1234").mkdir()
    entries = inspect_checkpoints(ck)
    assert [(e.step, e.note is None) for e in entries] == [(5, True), (10, True), (15, True), (20, False)]
    assert [e.ok for e in entries] == [True, False, True, False]
    assert entries[1].problems == [f"array {path} does not match its CRC-32: the checkpoint is corrupted"]
    assert all(e.size_bytes > 1000 for e in entries[:3]) and entries[3].size_bytes == 0
    assert all(abs(e.modified - (ck / str(e.step)).stat().st_mtime) < 3600 for e in entries[:3])
    assert "interrupted save" in entries[3].note
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        inspect_checkpoints(ck / "nothing")
