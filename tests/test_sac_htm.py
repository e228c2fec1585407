"""SAC learns HitTheMiddle: the reference's own bar (mean batch reward >= -5 by backprop step 2000)."""

from __future__ import annotations

import gymnasium
import jax
import numpy as np

from emote_jax import Trainer
from emote_jax.algorithms import make_sac_callbacks
from emote_jax.collectors import GymCollector, memory_spec
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.train import policy_act


def test_sac_learns_hit_the_middle_like_the_reference():
    env = gymnasium.vector.SyncVectorEnv([HitTheMiddle for _ in range(10)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, obs_spec, action_shape, seed=0)
    loader = MemoryLoader(table, rollout_count=100, rollout_length=2, steps_per_call=10)
    callbacks, policy_net = make_sac_callbacks(
        obs_dim=2, n_actions=1, key=jax.random.key(0), hidden_dims=(10, 10),
        lr_q=8e-3, lr_policy=1e-3, lr_alpha=1e-3, gamma=0.99, tau=0.005, initial_alpha=np.e,
    )
    collector = GymCollector(env, policy_act(policy_net), MemoryProxy(table), bp_steps_per_env_step=10,
                             warmup_steps=500, seed=0)
    trainer = Trainer([*callbacks, collector, MemoryWarmup(loader)], loader, seed=0)
    rewards = []

    def shutdown() -> bool:
        if trainer.last_metrics:
            rewards.extend(trainer.last_metrics["q_target/reward_mean"].tolist())
        return trainer.bp_step > 2000

    trainer.train(shutdown_signal=shutdown)
    env.close()
    assert len(rewards) == 2000
    # the reference logs the batch reward at step 2000 and asks for >= -5 (its runs: -0.2 to -1.8);
    # we take the mean over the last 100 steps, a steadier reading of the same quantity
    assert np.mean(rewards[-100:]) >= -5.0, np.mean(rewards[-100:])
    assert np.mean(rewards[:100]) < -10.0  # it did start from the random-policy regime
