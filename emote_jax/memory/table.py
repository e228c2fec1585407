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

The table is one class in four parts: :mod:`~emote_jax.memory._table_layout` declares the storage above,
:mod:`~emote_jax.memory._table_write` writes and links rows, :mod:`~emote_jax.memory._table_read` samples and
reads them, :mod:`~emote_jax.memory._table_snapshot` exports and loads the whole content; this module puts
them together with the constructor and the description of the table.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from emote_jax.memory import _checks
from emote_jax.memory._state import ObservationSpec, normalise_shape, normalise_spec
from emote_jax.memory._table_read import TableReading
from emote_jax.memory._table_snapshot import TableSnapshot
from emote_jax.memory._table_write import TableWriting
from emote_jax.memory.samplers import Sampler, UniformSampler

__all__ = ["ReplayTable"]


class ReplayTable(TableWriting, TableReading, TableSnapshot):
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
