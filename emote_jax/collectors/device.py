"""Collection inside the compiled step: a batch of JAX-native envs stepped by a device callback.

:class:`DeviceCollector` is a :class:`~emote_jax.callback.Callback`. Its slot holds the envs' states, their
current observations, the episode bookkeeping, a PRNG key and the replay buffer
(:mod:`emote_jax.memory.device_replay`). In ``begin_batch`` it acts with the policy parameters of the
state, steps the envs (``jax.vmap``), stores the transitions, autoresets finished envs, and samples the
step's batch into ``ctx.batch``, in the layout the host loader gives, so the losses run unchanged; the
loader is then a no-op (:class:`NoBatches`) and a compiled call of K steps does K full
act-store-sample-update steps with no host work between them.

The time limit is the collector's: an episode that reaches ``env.max_episode_steps`` is stored as
*truncated* (its Q target bootstraps from the true last observation); only the env's own termination
sets ``terminated``.

:class:`DeviceCollectorMonitor` is its host side: after each compiled call it reads the slot's counters
and the ring of finished episodes, and offers what a :class:`~emote_jax.collectors.GymCollector` offers
the host (``env_steps``, ``episode_returns``, ...), so progress, episode metrics, the env-step budget and
periodic evaluation work as for the host path.

Over several devices (``--shard-envs D``) :meth:`DeviceCollector.shardings` splits the slot's env axis
over a one-axis mesh named :data:`ENV_AXIS`; the code of the step does not change (the compiled step
follows the layout of its inputs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from emote_jax.callback import Callback, HostCallback
from emote_jax.context import COUNTER_PREFIX, Context, PyTree
from emote_jax.envs.jax_env import JaxEnv
from emote_jax.memory import device_replay

#: ``(params, obs (N, obs_dim), key) -> actions (N, A)`` in [-1, 1].
Act = Callable[[PyTree, jax.Array, jax.Array], jax.Array]

#: Finished episodes the slot remembers (returns and lengths) between two reads of the host monitor.
EPISODE_RING = 1024
#: The name of the mesh axis a run's envs are split over (``--shard-envs``).
ENV_AXIS = "envs"
#: The slot's entries whose every leaf has the envs on its leading axis (N).
PER_ENV = ("env_state", "obs", "ep_step", "ep_return")


class DeviceCollector(Callback):
    """Steps ``num_envs`` copies of ``env`` inside the compiled step and samples each step's batch.

    Args:
        env: the JAX-native env.
        act: the stochastic policy, ``(params, obs (N, obs_dim), key) -> actions (N, A)`` in [-1, 1].
        num_envs: N, envs stepped together (one vector step = N env steps).
        capacity: replay rows (each row one vector step of N transitions): ``memory_size // N``.
        batch_count: windows per batch; with ``rollout_length`` T the batch has ``batch_count * T`` rows.
        rollout_length: T, transitions per window (n-step targets).
        params_slot: the slot whose ``"params"`` the policy acts with.
        warmup_steps: env steps taken before the first backprop step, in ``begin_training`` (one compiled
            loop), at least enough for one batch and for T steps of every env.
        random_warmup: warm up with uniform random actions (else with the initial policy).
        vector_steps_per_bp_step: E >= 1 vector steps before every backprop step, or
        bp_steps_per_vector_step: M >= 1, one vector step every M backprop steps (one of the two is 1).
        seed: the collector's PRNG seed (acting, env noise, resets).
        name: the slot's name.
        data_group: the batch's key in ``ctx.batch``.
        num_discrete: for a Discrete action space, its size n: ``act`` then returns greedy indices (N,),
            stored as int32 ``(N, 1)``, and each env explores with probability ``epsilon``.
        epsilon: with ``num_discrete``: a float, or an optax schedule of the env steps taken so far
            (DQN's linear decay), evaluated inside the step.
    """

    def __init__(self, env: JaxEnv, act: Act, *, num_envs: int, capacity: int, batch_count: int,
                 rollout_length: int = 1, params_slot: str = "policy", warmup_steps: int = 0,
                 random_warmup: bool = True, vector_steps_per_bp_step: int = 1, bp_steps_per_vector_step: int = 1,
                 seed: int = 0, name: str = "collector", data_group: str = "default",
                 num_discrete: int | None = None, epsilon: float | Callable[[jax.Array], jax.Array] = 0.0):
        super().__init__(name=name, order=-100)  # before every loss and target: they read the batch
        for what, v in (("num_envs", num_envs), ("capacity", capacity), ("batch_count", batch_count),
                        ("rollout_length", rollout_length), ("vector_steps_per_bp_step", vector_steps_per_bp_step),
                        ("bp_steps_per_vector_step", bp_steps_per_vector_step)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"DeviceCollector: expected {what} an int >= 1, got {v!r}")
        if vector_steps_per_bp_step > 1 and bp_steps_per_vector_step > 1:
            raise ValueError("DeviceCollector: expected vector_steps_per_bp_step or bp_steps_per_vector_step to be 1, "
                             f"got {vector_steps_per_bp_step} and {bp_steps_per_vector_step}")
        if capacity < rollout_length:
            raise ValueError(f"DeviceCollector: expected capacity (rows of {num_envs} envs) >= rollout_length "
                             f"{rollout_length}, got {capacity}")
        if env.max_episode_steps < rollout_length:
            raise ValueError(f"DeviceCollector: {env.id}'s episodes last at most {env.max_episode_steps} steps, "
                             f"shorter than rollout_length {rollout_length}: no window would fit")
        self.env, self.act, self.num_envs, self.capacity = env, act, num_envs, capacity
        self.batch_count, self.rollout_length, self.params_slot = batch_count, rollout_length, params_slot
        self.random_warmup, self.seed, self.data_group = bool(random_warmup), int(seed), data_group
        self.vector_steps_per_bp_step, self.bp_steps_per_vector_step = vector_steps_per_bp_step, bp_steps_per_vector_step
        # enough rows for one batch and for a window in every env's first episode
        self.warmup_vector_steps = max(-(-int(warmup_steps) // num_envs), -(-batch_count * rollout_length // num_envs),
                                       rollout_length)
        self.obs_dim = int(np.prod(env.observation_space.shape))
        self.num_discrete = num_discrete
        self.epsilon = epsilon if callable(epsilon) else (lambda _steps, e=float(epsilon): jnp.asarray(e, jnp.float32))
        if num_discrete is None:
            self.action_dim = int(np.prod(env.action_space.shape))
            self._low = jnp.asarray(env.action_space.low, jnp.float32)
            self._high = jnp.asarray(env.action_space.high, jnp.float32)
        else:
            self.action_dim = 1
        self._warmup = jax.jit(self._warmup_loop)

    # ---- the slot ----------------------------------------------------------------------------------------
    def init_state(self, key: jax.Array) -> PyTree:
        del key  # the collector's stream comes from its own seed, so the envs do not depend on the callbacks
        key, k_reset = jax.random.split(jax.random.key(self.seed))
        env_state, obs = jax.vmap(self.env.reset)(jax.random.split(k_reset, self.num_envs))
        n = self.num_envs
        return {  # the key as its raw uint32 data: checkpoints store arrays of numbers
            "env_state": env_state, "obs": obs, "key": jax.random.key_data(key),
            "ep_step": jnp.zeros((n,), jnp.int32), "ep_return": jnp.zeros((n,), jnp.float32),
            "vector_steps": jnp.zeros((), jnp.int32), "episodes": jnp.zeros((), jnp.int32),
            "ring_returns": jnp.zeros((EPISODE_RING,), jnp.float32),
            "ring_lengths": jnp.zeros((EPISODE_RING,), jnp.int32),
            "replay": device_replay.init(self.capacity, n, self.obs_dim, self.action_dim,
                                         jnp.float32 if self.num_discrete is None else jnp.int32),
        }

    def partition_specs(self, slot: PyTree) -> PyTree:
        """A ``PartitionSpec`` per leaf of this collector's ``slot`` that splits its N envs over the mesh axis
        :data:`ENV_AXIS`: the leading axis of every leaf of :data:`PER_ENV`, and the env axis of the replay
        buffer's arrays (:func:`~emote_jax.memory.device_replay.partition_specs`). The key, the counters and
        the episode ring are whole (``PartitionSpec()``)."""
        out = {k: jax.tree.map(lambda _, s=PartitionSpec(ENV_AXIS) if k in PER_ENV else PartitionSpec(): s, v)
               for k, v in slot.items()}
        out["replay"] = device_replay.partition_specs(slot["replay"], ENV_AXIS)
        return out

    def shardings(self, slot: PyTree, mesh: Mesh) -> PyTree:
        """:meth:`partition_specs` as ``NamedSharding``\\ s over ``mesh`` (which has the axis :data:`ENV_AXIS`)."""
        return jax.tree.map(lambda spec: NamedSharding(mesh, spec), self.partition_specs(slot),
                            is_leaf=lambda x: isinstance(x, PartitionSpec))

    # ---- one vector step ---------------------------------------------------------------------------------
    def vector_step(self, slot: PyTree, params: PyTree, random: bool = False) -> PyTree:
        """``slot`` after one step of the N envs: act, step, store, record finished episodes, autoreset."""
        n = self.num_envs
        key, k_act, k_step, k_reset = jax.random.split(jax.random.wrap_key_data(slot["key"]), 4)
        obs = slot["obs"]
        if self.num_discrete is None:
            actions = self._box_actions(params, obs, k_act, random)
            env_actions = (self._low + (actions + 1.0) * 0.5 * (self._high - self._low)).reshape(
                (n, *self.env.action_space.shape))
        else:
            actions = self._discrete_actions(params, obs, k_act, random, slot["vector_steps"] * n)
            env_actions = actions[:, 0]
        env_state, next_obs, reward, terminated = jax.vmap(self.env.step)(
            slot["env_state"], env_actions, jax.random.split(k_step, n))
        ep_len = slot["ep_step"] + 1
        truncated = (ep_len >= self.env.max_episode_steps) & ~terminated
        done = terminated | truncated
        replay = device_replay.add(slot["replay"], obs, actions, reward, next_obs, terminated, truncated,
                                   slot["ep_step"])
        ep_return = slot["ep_return"] + reward
        # finished episodes go into the ring, in env order, at the episode count
        at = jnp.where(done, (slot["episodes"] + jnp.cumsum(done) - 1) % EPISODE_RING, EPISODE_RING)
        ring_returns = slot["ring_returns"].at[at].set(ep_return, mode="drop")
        ring_lengths = slot["ring_lengths"].at[at].set(ep_len, mode="drop")
        reset_state, reset_obs = jax.vmap(self.env.reset)(jax.random.split(k_reset, n))

        def pick(fresh: jax.Array, old: jax.Array) -> jax.Array:
            return jnp.where(done.reshape((n,) + (1,) * (old.ndim - 1)), fresh, old)

        return {
            **slot, "key": jax.random.key_data(key), "env_state": jax.tree.map(pick, reset_state, env_state),
            "obs": pick(reset_obs, next_obs), "ep_step": jnp.where(done, 0, ep_len),
            "ep_return": jnp.where(done, 0.0, ep_return), "vector_steps": slot["vector_steps"] + 1,
            "episodes": slot["episodes"] + done.sum(dtype=jnp.int32), "ring_returns": ring_returns,
            "ring_lengths": ring_lengths, "replay": replay,
        }

    def _box_actions(self, params: PyTree, obs: jax.Array, key: jax.Array, random: bool) -> jax.Array:
        """(N, A) in [-1, 1]: the policy's sample, or uniform (``random``)."""
        if random:
            return jax.random.uniform(key, (self.num_envs, self.action_dim), jnp.float32, -1.0, 1.0)
        return jnp.clip(self.act(params, obs, key).reshape(self.num_envs, self.action_dim), -1.0, 1.0)

    def _discrete_actions(self, params: PyTree, obs: jax.Array, key: jax.Array, random: bool,
                          env_steps: jax.Array) -> jax.Array:
        """(N, 1) int32: the greedy index, or with probability epsilon(env_steps) (always, ``random``) a
        uniform one, per env."""
        n = self.num_envs
        k_uniform, k_explore = jax.random.split(key)
        uniform = jax.random.randint(k_uniform, (n,), 0, self.num_discrete, jnp.int32)
        if random:
            return uniform[:, None]
        greedy = self.act(params, obs, key).reshape(n).astype(jnp.int32)
        explore = jax.random.uniform(k_explore, (n,)) < self.epsilon(env_steps)
        return jnp.where(explore, uniform, greedy)[:, None]

    # ---- warm-up (host hook, one compiled loop) ----------------------------------------------------------
    def _warmup_loop(self, slot: PyTree, params: PyTree) -> PyTree:
        def body(_: Any, s: PyTree) -> PyTree:
            return self.vector_step(s, params, random=self.random_warmup)

        return jax.lax.fori_loop(slot["vector_steps"], self.warmup_vector_steps, body, slot)

    def begin_training(self, ctx: Context) -> Context | None:
        slot = ctx.slot(self.name)
        if int(slot["vector_steps"]) >= self.warmup_vector_steps:  # a resumed run: warmed up already
            return None
        slot = self._warmup(slot, ctx.slot(self.params_slot)["params"])
        return ctx.with_slot(self.name, slot)

    # ---- each backprop step --------------------------------------------------------------------------------
    def begin_batch(self, ctx: Context) -> Context:
        slot = ctx.slot(self.name)
        params = ctx.slot(self.params_slot)["params"]
        if self.vector_steps_per_bp_step > 1:
            slot = jax.lax.fori_loop(0, self.vector_steps_per_bp_step, lambda _, s: self.vector_step(s, params), slot)
        elif self.bp_steps_per_vector_step > 1:
            due = (ctx.bp_step - 1) % self.bp_steps_per_vector_step == 0
            slot = jax.lax.cond(due, lambda s: self.vector_step(s, params), lambda s: s, slot)
        else:
            slot = self.vector_step(slot, params)
        key, k_sample = jax.random.split(jax.random.wrap_key_data(slot["key"]))
        batch = device_replay.sample(slot["replay"], k_sample, self.batch_count, self.rollout_length)
        ctx = ctx.with_slot(self.name, {**slot, "key": jax.random.key_data(key)})
        # the monitor's counters travel with the call's metrics: no device read of its own per call
        ctx = ctx.log_counters(**{self.counter_names[0]: slot["vector_steps"], self.counter_names[1]: slot["episodes"]})
        return ctx.replace(batch={**(ctx.batch or {}), self.data_group: batch})

    @property
    def counter_names(self) -> tuple[str, str]:
        """The names (without :data:`~emote_jax.context.COUNTER_PREFIX`) of the vector-step and episode
        counts this collector logs with :meth:`~emote_jax.context.Context.log_counters` every step."""
        return f"{self.name}/vector_steps", f"{self.name}/episodes"

    state_categories = {"replay": "other", "env_state": "other", "obs": "other", "key": "other", "ep_step": "other",
                        "ep_return": "other", "vector_steps": "other", "episodes": "other",
                        "ring_returns": "other", "ring_lengths": "other"}


class NoBatches:
    """The loader of a run whose batches come from a :class:`DeviceCollector`: empty batches forever."""

    def __iter__(self) -> Iterator[dict]:
        while True:
            yield {}


class DeviceCollectorMonitor(HostCallback):
    """The host side of a :class:`DeviceCollector`: counters and finished episodes, read after each call.

    Offers a :class:`~emote_jax.collectors.GymCollector`'s host interface: ``env_steps``, ``vector_steps``,
    ``episode_returns``/``episode_lengths`` (the last ``episode_history``) and ``episodes_completed``. If
    more than :data:`EPISODE_RING` episodes finish within one compiled call, the counts stay exact and
    only the newest ``EPISODE_RING`` reach the history.
    """

    def __init__(self, collector: DeviceCollector, episode_history: int = 1000, name: str | None = None):
        super().__init__(name=name or f"{collector.name}_monitor", cycle=1, order=-100)
        self.collector = collector
        self.num_envs = collector.num_envs
        self.env_steps = self.vector_steps = self.episodes_completed = 0
        self.episode_returns: deque[float] = deque(maxlen=episode_history)
        self.episode_lengths: deque[int] = deque(maxlen=episode_history)
        self._seen: Any = None

    def sync(self, state: dict[str, PyTree], counts: tuple[int, int] | None = None) -> None:
        """Read the counters and the episodes finished since the last read from the slot in ``state``;
        ``counts`` (vector steps, episodes), when given, are the counters already on the host, and the
        slot is read only for the episodes that finished."""
        slot = state[self.collector.name]
        if slot["vector_steps"] is self._seen:  # the K host steps of one call share one state
            return
        self._seen = slot["vector_steps"]
        vector_steps, episodes = counts if counts is not None else (int(slot["vector_steps"]), int(slot["episodes"]))
        new = min(episodes - self.episodes_completed, EPISODE_RING)
        if new > 0:
            at = np.arange(episodes - new, episodes) % EPISODE_RING
            self.episode_returns.extend(np.asarray(slot["ring_returns"])[at].astype(float).tolist())
            self.episode_lengths.extend(np.asarray(slot["ring_lengths"])[at].astype(int).tolist())
        self.episodes_completed, self.vector_steps = episodes, vector_steps
        self.env_steps = vector_steps * self.num_envs

    def begin_training(self, ctx: Context) -> None:
        self.sync(ctx.state)

    def end_cycle(self, ctx: Context) -> None:
        steps, episodes = (ctx.metrics.get(COUNTER_PREFIX + n) for n in self.collector.counter_names)
        counts = None if steps is None or episodes is None else (int(steps[-1]), int(episodes[-1]))
        self.sync(ctx.state, counts)
