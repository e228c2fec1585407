"""Pluggable sampling: the sum tree, uniform / prioritized / coverage samplers, their saved state."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from emote_jax.memory import ReplayTable, export_memory, import_memory
from emote_jax.memory.export import MemoryFormatError
from emote_jax.memory.samplers import CoverageSampler, PrioritizedSampler, Sampler, UniformSampler, make_sampler
from emote_jax.memory.sum_tree import SumTree

P_MIN = 1e-3  # a chi-square test at a fixed seed fails below this


def make_table(capacity: int = 64, sampler: Sampler | None = None, seed: int = 0) -> ReplayTable:
    return ReplayTable(capacity, {"obs": ((2,), np.float32)}, (1,), seed=seed, sampler=sampler)


def add_episode(table: ReplayTable, length: int, agent: int = 0, end: bool = True) -> int:
    """One episode of ``length`` steps, row values = (episode id, step)."""
    eid = table.new_episode_id()
    steps = np.arange(length)
    term = np.zeros(length, bool)
    term[-1] = end
    table.add_transitions(
        agent_ids=np.full(length, agent), episode_ids=np.full(length, eid), steps=steps,
        observation={"obs": np.stack([np.full(length, eid), steps], 1).astype(np.float32)},
        next_observation={"obs": np.stack([np.full(length, eid), steps + 1], 1).astype(np.float32)},
        actions=np.zeros((length, 1), np.float32), rewards=(eid * 1000 + steps).astype(np.float32),
        terminated=term)
    return eid


def sampled_rows(table: ReplayTable, batch: dict) -> np.ndarray:
    """The start row of each window of a T=1 sample, recovered from its reward (eid * 1000 + step)."""
    r = batch["rewards"].reshape(-1).astype(np.int64)
    lookup = {(int(e), int(s)): row for row, (e, s) in enumerate(zip(table.row_episodes(), table._row_step))}
    return np.array([lookup[(v // 1000, v % 1000)] for v in r])


# ---- the sum tree ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 7, 1000, 1023, 1025])
def test_sum_tree_total_and_prefix_search_match_a_cumulative_sum(capacity):
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    values = rng.random(capacity) * (rng.random(capacity) > 0.3)  # some zero leaves
    values[rng.integers(capacity)] = 0.5  # at least one positive
    tree.set(np.arange(capacity), values)
    assert tree.total == pytest.approx(values.sum(), rel=1e-12)
    u = np.concatenate([rng.random(500) * values.sum(), [0.0, np.nextafter(values.sum(), 0)]])
    expected = np.searchsorted(np.cumsum(values), u, side="right")  # first leaf whose prefix end exceeds u
    got = tree.find(u)
    # equal except where roundoff puts u on a boundary; a zero leaf is never returned
    assert np.mean(got == np.minimum(expected, capacity - 1)) > 0.99
    assert np.all(values[got] > 0)
    # single updates (repeated ones too) keep every inner node the sum of its children
    idx = rng.integers(0, capacity, 50)
    new = rng.random(50)
    tree.set(idx, new)
    values[idx] = new  # NumPy's assignment order: the last of a repeated index wins, as in the tree
    assert tree.total == pytest.approx(values.sum(), rel=1e-12)
    np.testing.assert_array_equal(tree.leaves(), values)
    rebuilt = SumTree(capacity)
    rebuilt.rebuild(values)
    np.testing.assert_array_equal(rebuilt.tree, tree.tree)  # a pure function of the leaves: bitwise


def test_sum_tree_refuses_bad_input():
    tree = SumTree(5)
    with pytest.raises(ValueError, match="empty"):
        tree.find(np.array([0.0]))
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        tree.set(np.array([5]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite values >= 0"):
        tree.set(np.array([1]), np.array([-1.0]))


# ---- uniform -----------------------------------------------------------------------------------------

def _old_draw_starts(rng, count, t_len, n, window_ok):
    """The table's draw before samplers existed (commit bdcb7aa), for the bitwise comparison."""
    if t_len == 1:
        return rng.integers(0, n, size=count)
    picked, need = [], count
    for _ in range(4):
        cand = rng.integers(0, n, size=max(2 * need, 64))
        hits = cand[window_ok(cand, t_len)][:need]
        picked.append(hits)
        need -= hits.size
        if need == 0:
            return np.concatenate(picked)
    valid = np.flatnonzero(window_ok(np.arange(n), t_len))
    picked.append(valid[rng.integers(0, valid.size, size=need)])
    return np.concatenate(picked)


@pytest.mark.parametrize("t_len,k", [(1, None), (1, 3), (3, None), (3, 2), (9, None)])
def test_uniform_sampler_draws_exactly_what_the_table_drew_before(t_len, k):
    table = make_table(100, seed=7)
    for length in (3, 10, 4, 9, 30, 2, 12, 40):  # wraps the ring; few windows of 9
        add_episode(table, length)
    assert isinstance(table.sampler, UniformSampler)
    rng = np.random.default_rng(7)
    for _ in range(3):
        batch = table.sample(8, t_len, num_batches=k)
        starts = _old_draw_starts(rng, 8 * (k or 1), t_len, table.size(), table.window_ok)
        rows = table._chain(starts, t_len).reshape(-1)
        np.testing.assert_array_equal(batch["rewards"].reshape(-1), table._rewards[rows])
        assert "weights" not in batch and "indices" not in batch


