"""The storage of a :class:`~emote_jax.memory.table.ReplayTable`, declared once for the parts that share it.

:class:`TableLayout` names and types the attributes that ``ReplayTable.__init__`` allocates: the preallocated
columns (one row per transition; the layout is in :mod:`emote_jax.memory.table`), the ring position, the
episode bookkeeping, the sampling RNG, the lock and the sampler. The table's writing
(:mod:`~emote_jax.memory._table_write`), reading (:mod:`~emote_jax.memory._table_read`) and snapshot
(:mod:`~emote_jax.memory._table_snapshot`) parts build on it; none of them allocates anything.
"""

from __future__ import annotations

import threading

import numpy as np

from emote_jax.memory.samplers import Sampler


class TableLayout:
    """The attributes of a :class:`~emote_jax.memory.table.ReplayTable` (set by its ``__init__``)."""

    _capacity: int
    _obs_spec: dict[str, tuple[tuple[int, ...], np.dtype]]
    _action_shape: tuple[int, ...]
    _action_dtype: np.dtype

    # the columns, ``capacity`` rows each
    _obs: dict[str, np.ndarray]  # observation key -> (C, *shape): obs_t
    _next_obs: dict[str, np.ndarray]  # observation key -> (C, *shape): obs_{t+1}
    _actions: np.ndarray  # (C, *action_shape): a_t
    _rewards: np.ndarray  # (C,) float32: the reward of a_t
    _terminated: np.ndarray  # (C,) bool
    _truncated: np.ndarray  # (C,) bool
    _next_row: np.ndarray  # (C,) int64: row of step t+1 of the same episode, -1 if none yet
    _row_episode: np.ndarray  # (C,) int64
    _row_step: np.ndarray  # (C,) int64
    _row_agent: np.ndarray  # (C,) int64

    # the ring position and the episode bookkeeping
    _head: int  # next row to write
    _size: int  # live rows are exactly [0, size): the ring fills from 0 and never shrinks
    _tips: dict[int, int]  # running episode -> its latest live row
    _episode_rows: dict[int, int]  # episode -> number of live rows
    _next_episode_id: int

    _rng: np.random.Generator  # the sampling RNG
    _lock: threading.Lock  # guards every write and every sample
    _sampler: Sampler
