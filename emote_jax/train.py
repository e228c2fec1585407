"""The SAC recipe under its first names (``from emote_jax.train import SACConfig, train_sac``).

The recipes moved to :mod:`emote_jax.recipes`: the run machinery every algorithm shares is
:mod:`emote_jax.recipes.common` (with ``config`` and ``envs``), SAC's part :mod:`emote_jax.recipes.sac`.
This module re-exports the names it used to define, so existing imports, notebooks and benchmarks keep
working.
"""

from __future__ import annotations

from emote_jax.recipes.common import EnvStepBudget, ProgressLines
from emote_jax.recipes.config import cli_option
from emote_jax.recipes.envs import ENV_EXTRAS, check_env_id, check_rollout_length, make_vector_env
from emote_jax.recipes.sac import (
    SACConfig,
    SACRun,
    build_sac,
    check_spaces,
    collector_policy,
    evaluate,
    policy_act,
    train_sac,
)

__all__ = [
    "ENV_EXTRAS",
    "EnvStepBudget",
    "ProgressLines",
    "SACConfig",
    "SACRun",
    "build_sac",
    "check_env_id",
    "check_rollout_length",
    "check_spaces",
    "cli_option",
    "collector_policy",
    "evaluate",
    "make_vector_env",
    "policy_act",
    "train_sac",
]
