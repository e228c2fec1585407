"""The reading side of a :class:`~emote_jax.memory.table.ReplayTable`: sampling rollout windows (as its
:class:`~emote_jax.memory.samplers.Sampler` draws them), feeding TD errors back to a prioritized sampler,
counting windows, rebuilding an episode, and what samplers ask the table about its rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emote_jax.memory import _checks
from emote_jax.memory._table_layout import TableLayout
from emote_jax.memory.samplers import PrioritizedSampler


class TableReading(TableLayout):
    """The read methods of :class:`~emote_jax.memory.table.ReplayTable` (see there for the layout)."""

    def sample(self, count: int, rollout_length: int = 1, *, num_batches: int | None = None,
               n_step: bool = True) -> dict[str, Any]:
        """Sample ``count`` rollout windows of ``T = rollout_length`` transitions (T consecutive transitions
        of one episode), with replacement, as the table's sampler draws them (uniformly by default).

        Returns fresh arrays (never views of the table), rollout-major (rollout i is rows i*T..i*T+T-1)::

            observation       {key: (count*T, *obs_shape)}
            next_observation  {key: (count, *obs_shape)}   obs after the window's last step
            actions           (count*T, *action_shape)
            rewards           (count*T, 1) float32
            masks             (count, 1) float32   0.0 iff the window ends an episode that TERMINATED
            terminated        (count, 1) float32   1 - masks
            truncated         (count, 1) float32   1.0 iff the window ends a truncated episode
            weights           (count,) float32     importance weights (only with a sampler that has them,
                                                   e.g. PrioritizedSampler)
            indices           (count,) int32       the window's start row, for update_priorities (idem)

        With ``num_batches=K`` it draws K independent batches in one gather and every array gets a
        leading axis K, e.g. ``actions`` (K, count*T, *action_shape), ``masks`` (K, count, 1).

        ``n_step=False`` is the reference's default table layout: each of the T transitions keeps its own
        ``next_observation``, ``masks``, ``terminated`` and ``truncated`` (``count*T`` rows each), so a Q
        target computes T independent one-step targets per window (``weights``/``indices`` stay per window).

        Raises ValueError if one batch (``count * T`` transitions) is larger than :meth:`size`, or if no
        window of length T exists.
        """
        where = "ReplayTable.sample"
        count = _checks.positive_int(count, "count", where)
        t_len = _checks.positive_int(rollout_length, "rollout_length", where)
        k = 1 if num_batches is None else _checks.positive_int(num_batches, "num_batches", where)
        with self._lock:
            n = self._size
            if count * t_len > n:
                raise ValueError(
                    f"{where}: asked for {count} rollouts of length {t_len} ({count * t_len} "
                    f"transitions), but the table holds only {n} transitions"
                )
            starts, weights = self._sampler.draw(self._rng, count, k, t_len, self, where)
            if t_len == 1:
                flat = last = starts
            else:
                idx = self._chain(starts, t_len)  # (k*count, T)
                flat, last = idx.reshape(-1), (idx[:, -1] if n_step else idx.reshape(-1))
            # ndarray.take(axis=0) gathers rows several times faster than fancy indexing (fresh arrays too)
            terminated = self._terminated.take(last).astype(np.float32).reshape(-1, 1)
            out = {
                "observation": {key: v.take(flat, axis=0) for key, v in self._obs.items()},
                "next_observation": {key: v.take(last, axis=0) for key, v in self._next_obs.items()},
                "actions": self._actions.take(flat, axis=0),
                "rewards": self._rewards.take(flat).reshape(-1, 1),
                "masks": 1.0 - terminated,
                "terminated": terminated,
                "truncated": self._truncated.take(last).astype(np.float32).reshape(-1, 1),
            }
            if weights is not None:
                out.update(weights=weights, indices=starts.astype(np.int32))
        return out if num_batches is None else _split_leading(out, k)

    def update_priorities(self, indices: Any, td_errors: Any) -> None:
        """Set the priorities of rows ``indices`` (N,) from ``td_errors`` (N,) (a prioritized sampler's
        ``|td| + eps``). ``indices`` are the ``indices`` of a sample; a row overwritten since then gets the
        priority meant for the transition it held (docs/decisions/0009). Raises TypeError if the sampler
        has no priorities, ValueError on shapes, rows outside the live rows or non-finite TD errors."""
        where = "ReplayTable.update_priorities"
        if not isinstance(self._sampler, PrioritizedSampler):
            raise TypeError(f"{where}: expected a table with a PrioritizedSampler, got {type(self._sampler).__name__}")
        rows = np.asarray(indices).reshape(-1)
        td = np.asarray(td_errors, np.float64).reshape(-1)
        if rows.dtype.kind not in "iu" or rows.shape != td.shape:
            raise ValueError(f"{where}: expected integer indices and td_errors of one shape (N,), got "
                             f"{rows.dtype} {np.shape(indices)} and {np.shape(td_errors)}")
        _checks.finite(td, "td_errors", where)
        with self._lock:
            if rows.size and (rows.min() < 0 or rows.max() >= self._size):
                raise ValueError(f"{where}: expected indices of live rows in [0, {self._size}), "
                                 f"got {int(rows.min())}..{int(rows.max())}")
            self._sampler.update(rows.astype(np.int64), td)

    def num_windows(self, rollout_length: int = 1) -> int:
        """The exact number of valid rollout windows of length T (O(size * T))."""
        t_len = _checks.positive_int(rollout_length, "rollout_length", "ReplayTable.num_windows")
        with self._lock:
            return int(np.count_nonzero(self.window_ok(np.arange(self._size), t_len)))

    def get_episode(self, episode_id: int) -> dict[str, Any]:
        """The live part of one episode, rebuilt from its rows (fresh arrays).

        Returns ``{"agent_id": int, "steps": (L,), "observations": {key: (L+1, *shape)},
        "actions": (L, *action_shape), "rewards": (L,), "terminated": bool, "truncated": bool}`` where L
        is the number of its transitions still in the table; ``terminated``/``truncated`` say how its last
        stored step ended (both False while it runs). KeyError if no row of it is live.
        """
        with self._lock:
            rows = np.flatnonzero(self._row_episode[: self._size] == episode_id)
            if rows.size == 0:
                raise KeyError(
                    f"ReplayTable.get_episode: episode {episode_id} has no transition in the table; "
                    f"stored episodes: {sorted(self._episode_rows)}"
                )
            rows = rows[np.argsort(self._row_step[rows], kind="stable")]
            last = rows[-1]
            return {
                "agent_id": int(self._row_agent[last]),
                "steps": self._row_step[rows].copy(),
                "observations": {
                    k: np.concatenate([self._obs[k][rows], self._next_obs[k][last][None]]) for k in self._obs
                },
                "actions": self._actions[rows],
                "rewards": self._rewards[rows],
                "terminated": bool(self._terminated[last]),
                "truncated": bool(self._truncated[last]),
            }

    # ---- for samplers (called with the lock held) ----------------------------------------------
    def window_ok(self, rows: np.ndarray, t_len: int) -> np.ndarray:
        """(len(rows),) bool: whether a window of t_len transitions starts at each row (lock held)."""
        ok = np.ones(rows.shape, bool)
        cur = rows
        for _ in range(t_len - 1):
            nxt = self._next_row[cur]
            ok &= nxt >= 0
            cur = np.where(ok, nxt, cur)
        return ok

    def row_episodes(self) -> np.ndarray:
        """(size,) int64: the episode of each live row, a view (for samplers, lock held)."""
        return self._row_episode[: self._size]

    def no_window_error(self, t_len: int, where: str) -> ValueError:
        """The error of a sample that finds no window of length t_len (lock held)."""
        longest = max(self._episode_rows.values(), default=0)
        return ValueError(
            f"{where}: expected at least one window of rollout_length={t_len} consecutive transitions "
            f"of one episode, got none: the longest stored episode stretch has {longest} transitions "
            f"({self._size} transitions, {len(self._episode_rows)} episodes stored); expected a rollout_length "
            f"no longer than the episodes"
        )

    def _chain(self, starts: np.ndarray, t_len: int) -> np.ndarray:
        """(count, T) rows of the windows starting at ``starts`` (all assumed valid)."""
        idx = np.empty((starts.shape[0], t_len), np.int64)
        idx[:, 0] = starts
        for j in range(1, t_len):
            idx[:, j] = self._next_row[idx[:, j - 1]]
        return idx


def _split_leading(data: dict[str, Any], k: int) -> dict[str, Any]:
    """Give every array a leading axis k (rows are rollout-major, so batch j holds rollouts
    j*count .. (j+1)*count - 1)."""
    return {
        key: _split_leading(v, k) if isinstance(v, dict) else v.reshape(k, v.shape[0] // k, *v.shape[1:])
        for key, v in data.items()
    }
