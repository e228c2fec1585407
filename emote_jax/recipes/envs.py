"""The vector env of a run, and the env errors a user can act on (an unknown id, a missing extra)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import gymnasium

import emote_jax.envs  # noqa: F401  (registers HitTheMiddle-v0)
from emote_jax.envs.jax_env import JAX_PREFIX, has_gymnasium_twin
from emote_jax.errors import ConfigError

#: Extras of emote-jax that bring an env family's dependencies, by the start of the envs' entry point.
ENV_EXTRAS = {"gymnasium.envs.mujoco": "mujoco", "gymnasium.envs.box2d": "box2d"}


def make_vector_env(cfg: Any, seed_offset: int = 0) -> gymnasium.vector.VectorEnv:
    """``cfg.num_envs`` copies of ``cfg.env_id`` in a sync (or async) vector env with NEXT_STEP autoreset.

    ``cfg`` is a :class:`~emote_jax.recipes.config.RunConfig` (``env_id``, ``env_kwargs``, ``num_envs``,
    ``async_envs``). An env id that gymnasium does not know, or whose dependency is not installed, is a
    :class:`~emote_jax.errors.ConfigError` (the latter names the extra to install).
    """
    check_env_id(cfg.env_id)
    fns = [lambda: select_obs_keys(gymnasium.make(cfg.env_id, **cfg.env_kwargs), cfg) for _ in range(cfg.num_envs)]
    cls = gymnasium.vector.AsyncVectorEnv if cfg.async_envs else gymnasium.vector.SyncVectorEnv
    if cfg.async_envs:  # the sub-processes would report a missing dependency as a broken pipe: try one here
        with env_errors(cfg.env_id):
            select_obs_keys(gymnasium.make(cfg.env_id, **cfg.env_kwargs), cfg).close()
    with env_errors(cfg.env_id):
        return cls(fns)


def check_env_id(env_id: str) -> gymnasium.envs.registration.EnvSpec:
    """The registered spec of ``env_id``, or a ConfigError that says gymnasium does not know it."""
    try:
        return gymnasium.spec(env_id)
    except gymnasium.error.Error as e:
        raise ConfigError(f"--env {env_id!r}: gymnasium does not know this env id ({e})", "--env") from None


@contextlib.contextmanager
def env_errors(env_id: str) -> Iterator[None]:
    """Turn a missing env dependency into a one-line ConfigError naming the extra that brings it."""
    try:
        yield
    except (gymnasium.error.DependencyNotInstalled, ImportError) as e:
        entry = str(getattr(gymnasium.spec(env_id), "entry_point", ""))
        extra = next((x for prefix, x in ENV_EXTRAS.items() if entry.startswith(prefix)), None)
        hint = f"pip install 'emote-jax[{extra}]'" if extra else "install the package it names"
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--env {env_id!r} needs a package that is not installed ({detail}): {hint}",
                          "--env") from None


def check_rollout_length(cfg: Any) -> None:
    """Refuse an n-step length that no episode can reach (the env's time limit is shorter)."""
    limit = cfg.env_kwargs.get("max_episode_steps", check_env_id(cfg.env_id).max_episode_steps)
    if limit is not None and cfg.rollout_length > limit:
        raise ConfigError(f"--rollout-length {cfg.rollout_length} is longer than {cfg.env_id}'s episodes (time limit "
                          f"{limit} steps): no n-step window fits; expected <= {limit}", "--rollout-length")


def single_env(cfg: Any) -> gymnasium.Env:
    """One ``cfg.env_id`` env with ``cfg.env_kwargs`` (for evaluation), with the same errors as above.

    A JAX-native ``jax:<id>`` env gives the gymnasium env ``<id>`` it ports (the same dynamics), so its
    policies are evaluated and filmed on the original."""
    env_id = cfg.env_id
    if env_id.startswith(JAX_PREFIX):
        env_id = env_id[len(JAX_PREFIX):]
    elif not has_gymnasium_twin(env_id):
        raise ConfigError(f"--env {env_id}: a brax or gymnax env has no gymnasium twin to run on the host; its evaluation "
                          "runs on the device (emote_jax.recipes.device.run_jax_episodes)", "--env")
    check_env_id(env_id)
    with env_errors(env_id):
        return select_obs_keys(gymnasium.make(env_id, **cfg.env_kwargs), cfg)


def select_obs_keys(env: gymnasium.Env, cfg: Any) -> gymnasium.Env:
    """``env`` with only the Dict-observation keys ``cfg.obs_keys`` (empty: ``env`` itself), or a ConfigError
    naming ``--obs-keys`` (``env`` closed) for an env without Dict observations or a key it does not have."""
    keys = tuple(getattr(cfg, "obs_keys", ()) or ())
    if not keys:
        return env
    space = env.observation_space
    problem = None
    if not isinstance(space, gymnasium.spaces.Dict):
        problem = f"{cfg.env_id}'s observations are not a Dict (got {space}); --obs-keys selects keys of a Dict"
    elif set(keys) - set(space.spaces):
        missing = sorted(set(keys) - set(space.spaces))
        problem = f"{cfg.env_id}'s observations have no key(s) {missing}; expected some of {sorted(space.spaces)}"
    if problem is not None:
        env.close()
        raise ConfigError(f"--obs-keys {','.join(keys)}: {problem}", "--obs-keys")
    return gymnasium.wrappers.FilterObservation(env, list(keys))
