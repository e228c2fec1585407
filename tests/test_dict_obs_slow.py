"""SAC on the Dict-observation Pendulum (angle and velocity as two keys), defaults otherwise, on 3 seeds:
mean deterministic evaluation return >= -250 by 15,000 env steps, the bar of tests/test_pendulum_slow.py.

Slow (several minutes per seed on 2 CPU cores): excluded by default, run with ``pytest -m slow``.
"""

from __future__ import annotations

import pytest

from emote_jax.train import SACConfig, train_sac


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_solves_dict_pendulum_in_15k_env_steps(seed, tmp_path):
    cfg = SACConfig(env_id="DictPendulum-v0", seed=seed, run_dir=str(tmp_path / f"seed{seed}"))
    assert cfg.env_steps == 15_000
    result = train_sac(cfg, out=None)
    assert result["env_steps"] >= 15_000
    assert result["eval_mean_return"] >= -250.0, result["eval_returns"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_with_a_shared_critic_encoder_solves_dict_pendulum_in_15k_env_steps(seed, tmp_path):
    """The same bar with MLP encoders on the vector keys (--encoder-dims 64) and one encoder for both critics."""
    cfg = SACConfig(env_id="DictPendulum-v0", encoder_dims=(64,), shared_encoder=True, seed=seed,
                    run_dir=str(tmp_path / f"seed{seed}"))
    result = train_sac(cfg, out=None)
    assert result["eval_mean_return"] >= -250.0, result["eval_returns"]