# ---- prioritized -------------------------------------------------------------------------------------

def prioritized_table(n: int = 40, **kw) -> tuple[ReplayTable, PrioritizedSampler]:
    sampler = PrioritizedSampler(**kw)
    table = make_table(64, sampler)
    add_episode(table, n)
    return table, sampler


def test_prioritized_frequencies_match_the_priorities():
    table, sampler = prioritized_table(40, alpha=0.7, eps=0.01)
    td = np.random.default_rng(0).exponential(1.0, 40)
    table.update_priorities(np.arange(40), td)
    expected = (np.abs(td) + 0.01) ** 0.7
    expected /= expected.sum()
    counts = np.zeros(40)
    for _ in range(100):  # a batch holds at most the 40 rows: 50 batches per call
        batch = table.sample(40, num_batches=50)
        np.add.at(counts, batch["indices"].reshape(-1), 1)
        np.testing.assert_array_equal(sampled_rows(table, batch), batch["indices"].reshape(-1))  # the rows
    chi2, p = stats.chisquare(counts, expected * counts.sum())
    print(f"prioritized chi-square {chi2:.1f} on 39 dof, p = {p:.3f}")
    assert p > P_MIN


def test_updated_priorities_change_later_sampling():
    table, sampler = prioritized_table(40)
    before = np.bincount(table.sample(40, num_batches=100)["indices"].reshape(-1), minlength=40)
    assert before[7] < 4000 / 40 * 2  # all at max priority: about uniform
    table.update_priorities(np.arange(40), np.full(40, 0.01))
    table.update_priorities(np.array([7]), np.array([5.0]))
    after = np.bincount(table.sample(40, num_batches=100)["indices"].reshape(-1), minlength=40)
    share = (5.0 + 1e-6) ** 0.6 / ((5.0 + 1e-6) ** 0.6 + 39 * (0.01 + 1e-6) ** 0.6)
    assert after[7] / 4000 == pytest.approx(share, abs=0.03)
    assert sampler.max_priority == pytest.approx(5.0 + 1e-6)


def test_importance_weights_follow_the_formula_and_beta_anneals():
    table, sampler = prioritized_table(40, alpha=0.5, beta=0.4, eps=1e-6, beta_steps=10)
    td = np.linspace(0.1, 4.0, 40)
    table.update_priorities(np.arange(40), td)
    p = (td + 1e-6) ** 0.5
    prob = p / p.sum()
    for b in range(14):
        batch = table.sample(16, num_batches=2)
        for j in range(2):
            beta = 0.4 + 0.6 * min(1.0, (2 * b + j) / 10)
            w = (40 * prob[batch["indices"][j]]) ** -beta
            np.testing.assert_allclose(batch["weights"][j], w / w.max(), rtol=1e-6)
    assert sampler.beta() == 1.0 and sampler.batches_drawn == 28
    assert batch["weights"].dtype == np.float32 and batch["indices"].dtype == np.int32


def test_fifo_wrap_gives_overwritten_rows_the_largest_priority():
    sampler = PrioritizedSampler(alpha=1.0, eps=0.5)
    table = make_table(10, sampler)
    add_episode(table, 10)
    table.update_priorities(np.arange(10), np.arange(10) * 0.5)  # p = 0.5 .. 5.0; max 5.0
    add_episode(table, 3)  # overwrites rows 0, 1, 2
    prio = sampler.priorities(np.arange(10))
    np.testing.assert_allclose(prio, [5.0, 5.0, 5.0, *(np.arange(3, 10) * 0.5 + 0.5)])
    assert sampler.tree.total == pytest.approx(prio.sum())
    assert table.get_episode(1)["steps"].tolist() == [0, 1, 2]


def test_prioritized_windows_are_valid_and_drawn_by_their_start_row():
    sampler = PrioritizedSampler(alpha=1.0, eps=1e-6)
    table = make_table(64, sampler, seed=1)
    add_episode(table, 6)  # rows 0..5: starts 0..3 hold windows of 3
    add_episode(table, 4)  # rows 6..9: starts 6, 7
    td = np.arange(1, 11, dtype=np.float64)
    table.update_priorities(np.arange(10), td)
    batch = table.sample(3, 3, num_batches=7000)
    starts = batch["indices"].reshape(-1)
    valid = np.array([0, 1, 2, 3, 6, 7])
    assert set(np.unique(starts)) <= set(valid.tolist())
    r = batch["rewards"].reshape(-1, 3)
    assert np.all(np.diff(r, axis=1) == 1)  # consecutive steps of one episode
    counts = np.array([np.sum(starts == v) for v in valid])
    chi2, p = stats.chisquare(counts, td[valid] / td[valid].sum() * counts.sum())
    print(f"prioritized windows chi-square {chi2:.1f} on 5 dof, p = {p:.3f}")
    assert p > P_MIN


