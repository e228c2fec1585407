"""A trained policy in a run directory: save it, load it back from ``config.json``, evaluate it, film it.

``train_sac`` saves the final policy parameters to ``RUN_DIR/policy`` with Orbax
(``StandardCheckpointer``: no pickle). :func:`load_policy` rebuilds the policy network from the run's
``config.json``, takes the abstract parameters (shapes and dtypes) from ``jax.eval_shape`` of its
``init``, and restores the saved arrays against them. ``emote-jax eval RUN_DIR`` is
:func:`evaluate_run`.

This is deliberately small: when full training checkpoints (``emote_jax.checkpoint``) hold the policy
slot, :func:`load_policy` can restore from there instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.context import PyTree
from emote_jax.networks.encoders import example_obs
from emote_jax.recipes import algo_of, config_from_json, get_algorithm
from emote_jax.recipes.common import POLICY_DIR, Act, Algorithm, env_action, run_episodes, save_policy
from emote_jax.recipes.envs import single_env

__all__ = ["POLICY_DIR", "LoadedPolicy", "config_from_json", "evaluate_run", "load_policy", "record_video",
           "run_episodes", "save_policy"]


def _spaces(algo: Algorithm, cfg: Any) -> tuple[int, int]:
    env = single_env(cfg)
    try:
        return algo.check_spaces(env.observation_space, env.action_space, cfg.env_id)
    finally:
        env.close()


@dataclass
class LoadedPolicy:
    """A policy restored from a run directory."""

    run_dir: Path
    config: Any
    policy_net: Any  # the acting network of the run's algorithm (SAC: a GaussianPolicy)
    params: PyTree
    algo: Algorithm | None = None  # None: SAC


def load_policy(run_dir: str | Path) -> LoadedPolicy:
    """Rebuild the policy from ``run_dir/config.json`` and restore its parameters from ``run_dir/policy``."""
    import orbax.checkpoint as ocp

    run_dir = Path(run_dir)
    config_path, policy_path = run_dir / "config.json", (run_dir / POLICY_DIR).absolute()
    if not config_path.is_file():
        raise FileNotFoundError(f"expected {config_path} (written by emote-jax train); is {run_dir} a run directory?")
    if not policy_path.is_dir():
        raise FileNotFoundError(
            f"expected a trained policy in {policy_path} (train_sac writes it when training ends); "
            f"found {sorted(p.name for p in run_dir.iterdir())}"
        )
    data = json.loads(config_path.read_text())
    algo = get_algorithm(algo_of(data))
    cfg = config_from_json(data)
    obs_dim, n_actions = _spaces(algo, cfg)
    policy_net = algo.make_net(cfg, obs_dim, n_actions)
    abstract = jax.eval_shape(policy_net.init, jax.random.key(0), example_obs(obs_dim))
    what = (f"the policy saved in {policy_path} does not fit the network built from {config_path} "
            f"(obs_dim={obs_dim}, n_actions={n_actions}"
            + (f", hidden_dims={tuple(cfg.hidden_dims)})" if hasattr(cfg, "hidden_dims") else ")"))
    ckptr = ocp.StandardCheckpointer()
    try:
        saved = _layout(ckptr.metadata(policy_path).item_metadata.tree)
        expected = _layout(abstract)
        if saved != expected:  # checked before restoring: a failed restore leaves work behind
            diff = [f"{k}: saved {saved.get(k, 'nothing')}, expected {expected.get(k, 'nothing')}"
                    for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]
            raise ValueError(f"{what}:\n  " + "\n  ".join(diff[:8]) + ("\n  ..." if len(diff) > 8 else ""))
        params = ckptr.restore(policy_path, abstract)
    except ValueError:
        raise
    except Exception as e:
        raise ValueError(f"{what}: {type(e).__name__}: {e}") from e
    finally:
        ckptr.close()
    return LoadedPolicy(run_dir, cfg, policy_net, params, algo)


def _layout(tree: PyTree) -> dict[str, str]:
    """``path -> "float32[2, 16]"`` for every array (or array metadata) leaf of ``tree``."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}" for path, leaf in leaves}


def _algo(loaded: LoadedPolicy) -> Algorithm:
    return loaded.algo if loaded.algo is not None else get_algorithm("sac")


