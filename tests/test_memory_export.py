"""Memory export/import: the on-disk format round-trips a table exactly, and refuses bad exports by name."""

from __future__ import annotations

import json
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import LossCallback, Trainer
from emote_jax.memory import (
    AgentObservation,
    EpisodeState,
    MemoryExporter,
    MemoryFormatError,
    MemoryImporter,
    MemoryProxy,
    ReplayTable,
    export_memory,
    import_memory,
)

SPEC = {"obs": ((3,), np.float32), "grid": ((2, 2), np.int16)}


def filled_table(capacity: int = 40, seed: int = 0) -> tuple[ReplayTable, MemoryProxy]:
    """A wrapped ring (more transitions than capacity) with ended and still running episodes."""
    table = ReplayTable(capacity, SPEC, (2,), seed=seed)
    proxy = MemoryProxy(table)
    rng = np.random.default_rng(seed)
    agents = {a: 0 for a in range(3)}
    for step in range(25):
        obs, acts = {}, {}
        for a in list(agents):
            o = {"obs": rng.normal(size=3).astype(np.float32), "grid": np.full((2, 2), step, np.int16)}
            if agents[a] == 0:
                obs[a] = AgentObservation(EpisodeState.INITIAL, o)
            elif agents[a] == 7 + a:  # episodes of 7, 8, 9 steps, then a new agent id
                state = EpisodeState.TERMINAL if a % 2 else EpisodeState.INTERRUPTED
                obs[a] = AgentObservation(state, o, float(rng.normal()))
                del agents[a]
                agents[a + 10] = 0
                continue
            else:
                obs[a] = AgentObservation(EpisodeState.RUNNING, o, float(rng.normal()))
            acts[a] = rng.normal(size=2).astype(np.float32)
            agents[a] += 1
        proxy.add(obs, acts)
    return table, proxy


def assert_same_table(a: ReplayTable, b: ReplayTable) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa["columns"]) == set(sb["columns"])
    for k in sa["columns"]:
        np.testing.assert_array_equal(sa["columns"][k], sb["columns"][k], err_msg=k)
        assert sa["columns"][k].dtype == sb["columns"][k].dtype
    for k in ("capacity", "size", "head", "next_episode_id", "rng_state"):
        assert sa[k] == sb[k], k
    np.testing.assert_array_equal(sa["tips"], sb["tips"])
    assert a.episode_ids() == b.episode_ids()


def test_export_import_round_trip_is_exact_and_sampling_continues_identically(tmp_path):
    table, _ = filled_table()
    assert table.full() and len(table.state_dict()["tips"]) > 0  # wrapped, with running episodes
    table.sample(5, 2)  # advance the sampler RNG
    path = export_memory(table, tmp_path / "export")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "emote_jax.memory" and manifest["format_version"] == 1
    assert manifest["size"] == 40 and manifest["head"] == table.state_dict()["head"]

    other = ReplayTable(40, SPEC, (2,), seed=123)
    import_memory(other, path)
    assert_same_table(table, other)
    for _ in range(3):  # same RNG state, same links: the same windows
        x, y = table.sample(6, 3), other.sample(6, 3)
        np.testing.assert_array_equal(x["rewards"], y["rewards"])
        np.testing.assert_array_equal(x["observation"]["grid"], y["observation"]["grid"])
    # writes continue the same way (ring position and running episodes' open ends restored)
    for t in (table, other):
        eid = t.state_dict()["tips"][0, 0]
        step = t.get_episode(int(eid))["steps"][-1] + 1
        one = {"obs": np.ones((1, 3), np.float32), "grid": np.ones((1, 2, 2), np.int16)}
        t.add_transitions(agent_ids=[0], episode_ids=[eid], steps=[step], observation=one,
                          actions=np.zeros((1, 2), np.float32), rewards=[1.0], next_observation=one)
    assert_same_table(table, other)


def test_a_partial_table_round_trips_and_an_empty_one_too(tmp_path):
    table = ReplayTable(50, SPEC, (2,), seed=1)
    export_memory(table, tmp_path / "empty")
    other = ReplayTable(50, SPEC, (2,), seed=2)
    import_memory(other, tmp_path / "empty")
    assert_same_table(table, other)
    full, _ = filled_table(capacity=200)
    assert full.size() < 200
    export_memory(full, tmp_path / "partial")
    into = ReplayTable(200, SPEC, (2,), seed=5)
    import_memory(into, tmp_path / "partial")
    assert_same_table(full, into)


def _rewrite_column(path, name, arr):
    manifest = json.loads((path / "manifest.json").read_text())
    entry = manifest["columns"][name]
    np.save(path / entry["file"], arr)
    return manifest, entry