def test_update_priorities_refuses_what_cannot_be_right():
    table, _ = prioritized_table(10)
    with pytest.raises(ValueError, match=r"live rows in \[0, 10\)"):
        table.update_priorities(np.array([10]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite"):
        table.update_priorities(np.array([1]), np.array([np.nan]))
    with pytest.raises(TypeError, match="PrioritizedSampler"):
        make_table().update_priorities(np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="beta"):
        PrioritizedSampler(beta=1.5)


# ---- coverage ----------------------------------------------------------------------------------------

def test_coverage_frequencies_match_length_times_count_to_the_minus_alpha():
    sampler = CoverageSampler(alpha=0.5)
    table = make_table(1400, sampler, seed=2)
    lengths = [50, 100, 200, 400, 600]
    eids = [add_episode(table, n) for n in lengths]
    # draw counts: episode e drawn c_e times before (set through the saved state)
    drawn = np.array([0, 3, 8, 30, 100])
    state = table.state_dict()
    state["sampler"]["arrays"]["counts"] = np.stack([np.array(eids), drawn], 1).astype(np.int64)
    table.load_state_dict(state)
    assert sampler.counts() == dict(zip(eids, drawn.tolist()))
    batch = table.sample(1350)  # one batch (of at most the 1350 rows): counts change only after it
    ep = (batch["rewards"].reshape(-1) // 1000).astype(np.int64)
    counts = np.array([np.sum(ep == e) for e in eids])
    w = np.array(lengths) * (drawn + 1.0) ** -0.5
    chi2, p = stats.chisquare(counts, w / w.sum() * counts.sum())
    print(f"coverage chi-square {chi2:.1f} on 4 dof, p = {p:.3f}")
    assert p > P_MIN
    steps = batch["rewards"].reshape(-1)[ep == eids[2]] % 1000  # uniform within the episode
    assert stats.chisquare(np.bincount(steps.astype(np.int64), minlength=200)).pvalue > P_MIN
    assert sampler.counts() == dict(zip(eids, (drawn + counts).tolist()))
    assert "weights" not in batch


def test_coverage_windows_stay_inside_episodes_and_skip_short_ones_and_follow_fifo():
    sampler = CoverageSampler(alpha=1.0)
    table = make_table(30, sampler, seed=3)
    for n in (8, 2, 12, 9):  # 31 rows: the first row of episode 0 is ejected
        add_episode(table, n)
    assert sampler.counts().keys() == {0, 1, 2, 3}
    batch = table.sample(7, 4, num_batches=300)
    r = batch["rewards"].reshape(-1, 4)
    assert np.all(np.diff(r, axis=1) == 1)
    assert not np.any(r // 1000 == 1)  # episode 1 has only 2 steps
    assert not np.any(r == 0)  # the ejected first row of episode 0
    add_episode(table, 20)  # ejects the rest of episode 0 and episode 1
    assert sampler.counts().keys() == {2, 3, 4}


# ---- saved state -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["prioritized", "coverage"])
def test_sampler_state_survives_export_and_import_exactly(tmp_path, kind):
    def fill(table):
        for n in (7, 12, 5, 30):
            add_episode(table, n)

    table = make_table(40, make_sampler(kind))
    fill(table)
    for _ in range(5):
        batch = table.sample(8)
        if kind == "prioritized":
            table.update_priorities(batch["indices"], np.random.default_rng(0).random(8) * 3)
    export_memory(table, tmp_path / "x")
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["sampler"]["kind"] == kind
    other = make_table(40, make_sampler(kind))
    import_memory(other, tmp_path / "x")
    a, b = table.state_dict()["sampler"], other.state_dict()["sampler"]
    assert a["scalars"] == b["scalars"]
    for name in a["arrays"]:
        np.testing.assert_array_equal(a["arrays"][name], b["arrays"][name])
    for _ in range(3):  # and they go on drawing the same batches
        x, y = table.sample(16, 2), other.sample(16, 2)
        for key in x:
            if key not in ("observation", "next_observation"):
                np.testing.assert_array_equal(x[key], y[key])
    if kind == "prioritized":
        np.testing.assert_array_equal(table.sampler.tree.tree, other.sampler.tree.tree)
    with pytest.raises(MemoryFormatError, match=f"expected a sampler state of kind 'uniform'.*got '{kind}'"):
        import_memory(make_table(40), tmp_path / "x")


def test_a_uniform_export_stays_version_1_and_loads_into_a_prioritized_table(tmp_path):
    table = make_table(40)
    add_episode(table, 12)
    export_memory(table, tmp_path / "x")
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["format_version"] == 1
    sampler = PrioritizedSampler()
    other = make_table(40, sampler)
    import_memory(other, tmp_path / "x")
    np.testing.assert_array_equal(sampler.priorities(np.arange(12)), np.ones(12))
    assert sampler.tree.total == pytest.approx(12.0)
