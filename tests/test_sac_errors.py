"""Bad set-ups are refused with a clear error before anything is compiled."""

from __future__ import annotations

import gymnasium
import jax
import numpy as np
import pytest

from emote_jax import CallbackError, Trainer
from emote_jax.algorithms import make_sac_callbacks
from emote_jax.collectors import GymCollector, NonFiniteObservationError, ObservationShapeError, memory_spec
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.train import SACConfig, build_sac, policy_act


def _trainer(env, obs_dim: int):
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(500, obs_spec, action_shape)
    loader = MemoryLoader(table, 16)
    cbs, policy_net = make_sac_callbacks(obs_dim=obs_dim, n_actions=1, key=jax.random.key(0), hidden_dims=(8,))
    collector = GymCollector(env, policy_act(policy_net), MemoryProxy(table), warmup_steps=20)
    return Trainer([*cbs, collector, MemoryWarmup(loader)], loader)


def test_a_discrete_action_space_is_refused_by_sac():
    with pytest.raises(TypeError, match=r"SAC needs a continuous Box action space.*Discrete\(2\)"):
        build_sac(SACConfig(env_id="CartPole-v1", env_steps=10, warmup_steps=0), out=None)


def test_an_observation_shape_that_does_not_match_the_network_is_refused_before_compiling():
    env = gymnasium.vector.SyncVectorEnv([HitTheMiddle for _ in range(2)])
    trainer = _trainer(env, obs_dim=3)  # HitTheMiddle observes (2,)
    with pytest.raises(CallbackError, match=r"'collector'.*begin_training.*cannot act on the env's observations") as e:
        trainer.train()
    assert isinstance(e.value.__cause__, ObservationShapeError)
    assert "(2, 2)" in str(e.value)
    assert trainer.num_compilations == 0
    env.close()


class NaNAfter(HitTheMiddle):
    """HitTheMiddle whose 5th step returns a NaN observation."""

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        self._n = getattr(self, "_n", 0) + 1
        if self._n == 5:
            obs = np.array([np.nan, 0.0], np.float32)
        return obs, r, term, trunc, info


def test_a_non_finite_observation_is_refused_before_compiling():
    env = gymnasium.vector.SyncVectorEnv([HitTheMiddle, NaNAfter])
    trainer = _trainer(env, obs_dim=2)
    with pytest.raises(CallbackError, match=r"'collector'.*sub-env 1 returned a non-finite observation") as e:
        trainer.train()
    assert isinstance(e.value.__cause__, NonFiniteObservationError)
    assert trainer.num_compilations == 0
    env.close()
