"""The episode bookkeeping of a collector: which agent id each sub-env's episode runs under, what the
memory gets with its next action, and the running return and length (see collectors/gym.py on agent ids)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emote_jax.memory import AgentObservation, EpisodeState


@dataclass
class EpisodeBook:
    """Per sub-env ``i`` of ``N``:

    ========================  ==============================================================================
    ``agents[i]``             the agent id of its running episode (None: none, e.g. on a NEXT_STEP reset step)
    ``pending[i]``            the observation (and the reward of the last action) the memory gets with the
                              next action; None once handed over
    ``ep_return``  (N,) f64   the running episode's return
    ``ep_len``     (N,) i64   the running episode's length
    ``next_agent``            the id the next episode gets (ids are never reused, across resets too)
    ========================  ==============================================================================
    """

    agents: list[int | None]
    pending: list[AgentObservation | None]
    ep_return: np.ndarray
    ep_len: np.ndarray
    next_agent: int = 0

    @classmethod
    def empty(cls, num_envs: int, next_agent: int = 0) -> EpisodeBook:
        """No episode running in any of ``num_envs`` sub-envs; the next one gets id ``next_agent``."""
        return cls([None] * num_envs, [None] * num_envs, np.zeros(num_envs, np.float64), np.zeros(num_envs, np.int64),
                   next_agent)

    def start(self, i: int, obs: dict[str, np.ndarray]) -> None:
        """Start a new episode in sub-env ``i`` under a fresh id, on its first observation ``obs``."""
        self.agents[i], self.next_agent = self.next_agent, self.next_agent + 1
        self.pending[i] = AgentObservation(EpisodeState.INITIAL, obs, None)
        self.ep_return[i], self.ep_len[i] = 0.0, 0

    def end(self, i: int) -> None:
        """Sub-env ``i`` has no running episode any more (its return and length stay until the next start)."""
        self.agents[i] = self.pending[i] = None

    def close_all(self) -> tuple[dict[int, AgentObservation], list[int]]:
        """End every running episode: ``(closes, dangling)``, the INTERRUPTED observations to hand the memory
        by agent id, and the ids of agents that handed over an action without getting its reward back."""
        closes, dangling = {}, []
        for i, (agent, p) in enumerate(zip(self.agents, self.pending)):
            if agent is not None and p is None:
                dangling.append(agent)
            elif agent is not None and p.episode_state == EpisodeState.RUNNING:
                closes[agent] = AgentObservation(EpisodeState.INTERRUPTED, p.array_data, p.reward)
            self.end(i)
        return closes, dangling
