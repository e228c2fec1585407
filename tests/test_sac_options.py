"""Every SAC setting has a command-line option, and the "no limit" values (inf) train, checkpoint and resume."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from emote_jax.checkpoint import _saveable
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
