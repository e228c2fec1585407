"""The writing side of a :class:`~emote_jax.memory.table.ReplayTable`: checking transitions, writing them
into the ring (overwriting the oldest rows when it is full), linking each row to its episode's previous
one, and ending a running episode as truncated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emote_jax.memory import _checks
from emote_jax.memory._table_layout import TableLayout


class TableWriting(TableLayout):
    """The write methods of :class:`~emote_jax.memory.table.ReplayTable` (see there for the layout)."""

    def new_episode_id(self) -> int:
        """A fresh episode id (0, 1, 2, ...), unique within this table."""
        with self._lock:
            eid = self._next_episode_id
            self._next_episode_id += 1
            return eid

    def add_transitions(
        self,
        *,
        agent_ids: Any,
        episode_ids: Any,
        steps: Any,
        observation: Mapping[str, Any],
        actions: Any,
        rewards: Any,
        next_observation: Mapping[str, Any],
        terminated: Any = None,
        truncated: Any = None,
    ) -> np.ndarray:
        """Write N transitions (one row each) and link each to the previous step of its episode.

        Args:
            agent_ids, episode_ids, steps: ints of shape (N,). ``steps[i]`` is t of the transition;
                consecutive writes of one episode must have consecutive steps.
            observation, next_observation: ``{key: (N, *obs_shape[key])}``; obs_t and obs_{t+1}.
            actions: (N, *action_shape), a_t.
            rewards: (N,), the reward of a_t.
            terminated: (N,) bool, the row is the last step of a truly terminated episode.
            truncated: (N,) bool, the row is the last step of a truncated/interrupted episode.

        Returns:
            the rows written, shape (N,).

        When the ring is full the oldest rows are overwritten (FIFO). Raises ValueError/TypeError on
        wrong keys, shapes or dtypes, non-finite values, N > capacity, or a step that does not follow
        the episode's previous one; nothing is written then.
        """
        where = "ReplayTable.add_transitions"
        eids = np.asarray(episode_ids)
        if eids.ndim != 1 or eids.dtype.kind not in "iu":
            raise ValueError(f"{where}: expected episode_ids to be ints of shape (N,), got {eids.dtype} {eids.shape}")
        n = len(eids)
        if n == 0:
            return np.zeros(0, np.int64)
        if n > self._capacity:
            raise ValueError(f"{where}: expected at most capacity={self._capacity} transitions per write, got {n}")
        agents = _checks.array_like(agent_ids, "agent_ids", (n,), np.dtype(np.int64), where)
        step_arr = _checks.array_like(steps, "steps", (n,), np.dtype(np.int64), where)
        if agents.dtype.kind not in "iu" or step_arr.dtype.kind not in "iu":
            raise TypeError(f"{where}: expected integer agent_ids and steps, got {agents.dtype} and {step_arr.dtype}")
        if np.any(step_arr < 0):
            raise ValueError(f"{where}: expected steps >= 0, got {step_arr.tolist()}")
        obs = self._check_obs(observation, "observation", n, where)
        next_obs = self._check_obs(next_observation, "next_observation", n, where)
        act = _checks.array_like(actions, "actions", (n, *self._action_shape), self._action_dtype, where)
        _checks.finite(act, "actions", where)
        rew = _checks.array_like(rewards, "rewards", (n,), np.dtype(np.float32), where)
        _checks.finite(rew, "rewards", where)
        term = self._check_flags(terminated, "terminated", n, where)
        trunc = self._check_flags(truncated, "truncated", n, where)
        if np.any(term & trunc):
            raise ValueError(
                f"{where}: a transition cannot be both terminated and truncated, got both at "
                f"index {np.flatnonzero(term & trunc).tolist()}"
            )
        return self._write(eids, agents, step_arr, obs, next_obs, act, rew, term, trunc, where)

    def _write(self, eids: np.ndarray, agents: Any, steps: Any, obs: Mapping[str, np.ndarray],
               next_obs: Mapping[str, np.ndarray], act: np.ndarray, rew: Any, term: np.ndarray,
               trunc: np.ndarray, where: str) -> np.ndarray:
        """Write N transitions that are already checked (the arguments of :meth:`add_transitions`, as
        arrays of the right shapes, castable dtypes and finite values; N <= capacity; no row both
        terminated and truncated). :class:`~emote_jax.memory.proxy.MemoryProxy` checks what it is given
        and writes through here, so a transition is validated once. The step continuity of each episode
        is still checked (under the lock), and nothing is written if it fails."""
        n = len(eids)
        ends = term | trunc
        with self._lock:
            self._check_continuity(eids, steps, ends, where)
            head = self._head
            if head + n <= self._capacity:  # no wrap: slices, cheaper than index arrays for a few rows
                at: Any = slice(head, head + n)
                written = np.arange(head, head + n, dtype=np.int64)
                if head < self._size:
                    self._forget_rows(np.arange(head, min(head + n, self._size)))
            else:
                at = (head + np.arange(n, dtype=np.int64)) % self._capacity
                written = at
                self._forget_rows(at[at < self._size])
            for k in self._obs_spec:
                self._obs[k][at] = obs[k]
                self._next_obs[k][at] = next_obs[k]
            self._actions[at] = act
            self._rewards[at] = rew
            self._terminated[at] = term
            self._truncated[at] = trunc
            self._next_row[at] = -1
            self._row_episode[at] = eids
            self._row_step[at] = steps
            self._row_agent[at] = agents
            self._link(eids, written, ends)
            self._head = int((head + n) % self._capacity)
            self._size = min(self._size + n, self._capacity)
            if self._sampler.tracks_rows:
                self._sampler.rows_written(written, eids)
        return written

    def truncate_episode(self, episode_id: int) -> bool:
        """Mark the latest stored step of a running episode as the end of a truncated episode.

        For an episode interrupted without a final observation (e.g. a collector stopping): its last
        stored transition keeps ``masks == 1`` and gets ``truncated == 1``. Returns False when the episode
        has no live row to mark (nothing stored yet, already ended, or ejected).
        """
        with self._lock:
            row = self._tips.pop(int(episode_id), None)
            if row is None:
                return False
            self._truncated[row] = True
            return True

    # ---- internals (called with the lock held) ---------------------------------------------------
    def _forget_rows(self, rows: np.ndarray) -> None:
        """Bookkeeping for live rows about to be overwritten (the oldest ones)."""
        if self._sampler.tracks_rows:
            self._sampler.rows_forgotten(rows, self._row_episode[rows])
        ids, counts = np.unique(self._row_episode[rows], return_counts=True)
        for eid, count in zip(ids.tolist(), counts.tolist()):  # per episode, not per row
            left = self._episode_rows[eid] - count
            if left:
                self._episode_rows[eid] = left
            else:
                del self._episode_rows[eid]
            tip = self._tips.get(eid)
            if tip is not None and np.any(rows == tip):
                del self._tips[eid]

    def _link(self, eids: np.ndarray, rows: np.ndarray, ends: np.ndarray) -> None:
        """Chain the rows just written to their episodes (``_next_row``, ``_tips``, ``_episode_rows``).

        Rows of one episode follow each other in write order; the first continues the episode's tip, a row
        that ends its episode links to nothing. Vectorised per episode: a Python step per episode of the
        write, not per row (a whole episode written at once costs one)."""
        order = np.argsort(eids, kind="stable")
        e, r, end = eids[order], rows[order], ends[order]
        same = e[1:] == e[:-1]
        link = same & ~end[:-1]
        self._next_row[r[:-1][link]] = r[1:][link]
        firsts = np.flatnonzero(np.r_[True, ~same])
        lasts = np.r_[firsts[1:] - 1, len(e) - 1]
        for eid, first, last, count in zip(e[firsts].tolist(), firsts.tolist(), lasts.tolist(),
                                           (lasts - firsts + 1).tolist()):
            prev = self._tips.get(eid)
            if prev is not None:
                self._next_row[prev] = r[first]
            if end[last]:
                self._tips.pop(eid, None)
            else:
                self._tips[eid] = int(r[last])
            self._episode_rows[eid] = self._episode_rows.get(eid, 0) + count

    def _check_continuity(self, eids: np.ndarray, steps: np.ndarray, ends: np.ndarray, where: str) -> None:
        """ValueError unless each write continues its episode at the step after the previous one."""
        order = np.argsort(eids, kind="stable")
        e, st, end = eids[order], steps[order], ends[order]
        same = e[1:] == e[:-1]
        ok = not np.any(same & ~end[:-1] & (st[1:] != st[:-1] + 1))
        if ok:
            for first in np.flatnonzero(np.r_[True, ~same]).tolist():  # each episode's first row: its tip
                tip = self._tips.get(int(e[first]))
                if tip is not None and int(st[first]) != int(self._row_step[tip]) + 1:
                    ok = False
                    break
        if not ok:
            self._name_discontinuity(eids, steps, ends, where)

    def _name_discontinuity(self, eids: np.ndarray, steps: np.ndarray, ends: np.ndarray, where: str) -> None:
        """Raise the ValueError for the first row (in write order) that does not continue its episode."""
        last_step: dict[int, int | None] = {}
        for i, (eid, step, end) in enumerate(zip(eids.tolist(), steps.tolist(), ends.tolist())):
            if eid in last_step:
                prev = last_step[eid]
            else:
                tip = self._tips.get(eid)
                prev = None if tip is None else int(self._row_step[tip])
            if prev is not None and step != prev + 1:
                raise ValueError(
                    f"{where}: episode {eid} (index {i}): expected step {prev + 1} after step {prev}, got {step}"
                )
            last_step[eid] = None if end else step

    def _check_obs(self, obs: Mapping[str, Any], name: str, n: int, where: str) -> dict[str, np.ndarray]:
        if not isinstance(obs, Mapping) or set(obs) != set(self._obs_spec):
            got = sorted(obs) if isinstance(obs, Mapping) else type(obs).__name__
            raise ValueError(f"{where}: expected {name} with keys {sorted(self._obs_spec)}, got {got}")
        out = {}
        for k, (shape, dtype) in self._obs_spec.items():
            out[k] = _checks.array_like(obs[k], f"{name}[{k!r}]", (n, *shape), dtype, where)
            _checks.finite(out[k], f"{name}[{k!r}]", where)
        return out

    @staticmethod
    def _check_flags(flags: Any, name: str, n: int, where: str) -> np.ndarray:
        if flags is None:
            return np.zeros(n, bool)
        arr = np.asarray(flags)
        if arr.shape != (n,) or arr.dtype != bool:
            raise ValueError(f"{where}: expected {name} of dtype bool and shape ({n},), got {arr.dtype} {arr.shape}")
        return arr
