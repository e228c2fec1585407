"""JAX-native environments: pure ``reset``/``step`` functions that run inside the compiled step.

A :class:`JaxEnv` is one environment as pure functions of an explicit state; the device collector
(:class:`~emote_jax.collectors.device.DeviceCollector`) batches them with ``jax.vmap`` and adds the time
limit and the autoreset itself, so an env only reports *termination* (the MDP ended) and never a time
limit: a truncated episode is stored as truncated, and its Q target bootstraps.

Ids are ``jax:<name>`` (:data:`JAX_ENVS`: ports of gymnasium's classic-control dynamics, checked step by
step against gymnasium in the tests: Pendulum-v1, CartPole-v1), ``brax:<name>`` (brax's physics:
halfcheetah, hopper, ant, ...; :mod:`emote_jax.envs.brax_env`) and, with gymnax installed,
``gymnax:<name>`` (any gymnax env with a ``Box`` action space; docs/decisions/0012-device-collection.md
says why gymnax and brax are optional).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.envs.jax_env_spec import (  # re-exported: emote_jax.envs.jax_env.JaxEnv, ...
    BRAX_PREFIX,
    GYMNAX_PREFIX,
    JAX_PREFIX,
    JaxEnv,
    has_gymnasium_twin,
    is_jax_env_id,
)

# ---- Pendulum-v1 ----------------------------------------------------------------------------------------


def _angle_normalize(x: jax.Array) -> jax.Array:
    return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


def pendulum(g: float = 10.0, max_episode_steps: int = 200) -> JaxEnv:
    """gymnasium's ``Pendulum-v1`` (``g`` as its ``g`` option, 200 steps as its time limit), in float32.

    State ``(theta, theta_dot)``; reset ``theta ~ U[-pi, pi]``, ``theta_dot ~ U[-1, 1]``; observation
    ``[cos theta, sin theta, theta_dot]``; reward ``-(angle_normalize(theta)^2 + 0.1 theta_dot^2 +
    0.001 u^2)`` with ``u`` the torque clipped to ``[-2, 2]``; semi-implicit Euler with ``dt = 0.05``,
    ``theta_dot`` clipped to ``[-8, 8]``. It never terminates.
    """
    max_speed, max_torque, dt, m, length = 8.0, 2.0, 0.05, 1.0, 1.0

    def obs_of(state: jax.Array) -> jax.Array:
        th, thdot = state[0], state[1]
        return jnp.stack([jnp.cos(th), jnp.sin(th), thdot]).astype(jnp.float32)

    def reset(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        state = jax.random.uniform(key, (2,), jnp.float32, -1.0, 1.0) * jnp.array([jnp.pi, 1.0], jnp.float32)
        return state, obs_of(state)

    def step(state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        th, thdot = state[0], state[1]
        u = jnp.clip(action[0], -max_torque, max_torque)
        cost = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        new_thdot = jnp.clip(thdot + (3.0 * g / (2.0 * length) * jnp.sin(th) + 3.0 / (m * length**2) * u) * dt,
                             -max_speed, max_speed)
        new_state = jnp.stack([th + new_thdot * dt, new_thdot])
        return new_state, obs_of(new_state), (-cost).astype(jnp.float32), jnp.zeros((), bool)

    high = np.array([1.0, 1.0, max_speed], np.float32)
    return JaxEnv("jax:Pendulum-v1", reset, step, gymnasium.spaces.Box(-high, high, dtype=np.float32),
                  gymnasium.spaces.Box(-max_torque, max_torque, (1,), np.float32), max_episode_steps)


# ---- CartPole-v1 ----------------------------------------------------------------------------------------


def cartpole(max_episode_steps: int = 500) -> JaxEnv:
    """gymnasium's ``CartPole-v1`` (500 steps as its time limit), in float32.

    State ``(x, x_dot, theta, theta_dot)``, each ``~ U[-0.05, 0.05]`` at reset; the action an int, 1 pushes
    right with force 10 and 0 left; explicit Euler with ``tau = 0.02``; reward 1 every step, the
    terminating one included; terminated when ``|x| > 2.4`` or ``|theta| > 12 degrees``.
    """
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass, polemass_length = masspole + masscart, masspole * length
    theta_limit, x_limit = 12 * 2 * np.pi / 360, 2.4

    def reset(key: jax.Array) -> tuple[jax.Array, jax.Array]:
        state = jax.random.uniform(key, (4,), jnp.float32, -0.05, 0.05)
        return state, state

    def step(state: jax.Array, action: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        x, x_dot, theta, theta_dot = state[0], state[1], state[2], state[3]
        force = jnp.where(jnp.reshape(action, ()) == 1, force_mag, -force_mag)
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        temp = (force + polemass_length * theta_dot**2 * sin) / total_mass
        theta_acc = (gravity * sin - cos * temp) / (length * (4.0 / 3.0 - masspole * cos**2 / total_mass))
        x_acc = temp - polemass_length * theta_acc * cos / total_mass
        new = jnp.stack([x + tau * x_dot, x_dot + tau * x_acc, theta + tau * theta_dot, theta_dot + tau * theta_acc])
        terminated = (jnp.abs(new[0]) > x_limit) | (jnp.abs(new[2]) > theta_limit)
        return new, new, jnp.ones((), jnp.float32), terminated

    high = np.array([x_limit * 2, np.finfo(np.float32).max, theta_limit * 2, np.finfo(np.float32).max], np.float32)
    return JaxEnv("jax:CartPole-v1", reset, step, gymnasium.spaces.Box(-high, high, dtype=np.float32),
                  gymnasium.spaces.Discrete(2), max_episode_steps)


#: The ``jax:`` envs: name -> factory.
JAX_ENVS: dict[str, Callable[[], JaxEnv]] = {"CartPole-v1": cartpole, "Pendulum-v1": pendulum}


# ---- gymnax ---------------------------------------------------------------------------------------------


def gymnax_env(name: str) -> JaxEnv:
    """A gymnax env (``pip install gymnax``) as a :class:`JaxEnv`: its ``step_env`` without autoreset, its
    termination without its time limit (gymnax folds the time limit into ``done``; here it is the
    collector's truncation, at gymnax's ``max_steps_in_episode``)."""
    try:
        import gymnax  # noqa: PLC0415  (optional)
    except ImportError as e:
        raise ValueError(f"--env gymnax:{name} needs gymnax: pip install gymnax ({e})") from None
    try:
        env, params = gymnax.make(name)
    except (ValueError, KeyError) as e:
        raise ValueError(f"--env gymnax:{name}: gymnax does not know {name!r} ({e})") from None
    act_space, obs_space = env.action_space(params), env.observation_space(params)
    if not hasattr(act_space, "low") or not hasattr(obs_space, "low"):
        raise ValueError(f"--env gymnax:{name}: expected Box observation and action spaces (SAC on the device), "
                         f"got {type(obs_space).__name__} and {type(act_space).__name__}")
    max_steps = int(params.max_steps_in_episode)
    no_limit = params.replace(max_steps_in_episode=np.iinfo(np.int32).max)
    a_shape = tuple(act_space.shape) or (1,)

    def reset(key: jax.Array) -> tuple[Any, jax.Array]:
        obs, state = env.reset_env(key, no_limit)
        return state, jnp.ravel(obs).astype(jnp.float32)

    def step(state: Any, action: jax.Array, key: jax.Array) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        a = action if act_space.shape else action[0]
        obs, state, reward, done, _ = env.step_env(key, state, a, no_limit)
        return state, jnp.ravel(obs).astype(jnp.float32), jnp.asarray(reward, jnp.float32), jnp.asarray(done, bool)

    obs_low = np.broadcast_to(np.asarray(obs_space.low, np.float32), obs_space.shape).ravel()
    obs_high = np.broadcast_to(np.asarray(obs_space.high, np.float32), obs_space.shape).ravel()
    act_low = np.broadcast_to(np.asarray(act_space.low, np.float32), a_shape)
    act_high = np.broadcast_to(np.asarray(act_space.high, np.float32), a_shape)
    return JaxEnv(f"{GYMNAX_PREFIX}{name}", reset, step, gymnasium.spaces.Box(obs_low, obs_high, dtype=np.float32),
                  gymnasium.spaces.Box(act_low, act_high, dtype=np.float32), max_steps)


def make_jax_env(env_id: str, **kwargs: Any) -> JaxEnv:
    """The :class:`JaxEnv` of ``env_id`` (``jax:<name>``, ``brax:<name>`` or ``gymnax:<name>``); ``kwargs``
    go to a brax env's constructor (the others take none). A ValueError naming ``--env`` and the ids there
    are otherwise."""
    if env_id.startswith(BRAX_PREFIX):
        from emote_jax.envs.brax_env import brax_env  # noqa: PLC0415  (brax is optional)

        return brax_env(env_id[len(BRAX_PREFIX):], **kwargs)
    if kwargs:
        raise ValueError(f"--env-kwargs {kwargs!r}: {env_id} takes no keyword arguments (brax:<name> envs do)")
    if env_id.startswith(JAX_PREFIX):
        name = env_id[len(JAX_PREFIX):]
        if name not in JAX_ENVS:
            raise ValueError(f"--env {env_id}: no JAX-native env {name!r}; expected one of "
                             f"{[JAX_PREFIX + n for n in JAX_ENVS]}, brax:<name> or gymnax:<name>")
        return JAX_ENVS[name]()
    if env_id.startswith(GYMNAX_PREFIX):
        return gymnax_env(env_id[len(GYMNAX_PREFIX):])
    raise ValueError(f"--env {env_id}: expected a JAX-native env id (jax:<name>, brax:<name> or gymnax:<name>)")
