"""``emote-jax train --algo dqn`` with its defaults, on 3 seeds: mean deterministic evaluation return >= 475
on CartPole-v1 within 50,000 env steps (the issue's bar; the README has the numbers measured).

Slow (a few minutes per seed on 2 CPU cores): excluded by default, run with ``pytest -m slow``.
"""

from __future__ import annotations

import pytest

from emote_jax.recipes.dqn import DQNConfig, train_dqn


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_dqn_solves_cartpole_in_50k_env_steps(seed, tmp_path):
    cfg = DQNConfig(seed=seed, run_dir=str(tmp_path / f"seed{seed}"), checkpoint_interval=0)
    assert cfg.env_id == "CartPole-v1" and cfg.env_steps == 50_000  # the defaults are what is tested
    result = train_dqn(cfg, out=None)
    assert 50_000 <= result["env_steps"] < 50_100
    assert result["eval_mean_return"] >= 475.0, result["eval_returns"]
