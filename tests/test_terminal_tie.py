"""A step that is both ``terminated`` and ``truncated`` (gymnasium's TimeLimit on the env's own terminal
step) is a true termination: stored terminated, mask 0, no bootstrap. The reference's truncation-as-
termination bug is the other direction; this tie is where a fix of it could go wrong."""

from __future__ import annotations

import gymnasium
import jax
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from emote_jax.collectors import GymCollector, memory_spec
from emote_jax.context import Context
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryProxy, ReplayTable


def _random(params, obs, key):
    return jax.random.uniform(key, (obs.shape[0], 1), minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_terminated_and_truncated_on_the_same_step_is_stored_as_termination(mode):
    # HitTheMiddle terminates at step 6 and the time limit truncates at step 6: both flags on one step
    env = SyncVectorEnv([lambda: gymnasium.wrappers.TimeLimit(HitTheMiddle(episode_steps=6), max_episode_steps=6)] * 2,
                        autoreset_mode=mode)
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, observation_spec=obs_spec, action_shape=action_shape)
    col = GymCollector(env, _random, MemoryProxy(table), warmup_steps=40, random_warmup=True)
    ctx = Context(state={"policy": {"params": {}}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=1)
    col.begin_training(ctx)
    # the env really does raise both flags on its last step
    probe = gymnasium.wrappers.TimeLimit(HitTheMiddle(episode_steps=6), max_episode_steps=6)
    probe.reset(seed=0)
    flags = [probe.step(np.zeros(1, np.float32))[2:4] for _ in range(6)]
    assert flags[-1] == (True, True) and not any(any(f) for f in flags[:-1])

    episodes = [table.get_episode(e) for e in table.episode_ids()]
    ended = [e for e in episodes if e["terminated"] or e["truncated"]]
    assert len(ended) >= 4
    assert all(e["terminated"] and not e["truncated"] and len(e["actions"]) == 6 for e in ended)
    batch = table.sample(len(table), 1)
    last = batch["terminated"][:, 0] == 1
    assert last.any() and (batch["masks"][last, 0] == 0).all() and not batch["truncated"].any()
    col.end_training(ctx)