@pytest.mark.parametrize("problem", ["missing_file", "missing_entry", "file_dtype", "wrong_dtype", "crc", "object",
                                     "capacity", "version"])
def test_a_bad_export_raises_an_error_naming_the_problem_and_leaves_the_table_unchanged(tmp_path, problem):
    source, _ = filled_table()
    path = export_memory(source, tmp_path / "export")
    manifest = json.loads((path / "manifest.json").read_text())
    target, _ = filled_table(seed=7)
    before = target.state_dict()
    expected = {
        "missing_file": "column 'rewards': its file 05_rewards.npy is missing",
        "missing_entry": "missing ['rewards']",
        "file_dtype": "column 'rewards': the manifest says dtype float32, the file holds float64",
        "wrong_dtype": "column 'rewards': expected dtype float32, got float64",
        "crc": "column 'actions': CRC-32 mismatch",
        "object": "column 'rewards' is not a readable .npy array",
        "capacity": "expected a table of capacity 40, got one of capacity 41",
        "version": "memory format version 99 is not supported",
    }[problem]
    rewards = np.load(path / manifest["columns"]["rewards"]["file"])
    if problem == "missing_file":
        (path / manifest["columns"]["rewards"]["file"]).unlink()
    elif problem == "missing_entry":
        del manifest["columns"]["rewards"]
    elif problem == "file_dtype":
        np.save(path / manifest["columns"]["rewards"]["file"], rewards.astype(np.float64))
    elif problem == "wrong_dtype":  # consistent file and manifest, but not what the table holds
        as64 = rewards.astype(np.float64)
        np.save(path / manifest["columns"]["rewards"]["file"], as64)
        manifest["columns"]["rewards"].update(dtype=as64.dtype.str, crc32=zlib.crc32(as64.tobytes()))
    elif problem == "crc":
        actions = np.load(path / manifest["columns"]["actions"]["file"])
        actions[3, 1] += 1.0
        np.save(path / manifest["columns"]["actions"]["file"], actions)
    elif problem == "object":
        np.save(path / manifest["columns"]["rewards"]["file"], np.array([{"x": 1}] * 40, dtype=object),
                allow_pickle=True)
    elif problem == "capacity":
        manifest["capacity"] = 41
    elif problem == "version":
        manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MemoryFormatError) as err:
        import_memory(target, path)
    assert expected in str(err.value)
    after = target.state_dict()
    for k in before["columns"]:
        np.testing.assert_array_equal(before["columns"][k], after["columns"][k])
    assert before["rng_state"] == after["rng_state"] and before["head"] == after["head"]


def test_export_is_atomic_and_refuses_to_overwrite_unless_asked(tmp_path):
    table, _ = filled_table()
    export_memory(table, tmp_path / "x")
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_memory(table, tmp_path / "x")
    table.sample(2)
    export_memory(table, tmp_path / "x", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary directories left
    other = ReplayTable(40, SPEC, (2,), seed=0)
    import_memory(other, tmp_path / "x")
    assert other.state_dict()["rng_state"] == table.state_dict()["rng_state"]


def _toy_trainer(extra, steps_seed=0):
    cb = LossCallback(name="fit", params={"w": jnp.zeros(3)}, lr=0.1,
                      loss_fn=lambda p, ctx: jnp.mean((ctx.batch["x"] @ p["w"] - 1.0) ** 2))

    def batches():
        rng = np.random.default_rng(steps_seed)
        while True:
            yield {"x": rng.normal(size=(4, 3)).astype(np.float32)}

    return Trainer([cb, *extra], batches(), seed=0)


def test_memory_exporter_keeps_the_last_exports_and_exports_at_the_end(tmp_path):
    table, _ = filled_table()
    exporter = MemoryExporter(table, tmp_path / "mem", interval=3, keep=2)
    t = _toy_trainer([exporter])
    t.train(lambda: t.bp_step > 10)
    assert [p.name for p in exporter.exports()] == ["step_000000009", "step_000000010"]
    restored = ReplayTable(40, SPEC, (2,), seed=9)
    importer = MemoryImporter(restored, tmp_path / "mem")
    t2 = _toy_trainer([importer])
    t2.train(lambda: t2.bp_step > 1)
    assert importer.imported_from.name == "step_000000010"
    assert_same_table(table, restored)


def test_memory_importer_errors_clearly_when_there_is_nothing_to_import(tmp_path):
    table = ReplayTable(40, SPEC, (2,))
    with pytest.raises(FileNotFoundError, match="no memory export in"):
        MemoryImporter(table, tmp_path / "nothing").restore_state(None)
    MemoryImporter(table, tmp_path / "nothing", missing_ok=True).restore_state(None)
    assert table.size() == 0
