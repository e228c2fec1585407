"""Collectors that step a gymnasium vector environment with a JAX policy and write into a replay memory.

Data flow: ``env -> collector -> MemoryProxy -> table``; policy parameters come back from the training
state (``ctx.state[params_slot]["params"]``).

Agent ids. Every episode of every sub-env is one agent id (as in the reference's vector wrapper). At each
vector step the collector hands the memory, for each live agent, the observation it acted on (INITIAL for
the first step of an episode, RUNNING with the reward of the previous action otherwise) together with the
action. When a sub-env's episode ends the old id is closed with TERMINAL (``terminated``: a true end, the
Q target must not bootstrap) or INTERRUPTED (``truncated`` and not terminated: a time limit, the target
does bootstrap), carrying the final observation and the last reward, and the next episode starts under a
fresh id with INITIAL. A transition therefore never joins a final observation to the first observation of
the next episode.

Gymnasium 1.x autoreset (``env.metadata["autoreset_mode"]``):

* ``NEXT_STEP`` (gymnasium's default): a done step returns the final observation; the following vector
  step resets that sub-env, ignores its action and returns the reset observation with reward 0. That
  step is not a transition: the collector stores nothing for it and starts the new id on its observation.
* ``SAME_STEP``: a done step returns the reset observation and puts the final one in
  ``info["final_obs"]``; the old id is closed with the final observation, the new id starts at once.
* ``DISABLED``: the collector resets the done sub-envs itself (``env.reset(options={"reset_mask": ...})``)
  right after the done step.

A missing ``autoreset_mode`` is taken as ``NEXT_STEP`` (with a warning).

Units: a *vector step* is one ``env.step`` call (``num_envs`` sub-env steps); ``warmup_steps`` and
``bp_steps_per_env_step`` count vector steps. ``env_steps`` counts transitions (sub-env steps taken
with an action that the memory received), ``vector_steps`` counts ``env.step`` calls.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context, PyTree
from emote_jax.faults import shutdown_requested
from emote_jax.memory import AgentObservation, EpisodeState
from emote_jax.networks.host import HostPolicy

#: The array key under which a Box observation is stored.
OBS_KEY = "obs"

Policy = Callable[[PyTree, Any, jax.Array], jax.Array]


class NonFiniteObservationError(ValueError):
    """A sub-env returned an observation (or reward) that is NaN or infinite."""


class ObservationShapeError(ValueError):
    """The policy cannot take the env's observations (their shape does not match the network)."""


class PolicyOutputError(ValueError):
    """The policy returned actions of the wrong shape, or non-finite actions."""


def _stop_if_requested(where: str) -> None:
    """End a host loop with a clean shutdown once a SIGINT/SIGTERM asked training to stop."""
    signal = shutdown_requested()
    if signal is not None:
        raise TrainingShutdownException(f"{where}: stopped by {signal}")


# ---- spaces ------------------------------------------------------------------------------------------


def _check_action_space(space: gymnasium.Space) -> spaces.Box:
    if not isinstance(space, spaces.Box):
        raise TypeError(
            f"this collector needs a continuous Box action space (SAC's policy outputs actions in [-1, 1] "
            f"that are rescaled to the Box bounds); the environment's single action space is {space!r}"
        )
    if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
        raise ValueError(
            f"the Box action space needs finite bounds to rescale the policy's [-1, 1] actions; got "
            f"low={space.low}, high={space.high}"
        )
    return space


def _obs_keys(space: gymnasium.Space) -> dict[str, tuple[int, ...]]:
    """``key -> unbatched shape`` of the arrays stored for an observation space."""
    if isinstance(space, spaces.Box):
        return {OBS_KEY: tuple(space.shape)}
    if isinstance(space, spaces.Dict) and all(isinstance(s, spaces.Box) for s in space.spaces.values()):
        return {k: tuple(s.shape) for k, s in space.spaces.items()}
    raise TypeError(
        f"this collector needs a Box observation space or a Dict of Boxes; the environment's single "
        f"observation space is {space!r}"
    )


def memory_spec(env: gymnasium.vector.VectorEnv) -> tuple[dict[str, tuple[tuple[int, ...], type]], tuple[int, ...]]:
    """``(observation_spec, action_shape)`` for a ``ReplayTable`` that a collector over ``env`` fills.

    A Box observation space gives ``{"obs": (shape, np.float32)}``; a Dict of Boxes one entry per key.
    """
    keys = _obs_keys(env.single_observation_space)
    action_space = _check_action_space(env.single_action_space)
    return {k: (shape, np.float32) for k, shape in keys.items()}, tuple(action_space.shape)


