"""The run of a JAX-native env (``--env jax:Pendulum-v1``): collection and replay inside the compiled step.

:func:`device_pieces` is what :func:`~emote_jax.recipes.common.build_run` uses for an env id that
:func:`~emote_jax.envs.jax_env.is_jax_env_id` accepts: a :class:`~emote_jax.collectors.device.DeviceCollector`
takes the place of the gymnasium collector, memory, loader and warm-up (its slot holds the envs and the
replay buffer, so checkpoints hold them too and a resume is exact, episodes included); the algorithm's
callbacks, the budget, progress, loggers, checkpoints and evaluation are the host path's. With
``--shard-envs D`` (:func:`env_devices`, :func:`shard_envs`) the envs and the replay buffer's env axis are
split over D devices. docs/decisions/0012-device-collection.md records the choices.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from emote_jax.callback import Callback
from emote_jax.collectors.device import ENV_AXIS, DeviceCollector, DeviceCollectorMonitor
from emote_jax.envs.jax_env import JaxEnv, make_jax_env
from emote_jax.errors import ConfigError
from emote_jax.recipes.config import RunConfig

#: An :class:`~emote_jax.recipes.common.Algorithm` (not imported: common imports this module).
Algorithm = Any


def jax_env(cfg: RunConfig) -> JaxEnv:
    """The :class:`JaxEnv` of ``cfg.env_id``, or a ConfigError naming ``--env``."""
    try:
        return make_jax_env(cfg.env_id, **cfg.env_kwargs)
    except ValueError as e:
        raise ConfigError(str(e), "--env-kwargs" if str(e).startswith("--env-kwargs") else "--env") from None


def env_devices(cfg: RunConfig) -> list[Any] | None:
    """The first ``cfg.shard_envs`` of ``jax.devices()``, which ``--shard-envs`` splits the envs over (None:
    0 or 1, one device); a ConfigError naming ``--shard-envs`` for more devices than this process sees
    (``cfg.validate`` has refused a gymnasium env and a count that does not divide ``--num-envs``)."""
    d = cfg.shard_envs
    if d <= 1:
        return None
    found = jax.devices()
    if d > len(found):
        hint = (" (XLA_FLAGS=--xla_force_host_platform_device_count=N makes N CPU devices)"
                if found[0].platform == "cpu" else "")
        raise ConfigError(f"--shard-envs {d} is not valid: this process sees {len(found)} {found[0].platform} "
                          f"device(s) (jax.devices()); expected at most {len(found)}{hint}", "--shard-envs")
    return list(found[:d])


def shard_envs(trainer: Any, collector: DeviceCollector, devices: list[Any]) -> Mesh:
    """Place ``trainer``'s state and key on ``devices`` (a one-axis mesh named :data:`ENV_AXIS`) and return
    the mesh: the collector's slot split along its env axis (:meth:`DeviceCollector.shardings`), every
    other array whole on each device. The compiled step is one program over the mesh (no ``pmap``) and
    keeps this layout from call to call; a checkpoint loader reads into it (whatever layout wrote it)."""
    mesh = Mesh(np.array(devices), (ENV_AXIS,))
    whole = NamedSharding(mesh, PartitionSpec())
    state, key = trainer.ctx.state, trainer.ctx.key
    layout = {name: collector.shardings(slot, mesh) if name == collector.name else jax.tree.map(lambda _: whole, slot)
              for name, slot in state.items()}
    trainer.ctx = trainer.ctx.replace(state=jax.device_put(state, layout), key=jax.device_put(key, whole))
    return mesh


def device_settings(cfg: RunConfig, env: JaxEnv) -> tuple[int, int]:
    """``(vector steps per bp step E, bp steps per vector step M)`` from ``cfg.bp_steps_per_env_step``, after
    refusing the settings the device path does not have (each with the option to change)."""
    env_devices(cfg)
    refused = [("--threaded", cfg.threaded, "the envs are stepped inside the compiled step"),
               ("--prefetch", cfg.prefetch, "batches are sampled inside the compiled step"),
               ("--async-envs", cfg.async_envs, "the envs are stepped inside the compiled step"),
               ("--ray-actors", cfg.ray_actors > 0, "the envs are stepped inside the compiled step, not in actors"),
               ("--replay", cfg.replay != "uniform", "the device buffer samples uniformly"),
               ("--rollout-targets", cfg.rollout_targets != "n-step", "the device buffer gives n-step windows"),
               ("--obs-keys", bool(cfg.obs_keys), f"{cfg.env_id} has a flat Box observation")]
    for option, bad, why in refused:
        if bad:
            raise ConfigError(f"{option} is not available with --env {cfg.env_id}: {why}; drop {option} or use a "
                              "gymnasium env", option)
    if cfg.rollout_length > env.max_episode_steps:
        raise ConfigError(f"--rollout-length {cfg.rollout_length} is longer than {cfg.env_id}'s episodes (time limit "
                          f"{env.max_episode_steps} steps); expected <= {env.max_episode_steps}", "--rollout-length")
    r = float(cfg.bp_steps_per_env_step)
    if r >= 1 and r == int(r):
        return 1, int(r)
    if r < 1 and abs(1 / r - round(1 / r)) < 1e-9:
        return int(round(1 / r)), 1
    raise ConfigError(f"--bp-steps-per-env-step {r!r} is not available with --env {cfg.env_id}: expected a whole "
                      "number (backprop steps per vector step) or one over a whole number (e.g. 0.25: four vector "
                      "steps per backprop step)", "--bp-steps-per-env-step")


def device_pieces(algo: Algorithm, cfg: RunConfig) -> tuple[list[Callback], DeviceCollectorMonitor, Any]:
    """``(device callbacks, monitor, acting network)`` of a run of ``cfg`` on a JAX-native env: the
    :class:`DeviceCollector` first, then the algorithm's callbacks; the monitor is the run's host collector.
    Every check happens here, before anything is compiled."""
    cfg.validate()
    env = jax_env(cfg)
    per_bp, per_vector = device_settings(cfg, env)
    obs_dim, n_actions = algo.check_spaces(env.observation_space, env.action_space, env.id)  # refuses what it cannot
    discrete = {}
    if isinstance(env.action_space, gymnasium.spaces.Discrete):  # DQN: greedy indices, epsilon-greedy in the step
        discrete = {"num_discrete": int(env.action_space.n),
                    "epsilon": algo.actions(cfg, env.action_space).epsilon_spec}
    callbacks, net = algo.make_callbacks(cfg, obs_dim, n_actions, jax.random.key(cfg.seed))
    capacity = max(cfg.memory_size // cfg.num_envs, cfg.rollout_length)
    device = DeviceCollector(env, algo.collector_policy(net, False), num_envs=cfg.num_envs, capacity=capacity,
                             batch_count=cfg.batch_size // cfg.rollout_length, rollout_length=cfg.rollout_length,
                             params_slot=algo.params_slot, warmup_steps=cfg.warmup_steps,
                             random_warmup=cfg.random_warmup, vector_steps_per_bp_step=per_bp,
                             bp_steps_per_vector_step=per_vector, seed=cfg.seed, **discrete)
    return [device, *callbacks], DeviceCollectorMonitor(device), net


#: ``(env id, act) -> jitted (params, keys) -> returns``: one compilation per env and policy, whatever the
#: parameters (a periodic evaluation calls again with new ones).
_EPISODES: dict[tuple[str, Any], Any] = {}


def _episodes_fn(env: JaxEnv, act: Any) -> Any:
    """The jitted ``(params, keys (E,)) -> returns (E,)`` of ``act`` on ``env``, made once per (env id, act)."""
    cache_key = (env.id, act)
    if cache_key not in _EPISODES:
        low, high = jax.numpy.asarray(env.action_space.low), jax.numpy.asarray(env.action_space.high)

        def one(params: Any, key: jax.Array) -> jax.Array:
            state, obs = env.reset(key)

            def body(carry: Any, k: jax.Array) -> tuple[Any, None]:
                state, obs, total, done = carry
                a = act(params, obs[None], k)[0]
                state2, obs2, r, term = env.step(state, low + (a + 1.0) * 0.5 * (high - low), k)
                return (state2, obs2, total + jax.numpy.where(done, 0.0, r), done | term), None

            keys = jax.random.split(jax.random.fold_in(key, 1), env.max_episode_steps)
            init = (state, obs, jax.numpy.zeros(()), jax.numpy.zeros((), bool))
            return jax.lax.scan(body, init, keys)[0][2]

        _EPISODES[cache_key] = jax.jit(jax.vmap(one, in_axes=(None, 0)))
    return _EPISODES[cache_key]


def run_jax_episodes(env: JaxEnv, act: Any, params: Any, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` episodes of the deterministic ``act`` on ``env``, all at once on the device
    (``jax.vmap`` over episodes, ``lax.scan`` over the time limit); episode ``i`` resets with
    ``jax.random.key(seed + i)``. The parameters are an argument of the compiled rollout, so evaluating
    new parameters of the same policy does not compile again."""
    if episodes < 1:
        return []
    keys = jax.vmap(jax.random.key)(seed + jax.numpy.arange(episodes))
    return np.asarray(_episodes_fn(env, act)(params, keys)).astype(float).tolist()