def _act_fn(loaded: LoadedPolicy) -> Act:
    return jax.jit(_algo(loaded).eval_policy(loaded.policy_net))


def record_video(loaded: LoadedPolicy, video_dir: str | Path, episodes: int = 1,
                 seed: int = 0) -> tuple[list[Path], str | None]:
    """Film ``episodes`` deterministic episodes to MP4 files in ``video_dir`` (gymnasium's ``RecordVideo``).

    Returns ``(files, None)``, or ``([], reason)`` when it cannot: the env has no ``rgb_array`` render mode,
    or moviepy (or the env's renderer, e.g. pygame) is not installed.
    """
    from gymnasium.error import DependencyNotInstalled
    from gymnasium.wrappers import RecordVideo

    cfg = loaded.config
    probe = gymnasium.make(cfg.env_id, **cfg.env_kwargs)
    modes = list(probe.metadata.get("render_modes", []))
    probe.close()
    if "rgb_array" not in modes:
        return [], f"{cfg.env_id} cannot render frames (its render modes are {modes}, expected 'rgb_array')"
    video_dir = Path(video_dir)
    env = gymnasium.make(cfg.env_id, render_mode="rgb_array", **cfg.env_kwargs)
    try:
        env = RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, name_prefix="eval", disable_logger=True)
    except DependencyNotInstalled:
        env.close()
        return [], "moviepy is not installed (pip install 'emote-jax[video]')"
    try:
        to_env = env_action(_algo(loaded), cfg, env.action_space)
        run_episodes(env, _act_fn(loaded), loaded.params, episodes, seed, to_env)
    except DependencyNotInstalled as e:  # e.g. pygame for the classic-control renderers
        return [], f"rendering needs a missing package: {e}"
    finally:
        env.close()
    return sorted(video_dir.glob("eval*.mp4")), None


def evaluate_run(run_dir: str | Path, episodes: int = 10, seed: int | None = None, video_dir: str | Path | None = None,
                 video_episodes: int = 1, out: TextIO | None | str = "stdout") -> dict[str, Any]:
    """Evaluate the trained policy of ``run_dir`` over ``episodes`` deterministic episodes (``tanh(mean)``).

    ``seed`` defaults to the run's ``seed + 10000``, the seeds of the evaluation at the end of training, so
    the numbers are the same. With ``video_dir`` it also films ``video_episodes`` episodes where it can.
    Prints a summary to ``out`` (default: ``sys.stdout``; None: silent) and returns ``returns``, ``mean``,
    ``std``, ``min``, ``max``, ``videos`` and ``video_skipped`` (the reason, or None).
    """
    if episodes < 1:
        raise ValueError(f"expected episodes >= 1, got {episodes}")
    if isinstance(out, str):  # "stdout": the sys.stdout of the moment of the call
        out = sys.stdout
    loaded = load_policy(run_dir)
    cfg = loaded.config
    seed = cfg.seed + 10_000 if seed is None else seed
    env = single_env(cfg)
    try:
        to_env = env_action(_algo(loaded), cfg, env.action_space)
        returns = run_episodes(env, _act_fn(loaded), loaded.params, episodes, seed, to_env)
    finally:
        env.close()
    r = np.asarray(returns)
    result: dict[str, Any] = {"env_id": cfg.env_id, "episodes": episodes, "seed": seed, "returns": returns,
                              "mean": float(r.mean()), "std": float(r.std()), "min": float(r.min()),
                              "max": float(r.max()), "videos": [], "video_skipped": None}
    if out is not None:
        print(f"{cfg.env_id}: {episodes} deterministic episodes (seeds {seed}..{seed + episodes - 1}): "
              f"mean return {result['mean']:.2f} (std {result['std']:.2f}, min {result['min']:.2f}, "
              f"max {result['max']:.2f})", file=out, flush=True)
    if video_dir is not None:
        files, reason = record_video(loaded, video_dir, video_episodes, seed)
        result["videos"], result["video_skipped"] = [str(f) for f in files], reason
        if out is not None:
            if reason is not None:
                print(f"video skipped: {reason}", file=out, flush=True)
            else:
                print(f"video: {', '.join(str(f) for f in files)}", file=out, flush=True)
    return result
