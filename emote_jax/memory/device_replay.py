"""A replay buffer whose arrays live in the trainer's state: written and sampled inside the compiled step.

The host :class:`~emote_jax.memory.table.ReplayTable` in device form, for the device collector: a ring of
``capacity`` rows, each row one vector step of ``num_envs`` envs (time-major, ``(capacity, num_envs, ...)``),
so the transitions of one env are consecutive rows of one column. Every transition keeps its own
``next_obs`` (the true last observation of a truncated episode, not the autoreset's first one) and its
``terminated`` and ``truncated`` flags apart.

A window of ``T`` transitions ending at row ``e`` of env ``j`` is valid when all ``T`` belong to one
episode and are still in the ring: ``ep_step[e, j] >= T - 1`` (the transition's index in its episode,
written with it) and the row ``e - T + 1`` has not been overwritten since (``age(e) <= capacity - T``,
with ``age`` 0 for the newest row). :func:`sample` draws valid windows uniformly, with replacement, and
returns them in :meth:`ReplayTable.sample`'s n-step layout, so the losses cannot tell the two apart.

All functions are pure and jit-friendly (static shapes; ``count`` and ``T`` static). Split over devices
(``--shard-envs``), each array but ``pos`` and ``size`` is sharded along its env axis, the second
(:func:`partition_specs`); the functions do not change: the compiled step follows the layout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

Buffer = dict[str, jax.Array]
#: The buffer's counters: one value for all envs (every other array is ``(capacity, num_envs, ...)``).
COUNTERS = ("pos", "size")


def init(capacity: int, num_envs: int, obs_dim: int, action_dim: int, action_dtype: Any = jnp.float32) -> Buffer:
    """An empty buffer of ``capacity`` rows of ``num_envs`` transitions (``action_dtype`` int32 for the
    indices of a Discrete action space, stored as ``(..., 1)``)."""
    if capacity < 1 or num_envs < 1:
        raise ValueError(f"device replay: expected capacity >= 1 and num_envs >= 1, got {capacity} and {num_envs}")
    c, n = capacity, num_envs
    return {
        "obs": jnp.zeros((c, n, obs_dim), jnp.float32),
        "next_obs": jnp.zeros((c, n, obs_dim), jnp.float32),
        "actions": jnp.zeros((c, n, action_dim), action_dtype),
        "rewards": jnp.zeros((c, n), jnp.float32),
        "terminated": jnp.zeros((c, n), bool),
        "truncated": jnp.zeros((c, n), bool),
        "ep_step": jnp.zeros((c, n), jnp.int32),
        "pos": jnp.zeros((), jnp.int32),  # the next row to write
        "size": jnp.zeros((), jnp.int32),  # rows written, at most capacity
    }


def partition_specs(buf: Buffer, axis: str) -> dict[str, PartitionSpec]:
    """Each array's ``PartitionSpec`` with its env axis (the second, ``num_envs``) split over the mesh axis
    ``axis``; the counters (:data:`COUNTERS`) whole on every device."""
    return {k: PartitionSpec() if k in COUNTERS else PartitionSpec(None, axis) for k in buf}


def add(buf: Buffer, obs: jax.Array, actions: jax.Array, rewards: jax.Array, next_obs: jax.Array,
        terminated: jax.Array, truncated: jax.Array, ep_step: jax.Array) -> Buffer:
    """``buf`` with one vector step written at row ``pos``: ``obs``/``next_obs`` (N, obs_dim), ``actions``
    (N, A), ``rewards``/``terminated``/``truncated``/``ep_step`` (N,)."""
    capacity = buf["rewards"].shape[0]
    pos = buf["pos"]
    row = {"obs": obs, "next_obs": next_obs, "actions": actions, "rewards": rewards, "terminated": terminated,
           "truncated": truncated, "ep_step": ep_step}
    new = {k: jax.lax.dynamic_update_index_in_dim(buf[k], v.astype(buf[k].dtype), pos, 0) for k, v in row.items()}
    return {**new, "pos": (pos + 1) % capacity, "size": jnp.minimum(buf["size"] + 1, capacity)}


def valid_window_ends(buf: Buffer, rollout_length: int) -> jax.Array:
    """``(capacity, num_envs)`` bool: where a window of ``rollout_length`` transitions may end."""
    capacity = buf["rewards"].shape[0]
    age = (buf["pos"] - 1 - jnp.arange(capacity)) % capacity  # 0: the newest row
    in_ring = (age < buf["size"]) & (age <= capacity - rollout_length)
    return in_ring[:, None] & (buf["ep_step"] >= rollout_length - 1)


def sample(buf: Buffer, key: jax.Array, count: int, rollout_length: int = 1) -> dict[str, Any]:
    """``count`` valid windows of ``rollout_length`` transitions, uniformly with replacement, in the
    n-step layout of :meth:`ReplayTable.sample` (rollout-major: rollout ``i`` is rows ``i*T .. i*T+T-1``)::

        observation       {"obs": (count*T, obs_dim)}
        next_observation  {"obs": (count, obs_dim)}    after the window's last step
        actions           (count*T, A)
        rewards           (count*T, 1)
        masks             (count, 1)   0.0 iff the window's last transition terminated the episode
        terminated        (count, 1)
        truncated         (count, 1)

    With ``rollout_length == 1`` every written row is valid and the draw is two ``randint``\\ s; otherwise
    it draws the i-th valid window end through a cumulative sum (O(capacity * num_envs) per call). A buffer with
    no valid window yet gives rows of zeros (the collector's warm-up makes sure there are windows).
    """
    capacity, n = buf["rewards"].shape
    t = rollout_length
    if t == 1:
        k_row, k_env = jax.random.split(key)
        age = jax.random.randint(k_row, (count,), 0, jnp.maximum(buf["size"], 1))
        end = (buf["pos"] - 1 - age) % capacity
        env = jax.random.randint(k_env, (count,), 0, n)
    else:
        cum = jnp.cumsum(valid_window_ends(buf, t).reshape(-1).astype(jnp.int32))  # (capacity * num_envs,)
        u = jax.random.randint(key, (count,), 0, jnp.maximum(cum[-1], 1))
        flat = jnp.minimum(jnp.searchsorted(cum, u, side="right"), cum.shape[0] - 1)  # the (u+1)-th valid end
        end, env = flat // n, flat % n
    rows = (end[:, None] - jnp.arange(t - 1, -1, -1)[None, :]) % capacity  # (count, T), oldest first
    envs = jnp.broadcast_to(env[:, None], rows.shape)
    r, e = rows.reshape(-1), envs.reshape(-1)
    terminated = _read(buf["terminated"], end, env).astype(jnp.float32)[:, None]
    return {
        "observation": {"obs": _read(buf["obs"], r, e)},
        "next_observation": {"obs": _read(buf["next_obs"], end, env)},
        "actions": _read(buf["actions"], r, e),
        "rewards": _read(buf["rewards"], r, e)[:, None],
        "masks": 1.0 - terminated,
        "terminated": terminated,
        "truncated": _read(buf["truncated"], end, env).astype(jnp.float32)[:, None],
    }


def _read(array: jax.Array, rows: jax.Array, envs: jax.Array) -> jax.Array:
    """``array[rows, envs]`` (rows and envs (M,); ``array`` (capacity, num_envs, ...)) through a trailing unit
    axis. Read straight after :func:`add` wrote the array, a plain ``array[rows, envs]`` lets XLA fuse the
    write into the read, and it then copies the whole array, twice, to keep the write in place (the rewards
    of a million-row buffer: 5% of a SAC step on a CPU). The unit axis (a free reshape) keeps the two apart;
    ``tests/test_device_collector.py`` checks the compiled step for copies. Unlike flattening the first two
    axes, it keeps the env axis, so a buffer split over devices is not gathered."""
    return array[..., None][rows, envs][..., 0]


def transitions(buf: Buffer) -> int:
    """How many transitions the buffer holds (host: reads ``size``)."""
    return int(buf["size"]) * int(buf["rewards"].shape[1])
