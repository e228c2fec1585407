"""The snapshot side of a :class:`~emote_jax.memory.table.ReplayTable`: naming its columns, exporting a
consistent copy of its content (:meth:`~TableSnapshot.state_dict`) and loading one back, everything checked
before anything changes. Checkpoints and :mod:`emote_jax.memory.export` go through these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from emote_jax.memory._state import copy_json, normalise_shape, normalise_spec, rng_from_state
from emote_jax.memory._table_layout import TableLayout
from emote_jax.memory.samplers import LiveRows


class TableSnapshot(TableLayout):
    """The state export/import methods of :class:`~emote_jax.memory.table.ReplayTable`."""

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
