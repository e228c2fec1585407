"""Recipes: a whole run of an algorithm, from a config.

:mod:`~emote_jax.recipes.common` is the run machinery every algorithm shares (with
:mod:`~emote_jax.recipes.config` and :mod:`~emote_jax.recipes.envs`); an algorithm adds one file that
defines its :class:`~emote_jax.recipes.common.Algorithm` (:mod:`~emote_jax.recipes.sac`,
:mod:`~emote_jax.recipes.dqn`) and one entry
in :data:`ALGORITHMS`. docs/decisions/0007-recipe-layer.md explains the split.
"""

from __future__ import annotations

from typing import Any

from emote_jax.errors import ConfigError
from emote_jax.recipes.common import Algorithm, Run, build_run, evaluate, train_run
from emote_jax.recipes.config import RunConfig, config_from_dict
from emote_jax.recipes.dqn import DQN, DQNConfig
from emote_jax.recipes.sac import SAC, SACConfig

#: The algorithms of ``emote-jax train --algo NAME``, by name; the first is the default.
ALGORITHMS: dict[str, Algorithm] = {SAC.name: SAC, DQN.name: DQN}
DEFAULT_ALGO = "sac"


def get_algorithm(name: str) -> Algorithm:
    """The registered algorithm ``name``, or a ConfigError naming ``--algo`` and the choices."""
    try:
        return ALGORITHMS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"--algo {name!r}: no such algorithm; expected one of {sorted(ALGORITHMS)}", "--algo") from None


def algo_of(data: dict[str, Any]) -> str:
    """The algorithm a saved ``config.json`` is of: its ``"algo"``; written before there was one, SAC."""
    return data.get("algo", DEFAULT_ALGO) if isinstance(data, dict) else DEFAULT_ALGO


def config_from_json(data: dict[str, Any]) -> RunConfig:
    """The config of the algorithm ``data["algo"]`` names (SAC without one) from the dict in ``config.json``.

    JSON turns tuples into lists: tuple-typed fields get tuples back. Keys this version does not know
    are ignored (a newer run directory), so are missing ones (defaults).
    """
    if not isinstance(data, dict):
        raise TypeError(f"expected config.json to hold a JSON object, got {type(data).__name__}")
    return config_from_dict(get_algorithm(algo_of(data)).config_cls, data)


__all__ = ["ALGORITHMS", "DEFAULT_ALGO", "DQN", "SAC", "Algorithm", "DQNConfig", "Run", "RunConfig", "SACConfig",
           "algo_of", "build_run", "config_from_json", "evaluate", "get_algorithm", "train_run"]