# ---- the collector -----------------------------------------------------------------------------------


class GymCollector(HostCallback):
    """Steps a vector env with the current policy between compiled training calls.

    Args:
        env: a gymnasium ``VectorEnv`` with a Box action space (finite bounds) and a Box (or Dict of Box)
            observation space.
        policy: ``policy(params, obs, key) -> actions``; ``obs`` is ``(N, *obs_shape)`` float32 (a dict
            of such arrays for a Dict space), ``actions`` is ``(N, *action_shape)`` in ``[-1, 1]``.
            Compiled once with ``jax.jit``. Or a :class:`~emote_jax.networks.host.HostPolicy`, which
            acts with NumPy on a host copy of the parameters taken once per compiled call (no device
            round trip per step; its noise comes from the collector's NumPy generator).
        memory: a ``MemoryProxy`` (``add(observations, actions)``).
        params_slot: the state slot whose ``"params"`` the policy acts with.
        bp_steps_per_env_step: backprop steps per vector step; 10 means one vector step every 10th
            backprop step, 0.5 two vector steps per backprop step.
        warmup_steps: vector steps taken in ``begin_training``, before the first update.
        random_warmup: take the warm-up steps with uniform random actions instead of the policy.
        seed: seeds the env's reset (``env.reset(seed=seed)``: sub-env i gets ``seed + i``), the policy's
            PRNG key and the random warm-up actions.
        episode_history: how many completed episodes ``episode_returns``/``episode_lengths`` keep
            (and ``episode_env_steps``: the ``env_steps`` count when each ended).
        close_env: close ``env`` in ``end_training`` (off by default: the caller owns it).

    Actions are clipped to ``[-1, 1]``; that clipped action is what the memory stores, and it is rescaled
    linearly to the Box bounds for ``env.step``. Observations are stored as float32. When training ends,
    every episode still running is closed as INTERRUPTED with its last observation and reward.
    """

    def __init__(
        self,
        env: gymnasium.vector.VectorEnv,
        policy: Policy,
        memory: Any,
        params_slot: str = "policy",
        bp_steps_per_env_step: float = 1.0,
        warmup_steps: int = 0,
        *,
        random_warmup: bool = False,
        seed: int = 0,
        episode_history: int = 1000,
        close_env: bool = False,
        name: str = "collector",
        order: int = 0,
    ):
        super().__init__(name=name, order=order, cycle=1)
        if not isinstance(env, gymnasium.vector.VectorEnv):
            raise TypeError(
                f"env must be a gymnasium.vector.VectorEnv, got {type(env).__name__}; wrap a single env as "
                "gymnasium.vector.SyncVectorEnv([lambda: env])"
            )
        self.action_space = _check_action_space(env.single_action_space)
        self.obs_keys = _obs_keys(env.single_observation_space)
        self._dict_obs = isinstance(env.single_observation_space, spaces.Dict)
        if not (bp_steps_per_env_step > 0):
            raise ValueError(f"bp_steps_per_env_step must be > 0, got {bp_steps_per_env_step}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        mode = env.metadata.get("autoreset_mode")
        if mode is None:
            warnings.warn(
                f"{type(env).__name__} has no metadata['autoreset_mode']; assuming AutoresetMode.NEXT_STEP",
                stacklevel=2,
            )
            mode = AutoresetMode.NEXT_STEP
        self.autoreset_mode = mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)

        self.env = env
        self.num_envs = int(env.num_envs)
        self.memory = memory
        self.params_slot = params_slot
        self.env_steps_per_bp_step = 1 / Fraction(bp_steps_per_env_step).limit_denominator(10**6)
        self.warmup_steps = int(warmup_steps)
        self.random_warmup = random_warmup
        self.seed = seed
        self.close_env = close_env

        self._low = self.action_space.low.astype(np.float64)
        self._high = self.action_space.high.astype(np.float64)
        self._action_shape = tuple(self.action_space.shape)
        self._rng = np.random.default_rng(seed)
        self._key = jax.random.key(seed)
        self._warned_clip = False

        self._host_policy = policy if isinstance(policy, HostPolicy) else None
        self._host_params: Any = None
        self._host_params_of: Any = None  # the params object _host_params was copied from

        def act(params, obs, key):
            key, sub = jax.random.split(key)
            return policy(params, obs, sub), key

        self._act = None if self._host_policy is not None else jax.jit(act)

        self.episode_returns: deque[float] = deque(maxlen=episode_history)
        self.episode_lengths: deque[int] = deque(maxlen=episode_history)
        self.episode_env_steps: deque[int] = deque(maxlen=episode_history)
        self.episodes_completed = 0
        self.env_steps = 0
        self.vector_steps = 0
        self._cycles = 0
        self._vector_steps_in_training = 0
        self._started = False
        self._resume_pending = False  # set by load_host_state_dict: begin_training restarts episodes

    # ---- observation plumbing --------------------------------------------------------------------
    def _batch_to_dict(self, obs: Any) -> dict[str, np.ndarray]:
        """Batched env observation -> ``{key: (N, *shape) float32}`` (fresh arrays)."""
        raw = {k: obs[k] for k in self.obs_keys} if self._dict_obs else {OBS_KEY: obs}
        return {k: np.array(v, dtype=np.float32) for k, v in raw.items()}

    def _single_to_dict(self, obs: Any) -> dict[str, np.ndarray]:
        raw = {k: obs[k] for k in self.obs_keys} if self._dict_obs else {OBS_KEY: obs}
        return {k: np.array(v, dtype=np.float32) for k, v in raw.items()}

    def _policy_input(self, obs: dict[str, np.ndarray]) -> Any:
        return obs if self._dict_obs else obs[OBS_KEY]

    def _check_finite(self, obs: dict[str, np.ndarray], where: str, rows: Any = None) -> None:
        for k, v in obs.items():
            bad = ~np.isfinite(v.reshape(v.shape[0], -1)).all(axis=1)
            if rows is not None:
                bad &= rows
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise NonFiniteObservationError(
                    f"sub-env {i} returned a non-finite observation {k!r} at vector step {self.vector_steps} "
                    f"({where}): {v[i]}"
                )

    def _check_single_finite(self, obs: dict[str, np.ndarray], i: int, where: str) -> None:
        for k, v in obs.items():
            if not np.isfinite(v).all():
                raise NonFiniteObservationError(
                    f"sub-env {i} returned a non-finite observation {k!r} at vector step {self.vector_steps} "
                    f"({where}): {v}"
                )

    # ---- acting ----------------------------------------------------------------------------------
    def _host_actions(self, params: PyTree) -> np.ndarray:
        if params is not self._host_params_of:  # new params (a compiled call ran): one host copy
            self._host_params = self._host_policy.to_host(params)
            self._host_params_of = params
        return self._host_policy.act(self._host_params, self._policy_input(self._obs), self._rng)

    def _policy_actions(self, params: PyTree) -> np.ndarray:
        if self._host_policy is not None:
            actions = np.asarray(self._host_actions(params))
        else:
            out, self._key = self._act(params, self._policy_input(self._obs), self._key)
            actions = np.asarray(out)
        expected = (self.num_envs, *self._action_shape)
        if actions.shape != expected:
            raise PolicyOutputError(
                f"the policy returned actions of shape {actions.shape}, expected {expected} "
                f"(num_envs={self.num_envs}, action space shape {self._action_shape})"
            )
        if not np.isfinite(actions).all():
            raise PolicyOutputError(f"the policy returned non-finite actions at vector step {self.vector_steps}: {actions}")
        actions = actions.astype(np.float32)
        clipped = np.clip(actions, -1.0, 1.0)
        if not self._warned_clip and np.abs(clipped - actions).max() > 1e-5:
            self._warned_clip = True
            warnings.warn(
                f"{self.name}: the policy returned actions outside [-1, 1] (max |a| = {np.abs(actions).max():.3g}); "
                "they are clipped, and the clipped actions are stored",
                stacklevel=3,
            )
        return clipped

    def _random_actions(self) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, size=(self.num_envs, *self._action_shape)).astype(np.float32)

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        scaled = self._low + (actions.astype(np.float64) + 1.0) * 0.5 * (self._high - self._low)
        return scaled.astype(self.action_space.dtype)

    # ---- episodes --------------------------------------------------------------------------------
    def _start_agent(self, i: int, obs: dict[str, np.ndarray]) -> None:
        agent = self._next_agent
        self._next_agent += 1
        self._agents[i] = agent
        self._pending[i] = AgentObservation(EpisodeState.INITIAL, obs, None)
        self._ep_return[i] = 0.0
        self._ep_len[i] = 0

    def _row(self, obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return {k: v[i].copy() for k, v in obs.items()}

    def _reset(self, seed: int | None = None) -> None:
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self._obs = self._batch_to_dict(obs)
        self._check_finite(self._obs, "reset")
        self._agents: list[int | None] = [None] * self.num_envs
        self._pending: list[AgentObservation | None] = [None] * self.num_envs
        self._ep_return = np.zeros(self.num_envs, np.float64)
        self._ep_len = np.zeros(self.num_envs, np.int64)
        if not hasattr(self, "_next_agent"):
            self._next_agent = 0
        for i in range(self.num_envs):
            self._start_agent(i, self._row(self._obs, i))

    def _step(self, params: PyTree | None) -> None:
        """One vector step; ``params=None`` takes uniform random actions."""
        actions = self._random_actions() if params is None else self._policy_actions(params)
        live = [i for i in range(self.num_envs) if self._agents[i] is not None]
        if live:
            self.memory.add(
                {self._agents[i]: self._pending[i] for i in live},
                {self._agents[i]: actions[i] for i in live},
            )
            for i in live:  # consumed: the memory now waits for the reward of actions[i]
                self._pending[i] = None
        next_obs, rewards, terminated, truncated, info = self.env.step(self._env_actions(actions))
        self.vector_steps += 1
        next_obs = self._batch_to_dict(next_obs)
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        self._check_finite(next_obs, "env.step")
        if not np.isfinite(rewards).all():
            i = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise NonFiniteObservationError(
                f"sub-env {i} returned a non-finite reward {rewards[i]} at vector step {self.vector_steps}"
            )

        closes: dict[int, AgentObservation] = {}
        to_reset = np.zeros(self.num_envs, dtype=bool)
        for i in range(self.num_envs):
            agent = self._agents[i]
            if agent is None:  # NEXT_STEP: this step was the reset of sub-env i, not a transition
                self._start_agent(i, self._row(next_obs, i))
                continue
            reward = float(rewards[i])
            self.env_steps += 1
            self._ep_return[i] += reward
            self._ep_len[i] += 1
            if not (terminated[i] or truncated[i]):
                self._pending[i] = AgentObservation(EpisodeState.RUNNING, self._row(next_obs, i), reward)
                continue
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                if "final_obs" not in info or not info.get("_final_obs", np.ones(self.num_envs, bool))[i]:
                    raise RuntimeError(
                        f"sub-env {i} ended an episode at vector step {self.vector_steps} but the SAME_STEP "
                        "autoreset env gave no info['final_obs'] for it"
                    )
                final = self._single_to_dict(info["final_obs"][i])
                self._check_single_finite(final, i, "final observation")
            else:
                final = self._row(next_obs, i)
            state = EpisodeState.TERMINAL if terminated[i] else EpisodeState.INTERRUPTED
            closes[agent] = AgentObservation(state, final, reward)
            self.episode_returns.append(float(self._ep_return[i]))
            self.episode_lengths.append(int(self._ep_len[i]))
            self.episode_env_steps.append(self.env_steps)
            self.episodes_completed += 1
            self._agents[i] = None
            self._pending[i] = None
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                self._start_agent(i, self._row(next_obs, i))
            elif self.autoreset_mode == AutoresetMode.DISABLED:
                to_reset[i] = True
        if closes:
            self.memory.add(closes, {})
        if to_reset.any():
            reset_obs, _ = self.env.reset(options={"reset_mask": to_reset})
            reset_obs = self._batch_to_dict(reset_obs)
            self._check_finite(reset_obs, "reset of done sub-envs", rows=to_reset)
            for i in np.flatnonzero(to_reset):
                for k in next_obs:
                    next_obs[k][i] = reset_obs[k][i]
                self._start_agent(int(i), self._row(reset_obs, int(i)))
        self._obs = next_obs

    def _flush(self) -> None:
        """Close every running episode as INTERRUPTED (with its last observation and reward).

        After a step that failed half-way, an agent may have handed its action to the memory without
        getting its reward back: that episode is ended with ``memory.interrupt`` (when the memory has
        it), which marks its last stored transition as truncated.
        """
        if not self._started:
            return
        self._started = False
        closes, dangling = {}, []
        for i in range(self.num_envs):
            agent, p = self._agents[i], self._pending[i]
            if agent is not None and p is None:
                dangling.append(agent)
            elif agent is not None and p.episode_state == EpisodeState.RUNNING:
                closes[agent] = AgentObservation(EpisodeState.INTERRUPTED, p.array_data, p.reward)
            self._agents[i] = None
            self._pending[i] = None
        if closes:
            self.memory.add(closes, {})
        if dangling and hasattr(self.memory, "interrupt"):
            self.memory.interrupt(dangling)

    # ---- hooks -----------------------------------------------------------------------------------
    def _params(self, ctx: Context) -> PyTree:
        slot = ctx.slot(self.params_slot)
        if not isinstance(slot, Mapping) or "params" not in slot:
            keys = sorted(slot) if isinstance(slot, Mapping) else type(slot).__name__
            raise KeyError(f"{self.name}: state slot {self.params_slot!r} has no 'params' (it holds {keys})")
        return slot["params"]

    def _start(self, ctx: Context) -> None:
        """Reset, validate the policy on the first observation, and take the warm-up steps.

        After :meth:`load_host_state_dict` (a resumed run) it restarts the episodes instead (see
        :meth:`restart_episodes`) with the seed :meth:`resume_seed` derives from the step, and takes no
        warm-up steps.
        """
        params = self._params(ctx)
        resumed, self._resume_pending = self._resume_pending, False
        self._flush()  # a second begin_training without end_training, or a resumed run: close the old episodes
        self._reset(self.resume_seed(self.seed, ctx.bp_step - 1) if resumed else None)
        self._started = True
        self._check_policy_accepts(params)
        key, rng_state = self._key, self._rng.bit_generator.state
        self._policy_actions(params)  # validates the output shape and compiles the policy
        self._key = key
        self._rng.bit_generator.state = rng_state  # the check draws nothing from the run's noise
        for _ in range(0 if resumed else self.warmup_steps):
            _stop_if_requested(f"{self.name}: warm-up")
            self._step(None if self.random_warmup else self._params(ctx))

    # ---- warm-up fill ----------------------------------------------------------------------------
    #: Whether this collector steps on a background thread (then :meth:`fill` does not block).
    collects_in_background: bool = False

    def fill(self, ctx: Context, ready: Callable[[], bool], max_vector_steps: int) -> int:
        """Take more warm-up steps until ``ready()``: for a memory that ``warmup_steps`` left short of a batch.

        Actions are random or the policy's, as ``random_warmup`` says. Returns the vector steps taken.
        A first SIGINT/SIGTERM ends it with :class:`~emote_jax.callback.TrainingShutdownException`;
        ``max_vector_steps`` steps without ``ready()`` raise a RuntimeError (the memory is not filling).
        """
        if not self._started:
            raise RuntimeError(f"{self.name}: fill called before begin_training (the env is not reset)")
        taken = 0
        while not ready():
            if taken >= max_vector_steps:
                raise RuntimeError(
                    f"{self.name}: after {taken} extra warm-up vector steps the memory still cannot give a batch; "
                    "expected it to fill. Is the memory storing what the collector hands it?"
                )
            _stop_if_requested(f"{self.name}: warm-up")
            self._step(None if self.random_warmup else self._params(ctx))
            taken += 1
        return taken

    def raise_if_failed(self) -> None:
        """Re-raise an error of the collection thread (a no-op here: this collector has none)."""

    def _check_policy_accepts(self, params: PyTree) -> None:
        """Trace (not compile) the policy on the env's observations; a clear error if it cannot take them."""
        obs = self._policy_input(self._obs)
        try:
            if self._host_policy is not None:
                self._host_policy.act(self._host_policy.to_host(params), obs, np.random.default_rng(0))
            else:
                jax.eval_shape(self._act, params, obs, self._key)
        except Exception as e:
            shapes = jax.tree.map(lambda x: tuple(x.shape), obs)
            raise ObservationShapeError(
                f"{self.name}: the policy cannot act on the env's observations (batched shapes {shapes}, "
                f"num_envs={self.num_envs}); does the network's input size match the observation space "
                f"{self.env.single_observation_space}? {type(e).__name__}: {e}"
            ) from e

    def begin_training(self, ctx: Context) -> None:
        if not self._resume_pending:  # a resumed run keeps its restored cycle counters
            self._cycles = 0
            self._vector_steps_in_training = 0
        self._start(ctx)

    def end_cycle(self, ctx: Context) -> None:
        if not self._started:
            raise RuntimeError(f"{self.name}: end_cycle called before begin_training (the env is not reset)")
        self._cycles += 1
        due = int(self._cycles * self.env_steps_per_bp_step) - self._vector_steps_in_training
        for _ in range(due):
            self._step(self._params(ctx))
            self._vector_steps_in_training += 1

    def end_training(self, ctx: Context) -> None:
        try:
            self._flush()
        finally:
            if self.close_env:
                self.env.close()


    # ---- exact resume ------------------------------------------------------------------------------
    @staticmethod
    def resume_seed(seed: int, bp_step: int) -> int:
        """The env reset seed of a run resumed after ``bp_step`` completed backprop steps.

        Derived from ``(seed, bp_step)`` with ``np.random.SeedSequence``, so resuming at different steps
        gives different episodes. A straight run calls ``restart_episodes(resume_seed(seed, N))`` after
        step N to reproduce exactly a run checkpointed at N and resumed.
        """
        return int(np.random.SeedSequence([int(seed), int(bp_step)]).generate_state(1)[0])

    def restart_episodes(self, seed: int) -> None:
        """Close every running episode as INTERRUPTED (its last transition is kept) and reset every
        sub-env with ``seed``; new episodes start under fresh agent ids.

        This is what a resumed run does before its first step (an env's state cannot be checkpointed in
        general); docs/decisions/0004 explains why.
        """
        if not self._started:
            raise RuntimeError(f"{self.name}: restart_episodes called before begin_training")
        with self.checkpoint_lock():
            self._flush()
            self._reset(seed)
            self._started = True

    def checkpoint_lock(self) -> Any:
        """A context manager held while a checkpoint snapshots this collector and the memory."""
        return contextlib.nullcontext()

    def host_state_dict(self) -> dict[str, Any]:
        """Everything host-side that exact resume needs (NumPy arrays and JSON-able values).

        The sampling RNG and policy key, the step, episode and cycle counters, the episode bookkeeping of
        every sub-env (agent ids, the pending observation and reward, running return and length), the
        memory proxy's running episodes and the recent episode statistics. Not the env's own state.
        """
        pending = [
            None if p is None else {"state": int(p.episode_state), "reward": p.reward,
                                    "observation": {k: v.copy() for k, v in p.array_data.items()}}
            for p in getattr(self, "_pending", [None] * self.num_envs)
        ]
        agents = getattr(self, "_agents", [None] * self.num_envs)
        return {
            "version": 1,
            "num_envs": self.num_envs,
            "rng_state": self._rng.bit_generator.state,
            "key_data": np.asarray(jax.random.key_data(self._key)),
            "key_impl": str(jax.random.key_impl(self._key)),
            "counters": {"env_steps": self.env_steps, "vector_steps": self.vector_steps,
                         "episodes_completed": self.episodes_completed, "cycles": self._cycles,
                         "vector_steps_in_training": self._vector_steps_in_training,
                         "next_agent": getattr(self, "_next_agent", 0)},
            "started": self._started,
            "agents": [None if a is None else int(a) for a in agents],
            "pending": pending,
            "ep_return": np.asarray(getattr(self, "_ep_return", np.zeros(self.num_envs)), np.float64),
            "ep_len": np.asarray(getattr(self, "_ep_len", np.zeros(self.num_envs)), np.int64),
            "episode_returns": list(self.episode_returns),
            "episode_lengths": list(self.episode_lengths),
            "episode_env_steps": list(getattr(self, "episode_env_steps", [])),
            "memory": self.memory.state_dict() if hasattr(self.memory, "state_dict") else None,
        }

    def load_host_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`host_state_dict`; the next ``begin_training`` then restarts the episodes.

        Checked first (version, number of sub-envs, observation keys and shapes); unchanged on error.
        """
        where = f"{self.name}.load_host_state_dict"
        if state.get("version") != 1:
            raise ValueError(f"{where}: expected collector state version 1, got {state.get('version')!r}")
        if state.get("num_envs") != self.num_envs:
            raise ValueError(f"{where}: expected a state of {self.num_envs} sub-envs, got {state.get('num_envs')!r}")
        try:
            rng = np.random.Generator(getattr(np.random, self._rng.bit_generator.__class__.__name__)())
            rng.bit_generator.state = state["rng_state"]
            key = jax.random.wrap_key_data(jnp.asarray(state["key_data"]), impl=state["key_impl"])
            c = {k: int(v) for k, v in state["counters"].items()}
            agents = [None if a is None else int(a) for a in state["agents"]]
            pending = []
            for p in state["pending"]:
                if p is None:
                    pending.append(None)
                    continue
                obs = {k: np.asarray(v, np.float32) for k, v in p["observation"].items()}
                if set(obs) != set(self.obs_keys) or any(obs[k].shape != self.obs_keys[k] for k in obs):
                    raise ValueError(f"expected pending observations {self.obs_keys}, got "
                                     f"{ {k: v.shape for k, v in obs.items()} }")
                pending.append(AgentObservation(EpisodeState(p["state"]), obs, p["reward"]))
            ep_return = np.asarray(state["ep_return"], np.float64)
            ep_len = np.asarray(state["ep_len"], np.int64)
            if len(agents) != self.num_envs or len(pending) != self.num_envs or ep_return.shape != (self.num_envs,):
                raise ValueError(f"expected per-sub-env lists of length {self.num_envs}")
            memory_state = state.get("memory")
            if memory_state is not None and hasattr(self.memory, "load_state_dict"):
                self.memory.load_state_dict(memory_state)  # checks, then replaces (the last fallible step)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the saved collector state does not fit this collector: "
                             f"{type(e).__name__}: {e}") from e
        self._rng, self._key = rng, key
        self.env_steps, self.vector_steps = c["env_steps"], c["vector_steps"]
        self.episodes_completed, self._cycles = c["episodes_completed"], c["cycles"]
        self._vector_steps_in_training, self._next_agent = c["vector_steps_in_training"], c["next_agent"]
        self._started = bool(state["started"])
        self._agents, self._pending, self._ep_return, self._ep_len = agents, pending, ep_return, ep_len
        for dq, k in ((self.episode_returns, "episode_returns"), (self.episode_lengths, "episode_lengths"),
                      (getattr(self, "episode_env_steps", None), "episode_env_steps")):
            if dq is not None:
                dq.clear()
                dq.extend(state.get(k, []))
        self._resume_pending = True


class ThreadedGymCollector(GymCollector):
    """Like :class:`GymCollector`, but collects continuously on a background thread.

    ``begin_training`` resets, validates and takes the warm-up steps on the training thread (so the
    memory holds them before the first batch), then starts the thread. Every ``param_sync_interval``
    backprop steps ``end_cycle`` hands the thread a copy of the policy parameters
    (``jax.tree.map(jnp.copy, params)``, waited on), so the thread never reads buffers that the next
    compiled call donates.

    ``max_env_steps_per_bp_step`` (None: no limit) throttles the thread: after the warm-up it takes at
    most ``max_env_steps_per_bp_step * (b + 1)`` vector steps while the trainer has finished ``b``
    backprop steps, so it cannot race arbitrarily far ahead of training (nor behind: it is a cap, not a
    rate).

    An exception on the thread (from the env, the policy or the memory) stops collection; it is re-raised
    from the next host hook on the training thread (``begin_cycle``, ``end_cycle`` or ``end_training``),
    so training stops with it. ``end_training`` stops and joins the thread (waiting at most
    ``join_timeout`` seconds), closes running episodes as INTERRUPTED, and closes the env only if
    ``close_env``.

    The memory is written from the thread while the loader samples on the training thread: the table
    must tolerate that (guard it with a lock).
    """

    def __init__(
        self,
        env: gymnasium.vector.VectorEnv,
        policy: Policy,
        memory: Any,
        params_slot: str = "policy",
        warmup_steps: int = 0,
        *,
        param_sync_interval: int = 1,
        max_env_steps_per_bp_step: float | None = None,
        random_warmup: bool = False,
        seed: int = 0,
        episode_history: int = 1000,
        close_env: bool = False,
        join_timeout: float = 60.0,
        name: str = "collector",
        order: int = 0,
    ):
        super().__init__(
            env,
            policy,
            memory,
            params_slot=params_slot,
            warmup_steps=warmup_steps,
            random_warmup=random_warmup,
            seed=seed,
            episode_history=episode_history,
            close_env=close_env,
            name=name,
            order=order,
        )
        if param_sync_interval < 1:
            raise ValueError(f"param_sync_interval must be >= 1, got {param_sync_interval}")
        if max_env_steps_per_bp_step is not None and not (max_env_steps_per_bp_step > 0):
            raise ValueError(f"max_env_steps_per_bp_step must be None or > 0, got {max_env_steps_per_bp_step}")
        self.param_sync_interval = int(param_sync_interval)
        self.max_env_steps_per_bp_step = max_env_steps_per_bp_step
        self.join_timeout = join_timeout
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread_params: PyTree = None
        self._bp_done = 0
        self._error: BaseException | None = None
        self._error_raised = False
        self._step_lock = threading.Lock()
        self._fill_ready: Callable[[], bool] | None = None

    # ---- thread ----------------------------------------------------------------------------------
    def _may_step(self) -> bool:
        if self.max_env_steps_per_bp_step is None:
            return True
        return self._vector_steps_in_training < self.max_env_steps_per_bp_step * (self._bp_done + 1)

    def _next_step(self) -> str | None:
        """``"fill"`` (a warm-up step past the cap, not counted against it), ``"train"``, or None (wait)."""
        if self._fill_ready is not None:
            if not self._fill_ready():
                return "fill"
            self._fill_ready = None
        return "train" if self._may_step() else None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._stop.is_set() and (kind := self._next_step()) is None:
                        self._cond.wait(timeout=0.1)
                    if self._stop.is_set():
                        break
                    params = self._thread_params
                with self._step_lock:  # a checkpoint snapshots between two steps, never during one
                    if kind == "fill":
                        self._step(None if self.random_warmup else params)
                    else:
                        self._step(params)
                        self._vector_steps_in_training += 1
        except BaseException as e:  # handed to the training thread
            self._error = e

    collects_in_background = True

    def fill(self, ctx: Context, ready: Callable[[], bool], max_vector_steps: int) -> int:
        """Let the thread take warm-up steps past its cap until ``ready()``, and return at once (0).

        The caller waits (:class:`~emote_jax.memory.MemoryWarmup` does, watching for a shutdown and for
        an error of the thread); the fill steps do not count against ``max_env_steps_per_bp_step``.
        """
        del ctx, max_vector_steps
        with self._cond:
            self._fill_ready = ready
            self._cond.notify_all()
        return 0

    def checkpoint_lock(self) -> Any:
        """Held while a checkpoint snapshots this collector and the memory: the thread waits between steps."""
        return self._step_lock

    def _copy_params(self, ctx: Context) -> PyTree:
        if self._host_policy is not None:  # a host policy acts on NumPy arrays: copy them to the host here
            return jax.tree.map(lambda x: np.array(x, copy=True), self._params(ctx))  # a copy, not a view
        return jax.block_until_ready(jax.tree.map(jnp.copy, self._params(ctx)))

    def raise_if_failed(self) -> None:
        """Re-raise (once) the error that stopped the collection thread, if any."""
        if self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error

    # ---- hooks -----------------------------------------------------------------------------------
    def begin_training(self, ctx: Context) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: begin_training called while the collector thread is running")
        self._stop.clear()
        self._error = None
        self._error_raised = False
        self._bp_done = 0
        self._vector_steps_in_training = 0
        self._fill_ready = None
        self._start(ctx)
        self._thread_params = self._copy_params(ctx)
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-thread", daemon=True)
        self._thread.start()

    def begin_cycle(self, ctx: Context) -> None:
        self.raise_if_failed()

    def end_cycle(self, ctx: Context) -> None:
        self.raise_if_failed()
        sync = (self._bp_done + 1) % self.param_sync_interval == 0
        params = self._copy_params(ctx) if sync else None
        with self._cond:  # the thread sees the new step budget and the new params together
            self._bp_done += 1
            if sync:
                self._thread_params = params
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop and join the collection thread (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.join_timeout)
            if self._thread.is_alive():
                warnings.warn(
                    f"{self.name}: the collector thread did not stop within {self.join_timeout} s "
                    "(a sub-env step is hanging?); leaving it running as a daemon",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._thread = None
                self._started = False
                return
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the collection thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def end_training(self, ctx: Context) -> None:
        try:
            self.stop()
            if self._thread is None:  # joined: the episode bookkeeping is ours again
                try:
                    self._flush()
                except Exception:
                    if self._error is None:
                        raise  # otherwise the thread's error is the one to report
            self.raise_if_failed()
        finally:
            if self.close_env:
                self.env.close()
