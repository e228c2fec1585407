"""Every SAC setting has a command-line option, and the "no limit" values (inf) train, checkpoint and resume."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from emote_jax.checkpoint import _saveable
from emote_jax.errors import ConfigError
from emote_jax.cli import build_parser
from emote_jax.recipes.config import cli_option
from emote_jax.recipes.sac import SACConfig
from emote_jax.train import train_sac

#: Settings that only Python code sets, and why (the README's "Python-only settings" says the same).
PYTHON_ONLY = {
    "algo": "chosen by --algo itself",
    "target_entropy": "a number or a schedule (a callable): make_sac_callbacks(target_entropy=...)",
}


def _train_options(algo: str = "sac") -> dict[str, str]:
    parser = build_parser(algo)
    train = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["train"]
    return {a.dest: a.option_strings[0] for a in train._actions if a.option_strings}


def test_every_sac_setting_has_an_option():
    options = _train_options()
    missing = [f.name for f in dataclasses.fields(SACConfig) if f.name not in options and f.name not in PYTHON_ONLY]
    assert not missing, f"SACConfig fields without an `emote-jax train` option: {missing}"
    for name, flag in options.items():
        if name in {f.name for f in dataclasses.fields(SACConfig)}:
            assert cli_option(name) == flag, (name, flag)  # errors name the option the user would type


def test_no_limit_values_parse_and_reach_the_config():
    ns = build_parser("sac").parse_args(["train", "--max-grad-norm", "inf", "--max-alpha", "inf", "--initial-alpha",
                                         "0.5", "--q-hidden", "64,64"])
    assert math.isinf(ns.max_grad_norm) and math.isinf(ns.max_alpha)
    assert ns.initial_alpha == 0.5 and ns.q_hidden_dims == (64, 64)


def test_inf_bounds_train_checkpoint_and_resume(tmp_path):
    cfg = SACConfig(env_steps=330, warmup_steps=256, batch_size=32, hidden_dims=(16, 16), eval_episodes=0,
                    checkpoint_interval=25, max_grad_norm=math.inf, max_alpha=math.inf, initial_alpha=0.5,
                    run_dir=str(tmp_path / "run"), log_metrics=False)
    first = train_sac(cfg, out=None)
    assert first["bp_steps"] >= 70
    resumed = train_sac(dataclasses.replace(cfg, env_steps=360), out=None, resume=True)
    assert resumed["bp_steps"] > first["bp_steps"]


@pytest.mark.parametrize("value,path,ok", [(np.inf, "alpha/hparams/max_ln_alpha", True),
                                           (np.inf, "q1/hparams/max_grad_norm", True),
                                           (np.nan, "q1/hparams/max_grad_norm", False),
                                           (np.inf, "q1/network/params/w", False),
                                           (np.nan, "q1/network/params/w", False)])
def test_only_hyperparameters_may_be_infinite_in_a_checkpoint(value, path, ok):
    assert _saveable(np.array([1.0, value], np.float32), path) is ok


EMOTE = {"max_grad_norm": 10.0, "max_alpha": 0.2, "initial_alpha": 1.0, "policy_q": "q1", "policy_head_init": "xavier",
         "alpha_logp": "updated",
         "warmup_steps": 1_000, "steps_per_call": 1, "bp_steps_per_env_step": 1.0, "critic": "mse"}


def test_the_emote_preset_is_the_reference_settings():
    assert SACConfig.PRESETS["emote"] == EMOTE
    cfg = SACConfig.from_preset("emote", env_id="HalfCheetah-v5")
    assert cfg.preset == "emote" and cfg.env_id == "HalfCheetah-v5"
    assert {k: getattr(cfg, k) for k in EMOTE} == EMOTE


def test_the_defaults_are_pinned():
    """The recipe's defaults (a changed default must change this test, and the README's tables)."""
    d = SACConfig()
    assert (d.env_id, d.env_steps, d.batch_size, d.warmup_steps, d.steps_per_call, d.bp_steps_per_env_step) == \
        ("Pendulum-v1", 15_000, 256, 1_000, 1, 1.0)
    assert (d.hidden_dims, d.lr_q, d.lr_policy, d.lr_alpha, d.gamma, d.tau) == ((256, 256), 3e-4, 3e-4, 3e-4, 0.99, 0.005)
    assert (d.max_grad_norm, d.max_alpha, d.initial_alpha, d.policy_q, d.critic, d.preset) == \
        (math.inf, 0.2, 1.0, "min", "mse", None)  # no clipping: docs/decisions/0013
    assert d.policy_head_init == "orthogonal"
    assert d.alpha_logp == "updated"  # the reference's: "policy" stalled HalfCheetah seed 1, docs/decisions/0015


@pytest.mark.parametrize("head_init", ["orthogonal", "xavier"])
def test_the_policy_heads_init_is_the_one_asked_for(head_init):
    """orthogonal(0.01): W W^T = 1e-4 I (rows orthonormal, scaled); xavier-uniform(0.01): entries uniform in
    +-0.01 sqrt(6 / (fan_in + fan_out)), variance bound^2 / 3, rows not orthogonal."""
    import jax

    from emote_jax.networks.sac import GaussianPolicy

    net = GaussianPolicy(6, (256, 256), head_init)
    params = net.init(jax.random.key(0), np.zeros((1, 17), np.float32))["params"]
    for head in ("mean", "log_std"):
        w = np.asarray(params[head]["kernel"], np.float64)  # (256, 6)
        assert not np.any(params[head]["bias"])
        gram = w.T @ w
        bound = 0.01 * np.sqrt(6.0 / (256 + 6))
        if head_init == "orthogonal":
            np.testing.assert_allclose(gram, 1e-4 * np.eye(6), atol=1e-9)
        else:
            assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
            assert np.var(w) == pytest.approx(bound**2 / 3, rel=0.1)
            assert np.abs(gram - np.diag(np.diag(gram))).max() > 1e-6
    with pytest.raises(ConfigError, match="--policy-head-init .he. is not valid"):
        SACConfig(policy_head_init="he").validate()


def test_an_unknown_preset_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="--preset 'sbx'.*emote"):
        SACConfig.from_preset("sbx")


def test_options_given_on_the_command_line_override_the_preset_even_at_their_default_value():
    from emote_jax.cli import _given_options
    from emote_jax.cli_resume import with_preset as _with_preset

    argv = ["train", "--preset", "emote", "--policy-q", "min", "--steps", "5000"]
    args = vars(build_parser("sac").parse_args(argv))
    given = _given_options(argv)
    assert {"preset", "policy_q", "env_steps"} <= given and "max_alpha" not in given
    resolved = _with_preset(args, given)
    assert resolved["policy_q"] == "min" and resolved["env_steps"] == 5000  # given, default or not
    assert resolved["max_grad_norm"] == 10.0 and resolved["warmup_steps"] == 1_000  # the preset's


def test_preset_with_resume_is_a_usage_error(capsys):
    from emote_jax.cli import main

    assert main(["train", "--preset", "emote", "--resume", "--run-dir", "/nonexistent"]) == 2
    assert "--preset with --resume" in capsys.readouterr().err


def test_rollout_targets_choose_the_loaders_layout_and_train(tmp_path):
    """--rollout-targets one-step: the loader samples T one-step transitions per window (the reference's
    default table); the run trains; a bad value names the option."""
    from emote_jax.recipes.common import build_run
    from emote_jax.recipes.sac import SAC

    with pytest.raises(ConfigError, match="--rollout-targets 'two-step' is not valid"):
        SACConfig(rollout_targets="two-step").validate()
    cfg = SACConfig(env_id="HitTheMiddle-v0", env_steps=300, warmup_steps=64, batch_size=32, rollout_length=2,
                    rollout_targets="one-step", hidden_dims=(16, 16), eval_episodes=1, log_metrics=False,
                    checkpoint_interval=0, run_dir=str(tmp_path / "run"))
    run = build_run(SAC, cfg, out=None)
    try:
        assert run.loader.n_step is False
        run.collector.begin_training(run.trainer.ctx)  # the warm-up fills the table
        batch = run.loader.sample_batch()["default"]
        assert batch["next_observation"]["obs"].shape == (32, 2) and batch["masks"].shape == (32, 1)
    finally:
        run.env.close()
    result = train_sac(cfg, out=None)
    assert result["bp_steps"] > 0 and np.isfinite(result["eval_mean_return"])
