"""A collector's host state for exact resume (docs/decisions/0004): what a checkpoint saves of it, and
putting it back. :meth:`GymCollector.host_state_dict` and :meth:`GymCollector.load_host_state_dict` are
these two functions (``self`` is the ``GymCollector``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.collectors.episodes import EpisodeBook
from emote_jax.memory import AgentObservation, EpisodeState


def resume_seed(seed: int, bp_step: int) -> int:
    """The env reset seed of a run resumed after ``bp_step`` completed backprop steps.

    Derived from ``(seed, bp_step)`` with ``np.random.SeedSequence``, so resuming at different steps
    gives different episodes. A straight run calls ``restart_episodes(resume_seed(seed, N))`` after
    step N to reproduce exactly a run checkpointed at N and resumed.
    """
    return int(np.random.SeedSequence([int(seed), int(bp_step)]).generate_state(1)[0])


def collector_state(self: Any) -> dict[str, Any]:
    """Everything host-side of a collector that exact resume needs (NumPy arrays and JSON-able values).

    The sampling RNG and policy key, the step, episode and cycle counters, the episode bookkeeping of
    every sub-env (agent ids, the pending observation and reward, running return and length), the
    memory proxy's running episodes and the recent episode statistics. Not the env's own state.
    """
    book = self._book
    pending = [
        None if p is None else {"state": int(p.episode_state), "reward": p.reward,
                                "observation": {k: v.copy() for k, v in p.array_data.items()}}
        for p in book.pending
    ]
    return {
        "version": 1,
        "num_envs": self.num_envs,
        "rng_state": self._rng.bit_generator.state,
        "key_data": np.asarray(jax.random.key_data(self._key)),
        "key_impl": str(jax.random.key_impl(self._key)),
        "counters": {"env_steps": self.env_steps, "vector_steps": self.vector_steps,
                     "episodes_completed": self.episodes_completed, "cycles": self._cycles,
                     "vector_steps_in_training": self._vector_steps_in_training,
                     "next_agent": book.next_agent},
        "started": self._started,
        "agents": [None if a is None else int(a) for a in book.agents],
        "pending": pending,
        "ep_return": np.asarray(book.ep_return, np.float64),
        "ep_len": np.asarray(book.ep_len, np.int64),
        "episode_returns": list(self.episode_returns),
        "episode_lengths": list(self.episode_lengths),
        "episode_env_steps": list(getattr(self, "episode_env_steps", [])),
        "memory": self.memory.state_dict() if hasattr(self.memory, "state_dict") else None,
    }


def load_collector_state(self: Any, state: Mapping[str, Any]) -> None:
    """Restore :func:`collector_state`; the next ``begin_training`` then restarts the episodes.

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
            obs = {k: np.asarray(v, self.obs_dtypes.get(k, np.float32)) for k, v in p["observation"].items()}  # uint8 images
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
    self._vector_steps_in_training = c["vector_steps_in_training"]
    self._started = bool(state["started"])
    self._book = EpisodeBook(agents, pending, ep_return, ep_len, c["next_agent"])
    for dq, k in ((self.episode_returns, "episode_returns"), (self.episode_lengths, "episode_lengths"),
                  (getattr(self, "episode_env_steps", None), "episode_env_steps")):
        if dq is not None:
            dq.clear()
            dq.extend(state.get(k, []))
    self._resume_pending = True
