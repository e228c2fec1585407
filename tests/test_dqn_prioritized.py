"""DQN under prioritized replay: window weights over the T rows of each window, per-window TD errors
back to the sampler, and a run that trains."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.algorithms.dqn import td_loss
from emote_jax.recipes.dqn import DQNConfig, train_dqn


def test_window_weights_weigh_the_rows_of_each_window():
    q = jnp.array([[1.0], [2.0], [3.0], [4.0]])  # B=2 windows of T=2 rows
    target = jnp.zeros((4, 1))
    w = jnp.array([0.5, 2.0])
    expected = np.mean(np.array([1, 4, 9, 16]) * np.array([0.5, 0.5, 2.0, 2.0]))
    assert float(td_loss(q, target, "mse", weights=w)) == pytest.approx(expected, rel=1e-6)


def test_prioritized_dqn_trains_and_feeds_priorities_back(tmp_path):
    cfg = DQNConfig(env_steps=1_500, warmup_steps=300, batch_size=32, memory_size=5_000, hidden_dims=(32, 32),
                    eval_episodes=1, eval_interval=0, replay="prioritized", rollout_length=2,
                    run_dir=str(tmp_path / "run"), log_metrics=False, checkpoint_interval=0)
    result = train_dqn(cfg, out=None)
    assert result["bp_steps"] > 100 and np.isfinite(result["eval_mean_return"])
