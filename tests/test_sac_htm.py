"""The reference's ``tests/test_htm.py``, ported: SAC on 10 HitTheMiddle envs passes its bar (the mean
batch reward that ``QTarget`` logs is >= -5 at backprop step 2000, checked by ``FinalRewardTestCheck``).

Ported as written there: a 1,000-transition table, ``MemoryLoader(table, 100, 2)`` over the reference's
default table layout (T = 2 independent one-step transitions per rollout: ``n_step=False``), critics of
10 hidden units at lr 8e-3, the policy (10, 10) and alpha at torch Adam's default lr 1e-3, the policy
against Q1 only, ``ln_alpha = 1`` (alpha = e at step 1), the policy head xavier-uniform, one vector
step of the 10 envs per backprop step after 500 warm-up vector steps taken with the policy, one
backprop step per compiled call.
"""

from __future__ import annotations

import gymnasium
import jax
import numpy as np

from emote_jax import Trainer
from emote_jax.algorithms import make_sac_callbacks
from emote_jax.callbacks import FinalRewardTestCheck
from emote_jax.collectors import GymCollector, memory_spec
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.train import policy_act


def test_sac_passes_the_references_hit_the_middle_test():
    env = gymnasium.vector.SyncVectorEnv([HitTheMiddle for _ in range(10)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, obs_spec, action_shape, seed=0)
    loader = MemoryLoader(table, 100, 2, "batch_size", n_step=False)
    callbacks, policy_net = make_sac_callbacks(
        obs_dim=2, n_actions=1, key=jax.random.key(0), hidden_dims=(10, 10),
        lr_q=8e-3, lr_policy=1e-3, lr_alpha=1e-3, gamma=0.99, tau=0.005, initial_alpha=float(np.e),
        policy_q="q1", policy_head_init="xavier",
    )
    collector = GymCollector(env, policy_act(policy_net), MemoryProxy(table), bp_steps_per_env_step=1.0,
                             warmup_steps=500, seed=0)
    check = FinalRewardTestCheck(-5.0, 2000)
    rewards: list[float] = []

    def record() -> bool:
        if trainer.last_metrics:
            rewards.extend(trainer.last_metrics["q_target/reward_mean"].tolist())
        return False

    trainer = Trainer([*callbacks, collector, MemoryWarmup(loader), check], loader, seed=0)
    try:
        trainer.train(shutdown_signal=record)  # the check raises TestCheckError below the bar
    finally:
        env.close()
    assert trainer.bp_step - 1 == 2000  # the check ended training at its step
    assert rewards[-1] >= -5.0, rewards[-1]
    assert np.mean(rewards[:100]) < -10.0  # it did start from the random-policy regime (about -37)
