"""Brax environments (``--env brax:<name>``) as :class:`~emote_jax.envs.jax_env.JaxEnv`\\ s: physics inside the
compiled step.

Brax (``pip install emote-jax[brax]``) is the continuous-control suite chosen for the device path: its
envs are pure ``reset(key)`` / ``step(state, action)`` functions, and it installs and runs with the pinned
JAX (brax 0.14.2 on jax 0.10.2; docs/decisions/0012-device-collection.md has the comparison with MuJoCo
MJX and MuJoCo Playground). Its physics backend is brax's default, ``generalized``, or any other brax
offers, MJX included, through ``--env-kwargs '{"backend": "mjx"}'``; every key of ``--env-kwargs`` goes
to ``brax.envs.get_environment`` (``backend``, and the env's own options such as
``exclude_current_positions_from_observation``).

The bare env is used: no ``EpisodeWrapper``, no ``AutoResetWrapper``. The env reports *termination*
(Hopper falling, the inverted pendulum dropping: brax's ``done``) and the device collector adds the time
limit (:data:`BRAX_EPISODE_STEPS`, brax's own ``episode_length`` default) as truncation and resets
itself, so a time-limited episode bootstraps its Q target and a fallen one does not.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.envs.jax_env_spec import BRAX_PREFIX, JaxEnv

#: The time limit of a brax episode (``brax.envs.create``'s ``episode_length`` default).
BRAX_EPISODE_STEPS = 1000


def _strong(state: Any) -> Any:
    """Brax's ``State`` with every leaf a strongly typed array (some envs return Python floats, e.g. a
    reward of ``1.0``): the same types after reset and after step, as the collector's scan needs."""
    def one(x: Any) -> jax.Array:
        x = jnp.asarray(x)
        return jnp.asarray(x, jnp.float32 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype)
    return jax.tree.map(one, state)


def brax_env(name: str, **kwargs: Any) -> JaxEnv:
    """Brax's env ``name`` (``halfcheetah``, ``hopper``, ``ant``, ...) made with ``kwargs``, as a
    :class:`JaxEnv`: observations ``(observation_size,)`` float32, actions a ``Box(-1, 1,
    (action_size,))``, terminated where brax's ``done`` is set; the env state is brax's ``State``.
    A ValueError naming ``--env`` / ``--env-kwargs`` if brax is not installed, does not know ``name``,
    refuses ``kwargs`` or gives Dict observations."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # mujoco.mjx prints a line about NVIDIA warp, unused here
            from brax import envs  # noqa: PLC0415  (optional)
    except ImportError as e:
        raise ValueError(f"--env {BRAX_PREFIX}{name} needs brax: pip install 'emote-jax[brax]' ({e})") from None
    known = sorted(envs._envs)  # noqa: SLF001  (brax's registry; it has no public listing)
    if name not in known:
        raise ValueError(f"--env {BRAX_PREFIX}{name}: brax has no env {name!r}; expected one of "
                         f"{[BRAX_PREFIX + n for n in known]}")
    try:
        with warnings.catch_warnings():  # brax points at MJX for new work; decision 0012 says why brax here
            warnings.filterwarnings("ignore", message="Brax System, piplines and environments are not actively")
            env = envs.get_environment(name, **kwargs)
    except (TypeError, ValueError, KeyError) as e:
        if not kwargs:  # nothing of the user's to blame: brax itself failed (a version mismatch, say)
            raise RuntimeError(f"--env {BRAX_PREFIX}{name}: brax failed to build the env ({type(e).__name__}: {e})") from e
        raise ValueError(f"--env-kwargs {kwargs!r}: brax's {name} refuses them ({type(e).__name__}: {e})") from None
    obs_size = env.observation_size
    if not isinstance(obs_size, int):
        raise ValueError(f"--env {BRAX_PREFIX}{name}: expected flat observations, got brax's {obs_size} (Dict "
                         "observations are not supported on the device path)")

    def reset(key: jax.Array) -> tuple[Any, jax.Array]:
        state = _strong(env.reset(key))
        return state, state.obs.astype(jnp.float32)

    def step(state: Any, action: jax.Array, key: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        del key  # brax's dynamics are deterministic
        state = _strong(env.step(state, action))
        return state, state.obs.astype(jnp.float32), state.reward.astype(jnp.float32), state.done > 0

    high = np.full((obs_size,), np.inf, np.float32)
    return JaxEnv(f"{BRAX_PREFIX}{name}", reset, step, gymnasium.spaces.Box(-high, high, dtype=np.float32),
                  gymnasium.spaces.Box(-1.0, 1.0, (env.action_size,), np.float32), BRAX_EPISODE_STEPS)
