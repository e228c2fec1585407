"""The README's train command, defaults, on 3 seeds: mean evaluation return >= -250 by 15,000 env steps.

Slow (a few minutes per seed on 2 CPU cores): excluded by default, run with ``pytest -m slow``.
"""

from __future__ import annotations

import pytest

from emote_jax.train import SACConfig, train_sac


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_sac_solves_pendulum_in_15k_env_steps(seed, tmp_path):
    cfg = SACConfig(seed=seed, run_dir=str(tmp_path / f"seed{seed}"))
    assert cfg.env_id == "Pendulum-v1" and cfg.env_steps == 15_000  # the defaults are what is tested
    result = train_sac(cfg, out=None)
    assert result["env_steps"] >= 15_000
    assert result["eval_mean_return"] >= -250.0, result["eval_returns"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_with_hl_gauss_critics_solves_pendulum_in_15k_env_steps(seed, tmp_path):
    """The default config with HL-Gauss critics: 101 bins over [-1700, 100] (Pendulum's returns lie in
    [-1627, 0]; the margin above 0 holds the entropy bonus of the soft values)."""
    cfg = SACConfig(seed=seed, run_dir=str(tmp_path / f"seed{seed}"), critic="hl-gauss", v_min=-1700.0, v_max=100.0)
    result = train_sac(cfg, out=None)
    assert result["env_steps"] >= 15_000
    assert result["eval_mean_return"] >= -250.0, result["eval_returns"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sac_fully_on_the_device_solves_pendulum_in_15k_env_steps(seed, tmp_path):
    """The default config on jax:Pendulum-v1: envs, replay and updates inside the compiled step; evaluated
    on gymnasium's Pendulum-v1 (the dynamics the JAX env ports)."""
    cfg = SACConfig(seed=seed, run_dir=str(tmp_path / f"seed{seed}"), env_id="jax:Pendulum-v1")
    result = train_sac(cfg, out=None)
    assert 15_000 <= result["env_steps"] < 15_000 + cfg.steps_per_call * cfg.num_envs
    assert result["eval_mean_return"] >= -250.0, result["eval_returns"]


@pytest.mark.slow
def test_a_population_of_8_seeds_has_every_member_at_least_minus_300_at_15k(tmp_path):
    """``emote-jax train --env jax:Pendulum-v1 --population 8``: seeds 0..7 in one vmapped program, the
    defaults otherwise; every member's deterministic evaluation >= -300 (issue 12's population bar)."""
    from emote_jax.population import train_population
    from emote_jax.recipes.sac import SAC

    cfg = SACConfig(env_id="jax:Pendulum-v1", seed=0, run_dir=str(tmp_path / "pop"))
    result = train_population(SAC, cfg, 8)
    evals = [m["eval_mean_return"] for m in result["members"]]
    assert len(evals) == 8 and all(m["env_steps"] >= 15_000 for m in result["members"])
    assert min(evals) >= -300.0, evals
