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
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any

import gymnasium
import jax
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context, PyTree
from emote_jax.faults import shutdown_requested
from emote_jax.memory import AgentObservation, EpisodeState
from emote_jax.collectors.acting import observation_shape_error
from emote_jax.collectors.actions import Actions, BoxActions
from emote_jax.collectors.episodes import EpisodeBook
from emote_jax.collectors.spaces import (
    OBS_KEY,
    NonFiniteObservationError,
    ObservationShapeError,
    PolicyOutputError,
    check_finite,
    check_single_finite,
    memory_spec,
    obs_dict,
    obs_dtypes,
)
from emote_jax.collectors.spaces import obs_keys as _obs_keys
from emote_jax.collectors.state import collector_state, load_collector_state, resume_seed
from emote_jax.networks.host import HostPolicy

__all__ = ["OBS_KEY", "GymCollector", "NonFiniteObservationError", "ObservationShapeError", "Policy",
           "PolicyOutputError", "memory_spec"]

Policy = Callable[[PyTree, Any, jax.Array], jax.Array]


def _stop_if_requested(where: str) -> None:
    """End a host loop with a clean shutdown once a SIGINT/SIGTERM asked training to stop."""
    signal = shutdown_requested()
    if signal is not None:
        raise TrainingShutdownException(f"{where}: stopped by {signal}")


# ---- the collector -----------------------------------------------------------------------------------


