"""A :class:`~emote_jax.collectors.ray.RayCollector`'s host state for checkpoints: what is saved (counters,
episode statistics, each actor's epoch, restarts and env steps, the memory's running episodes) and putting
it back, everything checked first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emote_jax.collectors.ray_slots import RayCollectorBase


class RayCheckpointState(RayCollectorBase):
    """``host_state_dict`` / ``load_host_state_dict`` of :class:`~emote_jax.collectors.ray.RayCollector`."""

    def host_state_dict(self) -> dict[str, Any]:
        """Counters, episode statistics, each actor's epoch and restarts, the memory's running episodes."""
        return {
            "version": 1, "kind": "ray", "num_actors": self.num_actors,
            "counters": {"env_steps": self.env_steps, "vector_steps": self.vector_steps,
                         "episodes_completed": self.episodes_completed, "restarts": self.restarts,
                         "bp_done": self._bp_done, "vector_steps_in_training": self._vector_steps_in_training,
                         "next_agent": self._next_agent},
            "epochs": [s.epoch for s in self._slots], "actor_restarts": [s.restarts for s in self._slots],
            "actor_env_steps": [s.env_steps for s in self._slots],
            "episode_returns": list(self.episode_returns), "episode_lengths": list(self.episode_lengths),
            "episode_env_steps": list(self.episode_env_steps),
            "memory": self.memory.state_dict() if hasattr(self.memory, "state_dict") else None,
        }

    def load_host_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`host_state_dict` (checked first, unchanged on error); the next ``begin_training``
        closes the checkpoint's running episodes and starts every actor on a new epoch (fresh seeds)."""
        where = f"{self.name}.load_host_state_dict"
        if state.get("version") != 1 or state.get("kind") != "ray":
            raise ValueError(f"{where}: expected a Ray collector's state (version 1), got kind {state.get('kind')!r} "
                             f"version {state.get('version')!r}; was the checkpoint written with a local collector?")
        if state.get("num_actors") != self.num_actors:
            raise ValueError(f"{where}: expected the state of {self.num_actors} actors, "
                             f"got {state.get('num_actors')!r} "
                             "(resume with the --ray-actors of the checkpointed run)")
        try:
            c = {k: int(v) for k, v in state["counters"].items()}
            epochs = [int(e) for e in state["epochs"]]
            restarts = [int(r) for r in state["actor_restarts"]]
            actor_env = [int(n) for n in state["actor_env_steps"]]
            if not len(epochs) == len(restarts) == len(actor_env) == self.num_actors:
                raise ValueError(f"expected per-actor lists of length {self.num_actors}")
            if state.get("memory") is not None and hasattr(self.memory, "load_state_dict"):
                self.memory.load_state_dict(state["memory"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: the saved state does not fit this collector: {type(e).__name__}: {e}") from e
        self.env_steps, self.vector_steps = c["env_steps"], c["vector_steps"]
        self.episodes_completed, self.restarts = c["episodes_completed"], c["restarts"]
        self._bp_done, self._vector_steps_in_training = c["bp_done"], c["vector_steps_in_training"]
        self._next_agent = c["next_agent"]
        for s, e, r, n in zip(self._slots, epochs, restarts, actor_env):
            s.epoch, s.restarts, s.env_steps = e, r, n
        for dq, k in ((self.episode_returns, "episode_returns"), (self.episode_lengths, "episode_lengths"),
                      (self.episode_env_steps, "episode_env_steps")):
            dq.clear()
            dq.extend(state.get(k, []))
        self._resume_pending = True
