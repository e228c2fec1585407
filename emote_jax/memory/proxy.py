"""The memory proxy: turns per-step agent observations into transitions in a :class:`ReplayTable`."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from emote_jax.memory import _checks
from emote_jax.memory.table import ReplayTable
from emote_jax.memory.types import AgentId, AgentObservation, EpisodeState


class CompletedEpisode(NamedTuple):
    """Statistics of one finished episode (``ret, length = ep[:2]`` unpacks the first two)."""

    episode_return: float  # sum of the rewards of its steps
    length: int  # number of transitions (actions taken)
    agent_id: AgentId
    terminated: bool  # True: TERMINAL; False: INTERRUPTED / interrupted by the proxy


@dataclass
class _Running:
    """A running episode of one agent: its id, the step t of the pending action, and that action."""

    episode_id: int
    step: int
    observation: dict[str, np.ndarray]  # obs_t, already cast to the table's dtypes
    action: np.ndarray  # a_t, waiting for its reward and obs_{t+1}
    episode_return: float = 0.0


class _Step(NamedTuple):
    """One checked, not yet written step of a running episode."""

    agent_id: AgentId
    running: _Running
    reward: float
    observation: dict[str, np.ndarray]  # obs_{t+1}
    action: np.ndarray | None  # a_{t+1}; None when the episode ends
    state: EpisodeState


class MemoryProxy:
    """Episode bookkeeping per agent id in front of a :class:`ReplayTable`.

    :meth:`add` takes one :class:`AgentObservation` per agent and the actions chosen for them:

    * ``INITIAL``: starts an episode with ``array_data`` as obs_0; an action is required. Starting an
      episode for an agent whose episode is still running is an error (end it first with TERMINAL /
      INTERRUPTED, or :meth:`interrupt`).
    * ``RUNNING``: ``reward`` is the reward of the agent's previous action, ``array_data`` is the new
      observation, and an action is required. The transition (obs_t, a_t, r_t, obs_{t+1}) is written to
      the table at once, so it is sampleable while the episode runs.
    * ``TERMINAL`` / ``INTERRUPTED``: the reward of the previous action and the final observation; the
      episode closes, recorded as true termination (``masks == 0``) or truncation (``masks == 1``).
      An action given for an ending agent is ignored.

    Every observation is checked (keys, shapes, dtype castability, finite values; reward present and
    finite; action present and of the right shape) before anything is written: a bad call changes
    nothing. Not thread-safe: one writer (collector) per proxy; the table itself is thread-safe.

    Attributes:
        completed_episodes: a deque (at most ``max_completed`` long) of :class:`CompletedEpisode`, for
            loggers; :meth:`pop_completed` empties it.
    """

    def __init__(self, table: ReplayTable, max_completed: int = 10_000):
        self._table = table
        self._running: dict[AgentId, _Running] = {}
        self.completed_episodes: deque[CompletedEpisode] = deque(maxlen=max_completed)
        self._where = "MemoryProxy.add"
        # the table's layout never changes: look it up once, not per observation
        self._spec = table.observation_spec
        self._spec_keys = set(self._spec)
        self._action_shape, self._action_dtype = table.action_shape, table.action_dtype

    @property
    def table(self) -> ReplayTable:
        return self._table

    def size(self) -> int:
        """The number of transitions in the table."""
        return self._table.size()

    def running_agents(self) -> list[AgentId]:
        """Agents with an episode in progress."""
        return list(self._running)

    def pop_completed(self) -> list[CompletedEpisode]:
        """The finished episodes since the last call, oldest first; empties ``completed_episodes``."""
        out = list(self.completed_episodes)
        self.completed_episodes.clear()
        return out

    def add(self, observations: Mapping[AgentId, AgentObservation], actions: Mapping[AgentId, Any]) -> None:
        """Record one step for each agent in ``observations`` (see the class docstring).

        Args:
            observations: ``{agent_id: AgentObservation}`` with unbatched arrays.
            actions: ``{agent_id: action of shape action_shape}`` for every agent whose state is INITIAL or
                RUNNING. An action for an agent not in ``observations`` is an error.
        """
        where = self._where
        unknown = set(actions) - set(observations)
        if unknown:
            raise ValueError(
                f"{where}: got actions for agents {sorted(unknown)} that sent no observation in this call "
                f"(observations from {sorted(observations)})"
            )
        starts: list[tuple[AgentId, _Running]] = []
        steps: list[_Step] = []
        arrays: list[tuple[str, str, np.ndarray]] = []  # (where, name, array) for one finiteness check
        for agent_id, ob in observations.items():
            at = f"{where}: agent {agent_id}"
            if not isinstance(ob, AgentObservation):
                raise TypeError(f"{at}: expected an AgentObservation, got {type(ob).__name__}")
            try:
                state = EpisodeState(ob.episode_state)
            except ValueError:
                raise ValueError(f"{at}: expected an EpisodeState, got {ob.episode_state!r}") from None
            obs = self._check_observation(ob.array_data, at)
            arrays.extend((at, f"array_data[{k!r}]", v) for k, v in obs.items())
            running = self._running.get(agent_id)
            if state == EpisodeState.INITIAL:
                if running is not None:
                    raise ValueError(
                        f"{at}: got INITIAL while its episode (id {running.episode_id}, at step "
                        f"{running.step}) is still running; end it with TERMINAL or INTERRUPTED first"
                    )
                action = self._check_action(actions, agent_id, at)
                arrays.append((at, "action", action))
                starts.append((agent_id, _Running(-1, 0, obs, action)))
                continue
            if running is None:
                raise ValueError(f"{at}: got {state.name} but the agent has no running episode (send INITIAL first)")
            reward = self._check_reward(ob.reward, state, at)
            action = None if state != EpisodeState.RUNNING else self._check_action(actions, agent_id, at)
            if action is not None:
                arrays.append((at, "action", action))
            steps.append(_Step(agent_id, running, reward, obs, action, state))
        _all_finite(arrays)

        # Everything checked (here, once: the table does not check again): write the transitions in one
        # batch, then update the bookkeeping.
        if steps:
            self._write(steps)
        for agent_id, running, reward, obs, action, state in steps:
            running.episode_return += reward
            if state == EpisodeState.RUNNING:
                running.step += 1
                running.observation = obs
                running.action = action
            else:
                del self._running[agent_id]
                self.completed_episodes.append(
                    CompletedEpisode(running.episode_return, running.step + 1, agent_id, state == EpisodeState.TERMINAL)
                )
        for agent_id, running in starts:
            running.episode_id = self._table.new_episode_id()
            self._running[agent_id] = running

    def _write(self, steps: list[_Step]) -> None:
        """Write checked steps to the table (arrays already of the table's dtypes and shapes)."""
        n = len(steps)
        if n > self._table.capacity:
            raise ValueError(f"{self._where}: expected at most capacity={self._table.capacity} transitions per "
                             f"call, got {n}")
        rewards = np.array([s.reward for s in steps], np.float32)  # each checked to fit (_check_reward)
        if n == 1:  # the common case (one sub-env): no list comprehensions, rows by reshape
            (s,) = steps
            observation = {k: v[None] for k, v in s.running.observation.items()}
            next_observation = {k: v[None] for k, v in s.observation.items()}
            actions = s.running.action[None]
        else:
            observation = {k: np.stack([s.running.observation[k] for s in steps]) for k in self._spec}
            next_observation = {k: np.stack([s.observation[k] for s in steps]) for k in self._spec}
            actions = np.stack([s.running.action for s in steps])
        self._table._write(
            np.array([s.running.episode_id for s in steps], np.int64),
            np.array([s.agent_id for s in steps], np.int64),
            np.array([s.running.step for s in steps], np.int64),
            observation,
            next_observation,
            actions,
            rewards,
            np.array([s.state == EpisodeState.TERMINAL for s in steps]),
            np.array([s.state == EpisodeState.INTERRUPTED for s in steps]),
            self._where,
        )

    def interrupt(self, agent_ids: Iterable[AgentId] | None = None) -> None:
        """End running episodes without a final observation (e.g. when a collector stops).

        The last stored transition of each becomes the end of a truncated episode (masks stay 1); the
        pending action (which never got its reward) is dropped. ``None`` interrupts every running agent.
        """
        ids = list(self._running) if agent_ids is None else list(agent_ids)
        for agent_id in ids:
            running = self._running.pop(agent_id, None)
            if running is None:
                continue
            self._table.truncate_episode(running.episode_id)
            if running.step > 0:
                self.completed_episodes.append(CompletedEpisode(running.episode_return, running.step, agent_id, False))

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The running episodes, for exact resume (fresh arrays; ``completed_episodes`` is not included)::

            {"running": [{"agent_id": int, "episode_id": int, "step": int, "episode_return": float,
                          "observation": {key: obs_shape}, "action": action_shape}, ...]}
        """
        return {
            "running": [
                {"agent_id": int(agent_id), "episode_id": int(r.episode_id), "step": int(r.step),
                 "episode_return": float(r.episode_return),
                 "observation": {k: v.copy() for k, v in r.observation.items()}, "action": r.action.copy()}
                for agent_id, r in self._running.items()
            ]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the running episodes with those of :meth:`state_dict` (checked first; unchanged on error)."""
        where = "MemoryProxy.load_state_dict"
        try:
            entries = list(state["running"])
            running: dict[AgentId, _Running] = {}
            for e in entries:
                at = f"{where}: agent {e['agent_id']}"
                obs = self._check_observation(e["observation"], at)
                action = _checks.array_like(e["action"], "action", self._table.action_shape, self._table.action_dtype, at)
                if action.dtype != self._table.action_dtype:
                    raise TypeError(f"{at}: expected action of dtype {self._table.action_dtype}, got {action.dtype}")
                running[int(e["agent_id"])] = _Running(int(e["episode_id"]), int(e["step"]), obs,
                                                       action.copy(), float(e["episode_return"]))
        except (KeyError, TypeError) as e:
            if isinstance(e, TypeError) and str(e).startswith(where):
                raise
            raise ValueError(f"{where}: expected {{'running': [{{agent_id, episode_id, step, episode_return, "
                             f"observation, action}}, ...]}}, got a malformed state ({type(e).__name__}: {e})") from None
        self._running = running

    # ---- checks ----------------------------------------------------------------------------------
    def _check_observation(self, data: Any, at: str) -> dict[str, np.ndarray]:
        spec = self._spec
        if not isinstance(data, Mapping) or data.keys() != self._spec_keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{at}: expected array_data with keys {sorted(spec)}, got {got}")
        out = {}
        for k, (shape, dtype) in spec.items():
            arr = _checks.array_like(data[k], f"array_data[{k!r}]", shape, dtype, at)
            out[k] = arr.astype(dtype, copy=True)  # own copy: the caller may reuse its buffers
        return out

    def _check_action(self, actions: Mapping[AgentId, Any], agent_id: AgentId, at: str) -> np.ndarray:
        if agent_id not in actions:
            raise ValueError(f"{at}: expected an action (the agent is INITIAL or RUNNING), got none")
        arr = _checks.array_like(actions[agent_id], "action", self._action_shape, self._action_dtype, at)
        return arr.astype(self._action_dtype, copy=True)

    @staticmethod
    def _check_reward(reward: Any, state: EpisodeState, at: str) -> float:
        if reward is None:
            raise ValueError(f"{at}: expected the reward of the previous action with {state.name}, got None")
        try:
            value = float(np.asarray(reward).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(f"{at}: expected a scalar reward, got {reward!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"{at}: expected a finite reward, got {value}")
        if abs(value) > _FLOAT32_MAX:  # finite as a Python float, but not in the table's float32 column
            raise ValueError(f"{at}: expected a reward finite as a float32, got {value}")
        return value


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _all_finite(arrays: list[tuple[str, str, np.ndarray]]) -> None:
    """One vectorised finiteness check over many small arrays; on failure, name the first bad one."""
    floats = [arr.ravel() for _, _, arr in arrays if arr.dtype.kind in "fc"]
    if floats and not np.isfinite(np.concatenate(floats)).all():
        for at, name, arr in arrays:
            _checks.finite(arr, name, at)