class GymCollector(HostCallback):
    """Steps a vector env with the current policy between compiled training calls.

    Args:
        env: a gymnasium ``VectorEnv`` with a Box (or Dict of Box) observation space, and an action space
            that ``actions`` handles.
        policy: ``policy(params, obs, key) -> actions``; ``obs`` is ``(N, *obs_shape)`` float32 (a dict
            of such arrays for a Dict space), ``actions`` is ``(N, *action_shape)`` as ``actions`` takes
            them (for a Box: in ``[-1, 1]``).
            Compiled once with ``jax.jit``. Or a :class:`~emote_jax.networks.host.HostPolicy`, which
            acts with NumPy on a host copy of the parameters taken once per compiled call (no device
            round trip per step; its noise comes from the collector's NumPy generator).
        memory: a ``MemoryProxy`` (``add(observations, actions)``).
        params_slot: the state slot whose ``"params"`` the policy acts with.
        bp_steps_per_env_step: backprop steps per vector step; 10 means one vector step every 10th
            backprop step, 0.5 two vector steps per backprop step.
        warmup_steps: vector steps taken in ``begin_training``, before the first update; once per
            collector (a second ``Trainer.train`` takes only what an interrupted warm-up left, and a
            resumed run none).
        random_warmup: take the warm-up steps with uniform random actions instead of the policy.
        seed: seeds the env's reset (``env.reset(seed=seed)``: sub-env i gets ``seed + i``), the policy's
            PRNG key and the random warm-up actions.
        episode_history: how many completed episodes ``episode_returns``/``episode_lengths`` keep
            (and ``episode_env_steps``: the ``env_steps`` count when each ended).
        close_env: close ``env`` in ``end_training`` (off by default: the caller owns it).
        actions: how the actions of ``env.single_action_space`` are checked, stored, explored and given
            to ``env.step`` (:mod:`emote_jax.collectors.actions`); None: :class:`BoxActions` (SAC's).

    Observations are stored as float32. When training ends, every episode still running is closed as
    INTERRUPTED with its last observation and reward.
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
        actions: Actions | None = None,
    ):
        super().__init__(name=name, order=order, cycle=1)
        if not isinstance(env, gymnasium.vector.VectorEnv):
            raise TypeError(
                f"env must be a gymnasium.vector.VectorEnv, got {type(env).__name__}; wrap a single env as "
                "gymnasium.vector.SyncVectorEnv([lambda: env])"
            )
        self.actions: Actions = BoxActions(env.single_action_space) if actions is None else actions
        if self.actions.space != env.single_action_space:
            raise ValueError(f"actions handles {self.actions.space!r}, not the env's {env.single_action_space!r}")
        self.action_space = self.actions.space
        self.obs_keys = _obs_keys(env.single_observation_space)
        self._dict_obs = isinstance(env.single_observation_space, spaces.Dict)
        self.obs_dtypes = obs_dtypes(env.single_observation_space)  # uint8 images stay uint8
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

        self._rng = np.random.default_rng(seed)
        self._key = jax.random.key(seed)

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
        self._warmup_taken = 0  # warm-up vector steps taken so far (a later train() does not repeat them)
        self._book = EpisodeBook.empty(self.num_envs)  # replaced on every reset (next_agent carries over)

    # ---- observation plumbing --------------------------------------------------------------------
    def _batch_to_dict(self, obs: Any) -> dict[str, np.ndarray]:
        """Batched env observation -> ``{key: (N, *shape)}`` float32 (uint8 images: uint8), fresh arrays."""
        return obs_dict(obs, self.obs_keys, self._dict_obs, self.obs_dtypes)

    def _policy_input(self, obs: dict[str, np.ndarray]) -> Any:
        return obs if self._dict_obs else obs[OBS_KEY]

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
        checked = self.actions.checked(actions, self.num_envs, self.vector_steps, self.name)
        return self.actions.explore(checked, self.env_steps, self._rng)

    # ---- episodes --------------------------------------------------------------------------------
    def _row(self, obs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        return {k: v[i].copy() for k, v in obs.items()}

    def _reset(self, seed: int | None = None) -> None:
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self._obs = self._batch_to_dict(obs)
        check_finite(self._obs, self.vector_steps, "reset")
        self._book = EpisodeBook.empty(self.num_envs, self._book.next_agent)
        for i in range(self.num_envs):
            self._book.start(i, self._row(self._obs, i))

    def _step(self, params: PyTree | None) -> None:
        """One vector step; ``params=None`` takes uniform random actions."""
        actions = self.actions.random(self._rng, self.num_envs) if params is None else self._policy_actions(params)
        book = self._book
        live = [i for i in range(self.num_envs) if book.agents[i] is not None]
        if live:
            self.memory.add(
                {book.agents[i]: book.pending[i] for i in live},
                {book.agents[i]: actions[i] for i in live},
            )
            for i in live:  # consumed: the memory now waits for the reward of actions[i]
                book.pending[i] = None
        next_obs, rewards, terminated, truncated, info = self.env.step(self.actions.to_env(actions))
        self.vector_steps += 1
        next_obs = self._batch_to_dict(next_obs)
        rewards = np.asarray(rewards, dtype=np.float64)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        check_finite(next_obs, self.vector_steps, "env.step")
        if not np.isfinite(rewards).all():
            i = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise NonFiniteObservationError(
                f"sub-env {i} returned a non-finite reward {rewards[i]} at vector step {self.vector_steps}"
            )

        closes: dict[int, AgentObservation] = {}
        to_reset = np.zeros(self.num_envs, dtype=bool)
        for i in range(self.num_envs):
            agent = book.agents[i]
            if agent is None:  # NEXT_STEP: this step was the reset of sub-env i, not a transition
                book.start(i, self._row(next_obs, i))
                continue
            reward = float(rewards[i])
            self.env_steps += 1
            book.ep_return[i] += reward
            book.ep_len[i] += 1
            if not (terminated[i] or truncated[i]):
                book.pending[i] = AgentObservation(EpisodeState.RUNNING, self._row(next_obs, i), reward)
                continue
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                if "final_obs" not in info or not info.get("_final_obs", np.ones(self.num_envs, bool))[i]:
                    raise RuntimeError(
                        f"sub-env {i} ended an episode at vector step {self.vector_steps} but the SAME_STEP "
                        "autoreset env gave no info['final_obs'] for it"
                    )
                final = obs_dict(info["final_obs"][i], self.obs_keys, self._dict_obs, self.obs_dtypes)
                check_single_finite(final, i, self.vector_steps, "final observation")
            else:
                final = self._row(next_obs, i)
            state = EpisodeState.TERMINAL if terminated[i] else EpisodeState.INTERRUPTED
            closes[agent] = AgentObservation(state, final, reward)
            self.episode_returns.append(float(book.ep_return[i]))
            self.episode_lengths.append(int(book.ep_len[i]))
            self.episode_env_steps.append(self.env_steps)
            self.episodes_completed += 1
            book.end(i)
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                book.start(i, self._row(next_obs, i))
            elif self.autoreset_mode == AutoresetMode.DISABLED:
                to_reset[i] = True
        if closes:
            self.memory.add(closes, {})
        if to_reset.any():
            reset_obs, _ = self.env.reset(options={"reset_mask": to_reset})
            reset_obs = self._batch_to_dict(reset_obs)
            check_finite(reset_obs, self.vector_steps, "reset of done sub-envs", rows=to_reset)
            for i in np.flatnonzero(to_reset):
                for k in next_obs:
                    next_obs[k][i] = reset_obs[k][i]
                book.start(int(i), self._row(reset_obs, int(i)))
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
        closes, dangling = self._book.close_all()
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
        if resumed:
            self._warmup_taken = self.warmup_steps
        while self._warmup_taken < self.warmup_steps:
            _stop_if_requested(f"{self.name}: warm-up")
            self._step(None if self.random_warmup else self._params(ctx))
            self._warmup_taken += 1

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
            raise observation_shape_error(self.name, obs, self.num_envs, self.env.single_observation_space, e) from e

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
    #: The env reset seed of a run resumed after ``bp_step`` backprop steps (:func:`.state.resume_seed`).
    resume_seed = staticmethod(resume_seed)

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
        """Everything host-side that exact resume needs (:func:`~emote_jax.collectors.state.collector_state`)."""
        return collector_state(self)

    def load_host_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`host_state_dict` (checked first, unchanged on error); the next ``begin_training``
        then restarts the episodes (:func:`~emote_jax.collectors.state.load_collector_state`)."""
        load_collector_state(self, state)
