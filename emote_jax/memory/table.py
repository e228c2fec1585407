"""A replay table: a NumPy ring buffer of transitions, linked into episodes, sampled in rollout windows.

Layout (one row = one transition, all columns preallocated with ``capacity`` rows)::

    observation[k]       (C, *obs_shape[k])   obs_t
    next_observation[k]  (C, *obs_shape[k])   obs_{t+1}
    actions              (C, *action_shape)   a_t
    rewards              (C,) float32         r_t (the reward of a_t)
    terminated/truncated (C,) bool            row is the last step of an episode that ended so
    next_row             (C,) int64           row of step t+1 of the same episode, -1 if none yet
    episode/step/agent   (C,) int64           bookkeeping (which episode, which t, which agent)

Why this layout: a row is written the moment ``obs_{t+1}`` arrives, so data is sampleable as soon as it
exists (running episodes included) and agents may interleave freely. Storing ``next_observation`` per
row costs twice the observation memory of an "L+1 observations per episode" layout, but makes every row
self-contained: no row ever has to be pinned for a running episode, a T=1 sample is one gather, and
ejection is a plain ring overwrite. The ``L+1`` observations of an episode are still all there
(:meth:`ReplayTable.get_episode` rebuilds them).

Ejection is FIFO by transition: a write overwrites the oldest rows. An episode that loses its first
steps keeps the rest (windows that would start in the ejected prefix no longer exist). A running
episode whose latest row is overwritten continues unharmed: its next step starts a new linked stretch.
Since ``next_row`` only ever points at newer rows, a live row never points at an ejected one.

Sampling draws rollout windows (``T`` consecutive transitions of one episode) with replacement, as its
:class:`~emote_jax.memory.samplers.Sampler` says: uniform over all valid windows by default (rows drawn
uniformly from the live rows, kept if ``T - 1`` ``next_row`` hops exist; after a few rounds with too few
hits all windows are enumerated), or prioritized, or coverage-based (docs/decisions/0009).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from emote_jax.memory import _checks
from emote_jax.memory._state import ObservationSpec, copy_json, normalise_shape, normalise_spec, rng_from_state
from emote_jax.memory.samplers import LiveRows, PrioritizedSampler, Sampler, UniformSampler


class ReplayTable:
    """A thread-safe ring buffer of ``capacity`` transitions, grouped into episodes per agent.

    Args:
        capacity: the maximum number of transitions kept (rows of the ring).
        observation_spec: ``{key: (shape, dtype)}`` of one unbatched observation.
        action_shape: shape of one unbatched action, e.g. ``(2,)`` (``()`` for a scalar action).
        action_dtype: dtype of the action column.
        seed: seed of the sampling RNG (``None`` for a fresh, nondeterministic one).
        sampler: how windows are drawn (:mod:`emote_jax.memory.samplers`); default
            :class:`~emote_jax.memory.samplers.UniformSampler`. A sampler instance serves one table.

    Writers normally go through :class:`~emote_jax.memory.proxy.MemoryProxy`; the low-level write is
    :meth:`add_transitions`. A :class:`threading.Lock` guards every write and every sample, so a
    collector thread may write while the training loop samples.
    """

    def __init__(
        self,
        capacity: int,
        observation_spec: ObservationSpec,
        action_shape: tuple[int, ...],
        action_dtype: Any = np.float32,
        seed: int | None = 0,
        sampler: Sampler | None = None,
    ):
        where = "ReplayTable"
        self._capacity = _checks.positive_int(capacity, "capacity", where)
        self._obs_spec = normalise_spec(observation_spec, where)
        self._action_shape = normalise_shape(action_shape, "action_shape", where)
        self._action_dtype = np.dtype(action_dtype)
        c = self._capacity

        self._obs = {k: np.zeros((c, *s), d) for k, (s, d) in self._obs_spec.items()}
        self._next_obs = {k: np.zeros((c, *s), d) for k, (s, d) in self._obs_spec.items()}
        self._actions = np.zeros((c, *self._action_shape), self._action_dtype)
        self._rewards = np.zeros(c, np.float32)
        self._terminated = np.zeros(c, bool)
        self._truncated = np.zeros(c, bool)
        self._next_row = np.full(c, -1, np.int64)
        self._row_episode = np.full(c, -1, np.int64)
        self._row_step = np.full(c, -1, np.int64)
        self._row_agent = np.full(c, -1, np.int64)

        self._head = 0  # next row to write
        self._size = 0  # live rows are exactly [0, size): the ring fills from 0 and never shrinks
        self._tips: dict[int, int] = {}  # running episode -> its latest live row
        self._episode_rows: dict[int, int] = {}  # episode -> number of live rows
        self._next_episode_id = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._sampler: Sampler = UniformSampler() if sampler is None else sampler
        if not isinstance(self._sampler, Sampler):
            raise TypeError(f"{where}: expected sampler to be a Sampler (emote_jax.memory.samplers), "
                            f"got {type(sampler).__name__}")
        self._sampler.bind(c)

    # ---- description -----------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """The maximum number of transitions kept."""
        return self._capacity

    @property
    def observation_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{key: (shape, dtype)}`` of one unbatched observation."""
        return dict(self._obs_spec)

    @property
    def action_shape(self) -> tuple[int, ...]:
        return self._action_shape

    @property
    def action_dtype(self) -> np.dtype:
        return self._action_dtype

    def size(self) -> int:
        """The number of sampleable transitions (<= capacity)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def sampler(self) -> Sampler:
        """The sampling strategy (its methods are called under the table's lock)."""
        return self._sampler

    def full(self) -> bool:
        """Whether the ring is full, so that every further write ejects the oldest transitions."""
        return self._size == self._capacity

    @property
    def num_episodes(self) -> int:
        """The number of episodes (running or ended) with at least one transition in the table."""
        with self._lock:
            return len(self._episode_rows)

    def episode_ids(self) -> list[int]:
        """Ids of the episodes with at least one transition in the table, ascending."""
        with self._lock:
            return sorted(self._episode_rows)

    def __repr__(self) -> str:
        return (
            f"ReplayTable(capacity={self._capacity}, size={self._size}, "
            f"episodes={len(self._episode_rows)}, observation_spec={self._obs_spec}, "
            f"action_shape={self._action_shape}, action_dtype={self._action_dtype})"
        )

    # ---- writing ---------------------------------------------------------------------------------
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

    # ---- reading ---------------------------------------------------------------------------------
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

    # ---- state export / import -------------------------------------------------------------------
    def column_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """``{column name: (per-row shape, dtype)}`` of every column :meth:`state_dict` exports.

        Names: ``observation/<key>``, ``next_observation/<key>``, ``actions``, ``rewards``, ``terminated``,
        ``truncated``, ``next_row``, ``episode``, ``step``, ``agent``.
        """
        spec: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        for k, (shape, dtype) in self._obs_spec.items():
            spec[f"observation/{k}"] = (shape, dtype)
        for k, (shape, dtype) in self._obs_spec.items():
            spec[f"next_observation/{k}"] = (shape, dtype)
        spec["actions"] = (self._action_shape, self._action_dtype)
        spec["rewards"] = ((), np.dtype(np.float32))
        for name in ("terminated", "truncated"):
            spec[name] = ((), np.dtype(bool))
        for name in ("next_row", "episode", "step", "agent"):
            spec[name] = ((), np.dtype(np.int64))
        return spec

    def _columns(self) -> dict[str, np.ndarray]:
        cols = {f"observation/{k}": v for k, v in self._obs.items()}
        cols.update({f"next_observation/{k}": v for k, v in self._next_obs.items()})
        cols.update(actions=self._actions, rewards=self._rewards, terminated=self._terminated,
                    truncated=self._truncated, next_row=self._next_row, episode=self._row_episode,
                    step=self._row_step, agent=self._row_agent)
        return cols

    def state_dict(self) -> dict[str, Any]:
        """A consistent snapshot (fresh arrays) from which :meth:`load_state_dict` rebuilds this table exactly.

        Returns::

            capacity, size, head, next_episode_id   ints
            observation_spec   {key: (shape, dtype)}, action_shape, action_dtype
            columns            {name: (size, *row_shape)} for every name of :meth:`column_spec` (live rows only)
            tips               (M, 2) int64: (episode id, latest row) of each running episode
            rng_state          the sampler's ``bit_generator.state`` (a JSON-serialisable dict)
            sampler            the sampler's ``state_dict`` ({"kind", "scalars", "arrays"})
        """
        with self._lock:
            n = self._size
            return {
                "capacity": self._capacity,
                "size": n,
                "head": self._head,
                "next_episode_id": self._next_episode_id,
                "observation_spec": self.observation_spec,
                "action_shape": self._action_shape,
                "action_dtype": self._action_dtype,
                "columns": {name: col[:n].copy() for name, col in self._columns().items()},
                "tips": np.array(sorted(self._tips.items()), np.int64).reshape(-1, 2),
                "rng_state": copy_json(self._rng.bit_generator.state),
                "sampler": self._sampler.state_dict(n),
            }

    def load_state_dict(
        self, state: Mapping[str, Any], where: str = "ReplayTable.load_state_dict", *, check_only: bool = False
    ) -> None:
        """Replace the table's content with a :meth:`state_dict` snapshot (of a table with the same layout).

        Everything is checked first (capacity, observation spec, action shape/dtype, every column's
        presence, dtype and shape, the ring position and the episode links); on any problem a
        ValueError/TypeError names it and the table is unchanged. ``check_only`` stops after the checks.
        """
        try:
            capacity, size, head, next_eid = (int(state[k]) for k in ("capacity", "size", "head", "next_episode_id"))
            columns, tips, rng_state = state["columns"], np.asarray(state["tips"]), state["rng_state"]
            obs_spec = normalise_spec(state["observation_spec"], where)
            action_shape = normalise_shape(state["action_shape"], "action_shape", where)
            action_dtype = np.dtype(state["action_dtype"])
        except KeyError as e:
            raise ValueError(f"{where}: expected a table state with the entry {e.args[0]!r}, it is missing") from None
        if capacity != self._capacity:
            raise ValueError(f"{where}: expected a table of capacity {self._capacity}, got one of capacity {capacity}")
        if obs_spec != self._obs_spec:
            raise ValueError(f"{where}: expected observation_spec {self._obs_spec}, got {obs_spec}")
        if action_shape != self._action_shape or action_dtype != self._action_dtype:
            raise ValueError(
                f"{where}: expected actions {self._action_dtype}{list(self._action_shape)}, "
                f"got {action_dtype}{list(action_shape)}"
            )
        if not 0 <= size <= capacity:
            raise ValueError(f"{where}: expected 0 <= size <= capacity={capacity}, got size {size}")
        if (size < capacity and head != size) or not 0 <= head < capacity:
            raise ValueError(
                f"{where}: expected the ring position head == size ({size}) until the ring is full, and "
                f"0 <= head < {capacity}; got head {head}"
            )
        spec = self.column_spec()
        if not isinstance(columns, Mapping) or set(columns) != set(spec):
            got = set(columns) if isinstance(columns, Mapping) else set()
            raise ValueError(
                f"{where}: expected the columns {sorted(spec)}; missing {sorted(set(spec) - got)}, "
                f"unexpected {sorted(got - set(spec))}"
            )
        cols: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in spec.items():
            arr = columns[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise TypeError(f"{where}: column {name!r}: expected dtype {dtype}, got {got}")
            if arr.shape != (size, *shape):
                raise ValueError(f"{where}: column {name!r}: expected shape {(size, *shape)}, got {arr.shape}")
            cols[name] = arr
        nxt, eps, steps = cols["next_row"], cols["episode"], cols["step"]
        rows = np.arange(size)
        if np.any((nxt < -1) | (nxt >= size) | ((nxt >= 0) & (nxt == rows))):
            raise ValueError(f"{where}: column 'next_row': expected -1 or another live row in [0, {size}), got others")
        if np.any(steps < 0):
            raise ValueError(f"{where}: column 'step': expected steps >= 0, got {int(steps.min())}")
        if tips.ndim != 2 or tips.shape[1:] != (2,) or tips.dtype.kind not in "iu":
            raise ValueError(f"{where}: expected tips as ints of shape (M, 2), got {tips.dtype} {tips.shape}")
        tip_map = {int(e): int(r) for e, r in tips.tolist()}
        for eid, row in tip_map.items():
            if not (0 <= row < size and eps[row] == eid and nxt[row] == -1
                    and not cols["terminated"][row] and not cols["truncated"][row]):
                raise ValueError(f"{where}: tip of episode {eid} at row {row} is not the open end of that episode")
        if len(tip_map) != len(tips):
            raise ValueError(f"{where}: expected one tip per running episode, got duplicate episode ids")
        rng = rng_from_state(rng_state, where)
        ids, counts = np.unique(eps, return_counts=True)
        apply_sampler = self._sampler.load_state_dict(state.get("sampler"), LiveRows(size, head, eps), where)
        if check_only:
            return

        with self._lock:
            for name, col in self._columns().items():  # the preallocated arrays keep their identity
                col[:size] = cols[name]
                col[size:] = -1 if col.dtype == np.int64 else 0
            self._head, self._size, self._next_episode_id = head, size, next_eid
            self._tips = tip_map
            self._episode_rows = dict(zip(ids.tolist(), counts.tolist()))
            self._rng = rng
            apply_sampler()

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
