"""How a :class:`~emote_jax.memory.table.ReplayTable` picks the rollout windows of a batch: one small
interface (:class:`Sampler`), three strategies.

* :class:`UniformSampler`: uniform over all valid windows, with replacement (the table's default; the
  same draws from the same RNG as before samplers existed).
* :class:`PrioritizedSampler`: proportional prioritized replay (Schaul et al. 2016, "Prioritized
  Experience Replay", sec. 3.3): ``P(i) = p_i^alpha / sum_k p_k^alpha`` with ``p_i = |TD error| + eps``
  from :meth:`PrioritizedSampler.update` (new rows get the largest ``p`` seen so far), over a host
  :class:`~emote_jax.memory.sum_tree.SumTree`; importance weights ``w_i = (N P(i))^-beta / max_batch w``.
* :class:`CoverageSampler`: the reference's coverage-based sampler (emote-rl
  ``CoverageBasedSampleStrategy``): an episode e is drawn with probability proportional to
  ``L_e * (c_e + 1)^-alpha`` (``L_e`` its live transitions, ``c_e`` how often it was drawn), then a window
  uniformly within it.

A window of T > 1 transitions is drawn by its start row (its priority is the start row's), kept if the
start row has ``T - 1`` ``next_row`` hops in its episode, redrawn otherwise; after a few rounds with too
few hits the valid starts are enumerated (docs/decisions/0009-pluggable-sampling.md).

The table owns the RNG (its state is the table's ``rng_state``) and the lock: every method here is called
with the table's lock held.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import numpy as np

from emote_jax.memory.sum_tree import SumTree

#: Rounds of rejection sampling before falling back to enumerating every valid window.
REJECTION_ROUNDS = 4


class Draw(NamedTuple):
    """What a sampler hands the table: ``starts`` (K*count,) int64 start rows, rollout-major per batch,
    and ``weights`` (K*count,) float32 importance weights, or None when the sampler has none."""

    starts: np.ndarray
    weights: np.ndarray | None


class LiveRows(NamedTuple):
    """The live rows of a table state being loaded: ``size`` rows ``[0, size)``, ``head`` the next row to
    write (so the oldest live row when the ring is full), ``episodes`` (size,) int64 their episode ids."""

    size: int
    head: int
    episodes: np.ndarray

    def by_age(self) -> np.ndarray:
        """The live rows, oldest first (the ring's write order)."""
        return np.roll(np.arange(self.size), -self.head) if self.size else np.arange(0)


class Windows(Protocol):
    """What a sampler may ask the table about its rows (called under the table's lock)."""

    def size(self) -> int:
        """The number of live rows (rows ``[0, size)``)."""
        ...

    def window_ok(self, rows: np.ndarray, t_len: int) -> np.ndarray:
        """(len(rows),) bool: whether a window of ``t_len`` transitions starts at each row."""
        ...

    def no_window_error(self, t_len: int, where: str) -> Exception:
        """The error to raise when no window of length ``t_len`` exists."""
        ...

    def row_episodes(self) -> np.ndarray:
        """(size,) int64: the episode of each live row (a view; do not modify)."""
        ...


@runtime_checkable
class Sampler(Protocol):
    """A sampling strategy of a :class:`~emote_jax.memory.table.ReplayTable`.

    ``kind`` names it in saved state; ``tracks_rows`` says whether the table must call
    :meth:`rows_written`/:meth:`rows_forgotten` (a uniform sampler needs neither).
    """

    kind: ClassVar[str]
    tracks_rows: ClassVar[bool]

    def bind(self, capacity: int) -> None:
        """Allocate per-row state for a table of ``capacity`` rows (empty)."""
        ...

    def rows_written(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        """Rows (N,) were just written, for episodes (N,), oldest first."""
        ...

    def rows_forgotten(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        """Live rows (N,) of episodes (N,) are about to be overwritten (FIFO: oldest first)."""
        ...

    def draw(self, rng: np.random.Generator, count: int, num_batches: int, t_len: int, table: Windows,
             where: str) -> Draw:
        """Start rows of ``num_batches`` batches of ``count`` windows of length ``t_len``."""
        ...

    def state_dict(self, size: int) -> dict[str, Any]:
        """``{"kind": str, "scalars": JSON-able dict, "arrays": {name: ndarray}}`` of a table with ``size``
        live rows: what resumes the sampler exactly (fresh arrays)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any] | None, rows: LiveRows, where: str) -> Callable[[], None]:
        """Check ``state`` (None: a table state saved without one, e.g. by an older version) against the
        live rows of the table state being loaded, and return a function that applies it; raise a
        ValueError naming the problem, and change nothing, otherwise."""
        ...


def _draw_windows(propose: Callable[[int], np.ndarray], fallback: Callable[[np.ndarray, int], np.ndarray],
                  count: int, t_len: int, table: Windows, where: str) -> np.ndarray:
    """``count`` start rows of valid windows: ``propose(m)`` draws m candidate rows (kept if a window of
    ``t_len`` starts there); after :data:`REJECTION_ROUNDS` short rounds ``fallback(valid starts, need)``
    draws the rest from the enumerated valid starts."""
    picked, need = [], count
    for _ in range(REJECTION_ROUNDS):
        cand = propose(max(2 * need, 64))
        hits = cand[table.window_ok(cand, t_len)][:need]
        picked.append(hits)
        need -= hits.size
        if need == 0:
            return np.concatenate(picked)
    valid = np.flatnonzero(table.window_ok(np.arange(table.size()), t_len))
    if valid.size == 0:
        raise table.no_window_error(t_len, where)
    picked.append(fallback(valid, need))
    return np.concatenate(picked)


def _check_kind(state: Mapping[str, Any] | None, kind: str, where: str) -> Mapping[str, Any] | None:
    if state is None:
        return None
    got = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
    if got != kind:
        raise ValueError(f"{where}: expected a sampler state of kind {kind!r} (the table's sampler), got {got!r}")
    return state


class UniformSampler:
    """Uniform over all valid windows, with replacement; no importance weights."""

    kind: ClassVar[str] = "uniform"
    tracks_rows: ClassVar[bool] = False

    def bind(self, capacity: int) -> None:
        del capacity

    def rows_written(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        del rows, episodes

    def rows_forgotten(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        del rows, episodes

    def draw(self, rng: np.random.Generator, count: int, num_batches: int, t_len: int, table: Windows,
             where: str) -> Draw:
        n, total = table.size(), count * num_batches
        if t_len == 1:  # every live row is a valid window
            return Draw(rng.integers(0, n, size=total), None)
        starts = _draw_windows(lambda m: rng.integers(0, n, size=m),
                               lambda valid, need: valid[rng.integers(0, valid.size, size=need)],
                               total, t_len, table, where)
        return Draw(starts, None)

    def state_dict(self, size: int) -> dict[str, Any]:
        del size
        return {"kind": self.kind, "scalars": {}, "arrays": {}}

    def load_state_dict(self, state: Mapping[str, Any] | None, rows: LiveRows, where: str) -> Callable[[], None]:
        del rows
        _check_kind(state, self.kind, where)
        return lambda: None


class PrioritizedSampler:
    """Proportional prioritized replay over a host sum tree.

    Args:
        alpha: how much prioritisation is used (0: uniform); leaves of the tree hold ``p^alpha``.
        beta: the importance-sampling exponent at the first batch (``beta0``); it grows linearly to 1 over
            ``beta_steps`` batches drawn, and stays at 1.
        eps: added to ``|TD error|`` so that no transition gets priority 0.
        beta_steps: batches over which beta anneals to 1 (typically the run's backprop steps).

    A new row gets the largest priority seen (1 at first). A row's priority changes only through
    :meth:`update`; a row that is overwritten gets the new row's (the largest) priority. Weights are
    normalised by the largest weight of their batch, so that they only ever scale the loss down.
    """

    kind: ClassVar[str] = "prioritized"
    tracks_rows: ClassVar[bool] = True

    def __init__(self, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6, beta_steps: int = 100_000):
        where = "PrioritizedSampler"
        for name, value, ok, expected in (("alpha", alpha, alpha >= 0, ">= 0"), ("beta", beta, 0 <= beta <= 1, "in [0, 1]"),
                                          ("eps", eps, eps > 0, "> 0")):
            if not (isinstance(value, (int, float)) and np.isfinite(value) and ok):
                raise ValueError(f"{where}: expected {name} {expected}, got {value!r}")
        if isinstance(beta_steps, bool) or not isinstance(beta_steps, (int, np.integer)) or beta_steps < 1:
            raise ValueError(f"{where}: expected beta_steps to be an int >= 1, got {beta_steps!r}")
        self.alpha, self.beta0, self.eps, self.beta_steps = float(alpha), float(beta), float(eps), int(beta_steps)
        self._tree: SumTree | None = None
        self._priority = np.zeros(0, np.float64)  # p = |td| + eps per row (0 for rows never written)
        self.max_priority = 1.0
        self.batches_drawn = 0

    def __repr__(self) -> str:
        return (f"PrioritizedSampler(alpha={self.alpha}, beta={self.beta0}, eps={self.eps}, "
                f"beta_steps={self.beta_steps})")

    @property
    def tree(self) -> SumTree:
        if self._tree is None:
            raise RuntimeError("PrioritizedSampler: not bound to a table yet (ReplayTable(..., sampler=...) binds it)")
        return self._tree

    def beta(self, batch: int | np.ndarray | None = None) -> np.ndarray | float:
        """beta at the given batch number (default: the next batch): ``beta0 + (1 - beta0) * min(1, b / beta_steps)``."""
        b = self.batches_drawn if batch is None else batch
        return self.beta0 + (1.0 - self.beta0) * np.minimum(1.0, np.asarray(b, np.float64) / self.beta_steps)

    def priorities(self, rows: np.ndarray) -> np.ndarray:
        """The priorities ``p`` (before ``^alpha``) of ``rows`` (a copy)."""
        return self._priority[np.asarray(rows, np.int64)].copy()

    def bind(self, capacity: int) -> None:
        self._tree = SumTree(capacity)
        self._priority = np.zeros(capacity, np.float64)
        self.max_priority, self.batches_drawn = 1.0, 0

    def rows_written(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        del episodes
        self._priority[rows] = self.max_priority
        self.tree.set(rows, np.full(len(rows), self.max_priority ** self.alpha))

    def rows_forgotten(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        del rows, episodes  # the write that follows resets each row to the largest priority

    def update(self, rows: np.ndarray, td_errors: np.ndarray) -> None:
        """Set the priorities of ``rows`` (N,) to ``|td_errors| + eps`` (N,); a repeated row keeps its last."""
        p = np.abs(np.asarray(td_errors, np.float64)) + self.eps
        self._priority[rows] = p
        self.tree.set(rows, p ** self.alpha)
        if p.size:
            self.max_priority = max(self.max_priority, float(p.max()))

    def draw(self, rng: np.random.Generator, count: int, num_batches: int, t_len: int, table: Windows,
             where: str) -> Draw:
        tree, total_n = self.tree, count * num_batches

        def propose(m: int) -> np.ndarray:
            return tree.find(rng.random(m) * tree.total)

        def fallback(valid: np.ndarray, need: int) -> np.ndarray:
            cdf = np.cumsum(tree.leaves(valid))
            return valid[np.minimum(np.searchsorted(cdf, rng.random(need) * cdf[-1], side="right"), valid.size - 1)]

        starts = propose(total_n) if t_len == 1 else _draw_windows(propose, fallback, total_n, t_len, table, where)
        # w_i = (N P(i))^-beta / max_j w_j over each batch; P(i) = leaf_i / total (over all live rows)
        prob = tree.leaves(starts).reshape(num_batches, count) / tree.total
        beta = self.beta(self.batches_drawn + np.arange(num_batches))[:, None]
        w = (table.size() * prob) ** -beta
        w /= w.max(axis=1, keepdims=True)
        self.batches_drawn += num_batches
        return Draw(starts, w.reshape(-1).astype(np.float32))

    def state_dict(self, size: int) -> dict[str, Any]:
        return {"kind": self.kind,
                "scalars": {"max_priority": self.max_priority, "batches_drawn": self.batches_drawn},
                "arrays": {"priority": self._priority[:size].copy()}}

    def load_state_dict(self, state: Mapping[str, Any] | None, rows: LiveRows, where: str) -> Callable[[], None]:
        state = _check_kind(state, self.kind, where)
        size, capacity = rows.size, self.tree.capacity
        if state is None:  # saved without priorities: every live row gets priority 1, as if new
            prio, max_p, drawn = np.ones(size), 1.0, 0
        else:
            try:
                prio = np.asarray(state["arrays"]["priority"])
                max_p, drawn = float(state["scalars"]["max_priority"]), int(state["scalars"]["batches_drawn"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: malformed prioritized sampler state ({type(e).__name__}: {e})") from None
            if prio.dtype != np.float64 or prio.shape != (size,):
                raise ValueError(f"{where}: expected sampler array 'priority' float64 of shape ({size},), "
                                 f"got {prio.dtype} {prio.shape}")
            if not (np.all(np.isfinite(prio)) and np.all(prio > 0)) or not (np.isfinite(max_p) and max_p > 0) \
                    or drawn < 0:
                raise ValueError(f"{where}: expected finite priorities > 0, max_priority > 0 and batches_drawn >= 0")
        full = np.zeros(capacity, np.float64)
        full[:size] = prio

        def apply() -> None:
            self._priority, self.max_priority, self.batches_drawn = full, max_p, drawn
            self.tree.rebuild(full ** self.alpha)

        return apply


class CoverageSampler:
    """The reference's coverage-based sampler: episode e with probability ``L_e (c_e + 1)^-alpha / Z``,
    ``L_e`` its live transitions, ``c_e`` the windows drawn from it so far; then a window start uniformly
    among its first ``L_e - T + 1`` live rows. Episodes with fewer than T live rows are not drawn.

    Counts change after each batch (the K batches of one call see the counts of the batches before them).
    No importance weights (the reference has none). ``alpha = 0`` is uniform over windows.
    """

    kind: ClassVar[str] = "coverage"
    tracks_rows: ClassVar[bool] = True

    def __init__(self, alpha: float = 0.5):
        if not (isinstance(alpha, (int, float)) and np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"CoverageSampler: expected alpha >= 0, got {alpha!r}")
        self.alpha = float(alpha)
        # episode -> [its live rows (oldest first) from index lo on, lo, times drawn]
        self._episodes: dict[int, list[Any]] = {}

    def __repr__(self) -> str:
        return f"CoverageSampler(alpha={self.alpha})"

    def counts(self) -> dict[int, int]:
        """``{episode id: windows drawn from it}`` of the episodes with live rows."""
        return {e: v[2] for e, v in self._episodes.items()}

    def bind(self, capacity: int) -> None:
        del capacity
        self._episodes = {}

    def rows_written(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        eps = self._episodes
        for row, eid in zip(rows.tolist(), episodes.tolist()):
            entry = eps.get(eid)
            if entry is None:
                eps[eid] = [[row], 0, 0]
            else:
                entry[0].append(row)

    def rows_forgotten(self, rows: np.ndarray, episodes: np.ndarray) -> None:
        eps = self._episodes
        for eid in episodes.tolist():  # FIFO: each is the oldest live row of its episode
            entry = eps[eid]
            entry[1] += 1
            if entry[1] == len(entry[0]):
                del eps[eid]
            elif entry[1] >= 1024 and 2 * entry[1] >= len(entry[0]):
                entry[0], entry[1] = entry[0][entry[1]:], 0

    def _weights(self, t_len: int) -> tuple[list[int], np.ndarray, np.ndarray]:
        ids = list(self._episodes)
        entries = list(self._episodes.values())
        live = np.fromiter((len(e[0]) - e[1] for e in entries), np.int64, len(entries))
        drawn = np.fromiter((e[2] for e in entries), np.float64, len(entries))
        w = np.where(live >= t_len, live * (drawn + 1.0) ** -self.alpha, 0.0)
        return ids, live, w

    def draw(self, rng: np.random.Generator, count: int, num_batches: int, t_len: int, table: Windows,
             where: str) -> Draw:
        out = []
        for _ in range(num_batches):
            ids, live, w = self._weights(t_len)
            if not w.sum() > 0:
                raise table.no_window_error(t_len, where)
            p = w / w.sum()

            def propose(m: int) -> np.ndarray:
                pick = rng.choice(len(ids), size=m, p=p)
                offset = (rng.random(m) * (live[pick] - t_len + 1)).astype(np.int64)
                entries = [self._episodes[ids[i]] for i in pick.tolist()]
                return np.fromiter((e[0][e[1] + o] for e, o in zip(entries, offset.tolist())), np.int64, m)

            def fallback(valid: np.ndarray, need: int) -> np.ndarray:
                weight = dict(zip(ids, w.tolist()))  # an episode's weight, spread over its valid starts
                eids, inverse, n_valid = np.unique(table.row_episodes()[valid], return_inverse=True, return_counts=True)
                row_w = np.array([weight.get(e, 0.0) for e in eids.tolist()])[inverse] / n_valid[inverse]
                cdf = np.cumsum(row_w)
                return valid[np.minimum(np.searchsorted(cdf, rng.random(need) * cdf[-1], side="right"), valid.size - 1)]

            starts = propose(count) if t_len == 1 else _draw_windows(propose, fallback, count, t_len, table, where)
            for eid in table.row_episodes()[starts].tolist():
                self._episodes[eid][2] += 1
            out.append(starts)
        return Draw(np.concatenate(out), None)

    def state_dict(self, size: int) -> dict[str, Any]:
        del size
        counts = np.array([[e, v[2]] for e, v in sorted(self._episodes.items())], np.int64).reshape(-1, 2)
        return {"kind": self.kind, "scalars": {}, "arrays": {"counts": counts}}

    def load_state_dict(self, state: Mapping[str, Any] | None, rows: LiveRows, where: str) -> Callable[[], None]:
        state = _check_kind(state, self.kind, where)
        counts = np.zeros((0, 2), np.int64) if state is None else np.asarray(state.get("arrays", {}).get("counts"))
        if counts.dtype != np.int64 or counts.ndim != 2 or counts.shape[1] != 2 or np.any(counts[:, 1] < 0):
            raise ValueError(f"{where}: expected sampler array 'counts' int64 of shape (E, 2) with counts >= 0, "
                             f"got {counts.dtype} {counts.shape}")
        order = rows.by_age()
        episodes = rows.episodes
        drawn = dict(zip(counts[:, 0].tolist(), counts[:, 1].tolist()))

        def apply() -> None:
            self._episodes = {}
            self.rows_written(order, episodes[order])
            for eid, entry in self._episodes.items():
                entry[2] = drawn.get(eid, 0)

        return apply


def make_sampler(kind: str, *, alpha: float | None = None, beta: float = 0.4, eps: float = 1e-6,
                 beta_steps: int = 100_000) -> Sampler:
    """The sampler named ``kind`` ("uniform", "prioritized", "coverage"); ``alpha`` defaults to 0.6
    (prioritized) or 0.5 (coverage, the reference's)."""
    if kind == "uniform":
        return UniformSampler()
    if kind == "prioritized":
        return PrioritizedSampler(0.6 if alpha is None else alpha, beta, eps, beta_steps)
    if kind == "coverage":
        return CoverageSampler(0.5 if alpha is None else alpha)
    raise ValueError(f"make_sampler: expected kind 'uniform', 'prioritized' or 'coverage', got {kind!r}")
