"""The peers' side of the benchmarks: sbx-rl (Stable-Baselines3's JAX SAC) and stable-baselines3 (PyTorch SAC).

Run by ``run.py`` with the interpreter of ``benchmarks/.peers-venv`` (pins in
``benchmarks/requirements-peers.txt``) as a worker subprocess (see ``_worker.py``: JSON commands on
stdin, JSON results on stdout). The driver sets ``JAX_PLATFORMS=cpu``. Every command takes
``algo``: ``"sbx"`` (``sbx.SAC``) or ``"sb3"`` (``stable_baselines3.SAC``); both are driven through
their public API only (``SAC(...)``, ``learn``, ``train``, ``predict``, a ``BaseCallback``).

The SAC set-up is the one ``emote_jax.train.SACConfig`` uses by default where the peers let it be
set: policy and twin Q networks 2x256 ReLU, Adam lr 3e-4 (policy, Q and entropy coefficient), gamma
0.99, tau 0.005, batch 256, buffer 1M, ``learning_starts`` = the warm-up steps (uniform random
actions before), ``ent_coef="auto"`` and ``target_entropy="auto"`` (``-n_actions``), one env,
``train_freq = gradient_steps = k``. What the peers do differently and cannot be set the same way
(initial entropy coefficient 1.0 with no upper bound, no gradient clipping, default initialisers, no
clamp on the policy mean) is listed in ``settings()`` and in the results' Markdown.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402

ALGOS = ("sbx", "sb3")


def _sac_class(algo: str) -> Any:
    if algo == "sbx":
        import sbx

        return sbx.SAC
    if algo == "sb3":
        import stable_baselines3

        return stable_baselines3.SAC
    raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")


def make_model(algo: str, env_id: str, k: int = 1, warmup_steps: int = 1000, seed: int = 0, batch: int = 256,
               buffer_size: int = 1_000_000, hidden: tuple[int, ...] = (256, 256)) -> Any:
    """``SAC("MlpPolicy", env_id, ...)`` with the harness's settings; SB3 on the CPU."""
    kw: dict[str, Any] = dict(
        learning_rate=3e-4, buffer_size=buffer_size, learning_starts=warmup_steps, batch_size=batch, tau=0.005,
        gamma=0.99, train_freq=k, gradient_steps=k, ent_coef="auto", target_entropy="auto",
        policy_kwargs={"net_arch": list(hidden)}, seed=seed, verbose=0,
    )
    if algo == "sb3":
        kw["device"] = "cpu"
    return _sac_class(algo)("MlpPolicy", gymnasium.make(env_id), **kw)


def _auto_init(ent_coef: Any) -> float | None:
    """The initial entropy coefficient of ``ent_coef="auto"`` (1.0) or ``"auto_<x>"`` (x), else None."""
    if isinstance(ent_coef, str) and ent_coef.startswith("auto"):
        return float(ent_coef.split("_")[1]) if "_" in ent_coef else 1.0
    return None


def settings(model: Any) -> dict:
    """The effective hyperparameters, read back from the model (what the comparison relies on)."""
    algo = "sbx" if type(model).__module__.startswith("sbx") else "sb3"
    out = {
        "algo": algo, "learning_rate": float(model.learning_rate), "buffer_size": int(model.buffer_size),
        "learning_starts": int(model.learning_starts), "batch_size": int(model.batch_size), "tau": float(model.tau),
        "gamma": float(model.gamma), "train_freq": [int(model.train_freq.frequency), str(model.train_freq.unit.value)],
        "gradient_steps": int(model.gradient_steps), "target_entropy": float(model.target_entropy),
        "n_envs": int(model.n_envs), "policy_delay": int(getattr(model, "policy_delay", 1)),
        "target_update_interval": int(getattr(model, "target_update_interval", 1)),
    }
    if algo == "sbx":
        pol = model.policy
        out.update(net_arch_pi=list(pol.net_arch_pi), net_arch_qf=list(pol.net_arch_qf), n_critics=pol.n_critics,
                   activation=getattr(pol.activation_fn, "__name__", str(pol.activation_fn)),
                   log_std_bounds=[float(model.actor.log_std_min), float(model.actor.log_std_max)],
                   ent_coef_init=float(model.ent_coef.ent_coef_init), ent_coef_max=None, max_grad_norm=None,
                   optimizer="optax.adam (no gradient clipping)", mean_clamp=None,
                   init="flax defaults (lecun_normal kernels, zero biases)")
    else:
        import stable_baselines3.sac.policies as sp

        pol = model.policy
        out.update(net_arch_pi=list(pol.net_arch["pi"]) if isinstance(pol.net_arch, dict) else list(pol.net_arch),
                   net_arch_qf=list(pol.net_arch["qf"]) if isinstance(pol.net_arch, dict) else list(pol.net_arch),
                   n_critics=int(pol.critic_kwargs["n_critics"]),
                   activation=pol.activation_fn.__name__, log_std_bounds=[float(sp.LOG_STD_MIN), float(sp.LOG_STD_MAX)],
                   ent_coef_init=_auto_init(model.ent_coef),
                   ent_coef_max=None, max_grad_norm=None, optimizer="torch.optim.Adam (no gradient clipping)",
                   mean_clamp=None, init="torch defaults (kaiming-uniform)", device=str(model.device))
    return out


# ---- end to end and learning: learn() with a recording callback ----------------------------------
def _recorder(stamp_every: int) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class Recorder(BaseCallback):
        """Time stamps ``(env steps, s since learn() began, updates done)`` each time the env-step count crosses a
        multiple of ``stamp_every`` *after* the update that follows a rollout (at the next rollout's start,
        and at the end), which is where emote_jax's progress rows stamp too (end of a collect + update
        cycle); and every completed episode as ``(env steps, return)``."""

        def __init__(self) -> None:
            super().__init__()
            self.stamps: list[tuple[int, float, int]] = []
            self.episodes: list[tuple[int, float]] = []
            self._next = stamp_every
            self.t0: float | None = None

        def _on_training_start(self) -> None:
            if self.t0 is None:  # the first learn() call (a run in segments calls it again)
                self.t0 = time.perf_counter()

        def resume_at(self, env_steps: int) -> None:
            self._next = (env_steps // stamp_every + 1) * stamp_every

        def _stamp(self) -> None:
            n = self.num_timesteps
            if n >= self._next:
                self.stamps.append((n, time.perf_counter() - self.t0, int(self.model._n_updates)))
                self._next = (n // stamp_every + 1) * stamp_every

        def _on_rollout_start(self) -> None:
            self._stamp()

        def _on_training_end(self) -> None:
            self._stamp()

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "episode" in info:
                    self.episodes.append((self.num_timesteps, float(info["episode"]["r"])))
            return True

    return Recorder()


def sac_run(algo: str, env_id: str, env_steps: int, warmup_steps: int = 1000, seed: int = 0, k: int = 1,
            stamp_every: int = 100, eval_episodes: int = 0, work_dir: str | None = None,
            segment: int = 10_000) -> dict:
    """``model.learn(env_steps)`` (warm-up included) with ``train_freq = gradient_steps = k``.

    Returns the time stamps, the completed episodes ``(env step, return)``, the updates done, the
    settings read back from the model and, with ``eval_episodes``, deterministic evaluation returns.

    With ``work_dir`` (sbx only): ``learn`` runs in segments of ``segment`` env steps
    (``reset_num_timesteps=False``, so the env and the counters carry on as in one call) and after each
    one the model's state is written to ``work_dir`` (:func:`_save_snapshot`); a call that finds a
    snapshot there resumes from it (a new process: the environment's episode restarts), so a run killed
    part-way loses at most ``segment`` env steps. ``resumed_from`` lists the env steps it resumed at.
    """
    if work_dir is not None and algo != "sbx":
        raise ValueError(f"sac_run: work_dir (resumable runs) is for algo 'sbx', got {algo!r}")
    t_setup = time.perf_counter()
    model = make_model(algo, env_id, k=k, warmup_steps=warmup_steps, seed=seed)
    setup_s = time.perf_counter() - t_setup
    rec = _recorder(stamp_every)
    resumed: list[int] = []
    prior_s = 0.0  # the learn() time of the snapshot's steps (a resumed run)
    if work_dir is not None and os.path.isfile(os.path.join(work_dir, SNAPSHOT_META)):
        resumed, prior_s = _load_snapshot(model, rec, work_dir)
    t0 = time.perf_counter() - prior_s
    if work_dir is None:
        model.learn(total_timesteps=env_steps, callback=rec)
    else:
        os.makedirs(work_dir, exist_ok=True)
        while model.num_timesteps < env_steps:
            n = min(segment - model.num_timesteps % segment, env_steps - model.num_timesteps)
            model.learn(total_timesteps=n, callback=rec, reset_num_timesteps=model.num_timesteps == 0)
            _save_snapshot(model, rec, work_dir, resumed, time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    returns = evaluate(model, env_id, eval_episodes, seed + 10_000) if eval_episodes else []
    out = {"wall_s": wall, "setup_s": setup_s, "env_steps": int(model.num_timesteps), "updates": int(model._n_updates),
           "stamps": rec.stamps, "episodes": rec.episodes, "eval_returns": returns, "settings": settings(model),
           "resumed_from": resumed}
    model.env.close()
    return out


SNAPSHOT_META, SNAPSHOT_STATE, SNAPSHOT_BUFFER = "snapshot.json", "snapshot_state.msgpack", "snapshot_buffer.npz"
_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def _snapshot_trees(model: Any) -> dict:
    pol = model.policy
    return {"actor_state": pol.actor_state, "qf_state": pol.qf_state, "ent_coef_state": model.ent_coef_state,
            "key": model.key, "policy_key": pol.key, "noise_key": pol.noise_key}


def _save_snapshot(model: Any, rec: Any, work_dir: str, resumed: list[int], wall_s: float) -> None:
    """An sbx model's train states and keys (msgpack, flax.serialization), its replay buffer's filled rows
    (npz) and the counters and recorder lists (JSON): no pickle. Each file is written whole, then renamed."""
    import flax.serialization
    import jax

    def put(name: str, write: Any) -> None:
        tmp = os.path.join(work_dir, name + ".tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(work_dir, name))

    state = flax.serialization.to_state_dict(jax.device_get(_snapshot_trees(model)))
    put(SNAPSHOT_STATE, lambda f: f.write(flax.serialization.msgpack_serialize(state)))
    rb = model.replay_buffer
    n = rb.buffer_size if rb.full else rb.pos
    put(SNAPSHOT_BUFFER, lambda f: np.savez(f, **{k: getattr(rb, k)[:n] for k in _BUFFER_FIELDS}))
    meta = {"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
            "episode_num": int(model._episode_num), "rb_pos": int(rb.pos), "rb_full": bool(rb.full),
            "episodes": rec.episodes, "stamps": rec.stamps, "resumed_from": resumed, "wall_s": wall_s}
    put(SNAPSHOT_META, lambda f: f.write(json.dumps(meta).encode()))


def _load_snapshot(model: Any, rec: Any, work_dir: str) -> tuple[list[int], float]:
    """Restore what :func:`_save_snapshot` wrote into a fresh model of the same settings (``np.load`` with
    ``allow_pickle=False``); returns the env steps resumed at so far (this one included) and the learn()
    seconds of the restored steps."""
    import flax.serialization

    with open(os.path.join(work_dir, SNAPSHOT_META)) as f:
        meta = json.load(f)
    with open(os.path.join(work_dir, SNAPSHOT_STATE), "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    trees = flax.serialization.from_state_dict(_snapshot_trees(model), state)
    model.policy.actor_state, model.policy.qf_state = trees["actor_state"], trees["qf_state"]
    model.ent_coef_state, model.key = trees["ent_coef_state"], trees["key"]
    model.policy.key, model.policy.noise_key = trees["policy_key"], trees["noise_key"]
    rb = model.replay_buffer
    with np.load(os.path.join(work_dir, SNAPSHOT_BUFFER), allow_pickle=False) as z:
        for k in _BUFFER_FIELDS:
            getattr(rb, k)[: len(z[k])] = z[k]
    rb.pos, rb.full = meta["rb_pos"], meta["rb_full"]
    model.num_timesteps, model._n_updates, model._episode_num = meta["num_timesteps"], meta["n_updates"], meta["episode_num"]
    rec.episodes = [tuple(e) for e in meta["episodes"]]
    rec.stamps = [tuple(s) for s in meta["stamps"]]
    rec.t0 = time.perf_counter() - meta["wall_s"]
    rec.resume_at(meta["num_timesteps"])
    return [*meta["resumed_from"], meta["num_timesteps"]], float(meta["wall_s"])


def evaluate(model: Any, env_id: str, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` deterministic episodes (``predict(deterministic=True)``: tanh of the mean)."""
    env = gymnasium.make(env_id)
    out = []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total = False, 0.0
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = term or trunc
            out.append(total)
    finally:
        env.close()
    return out


# ---- update only: model.train(gradient_steps=k) on a filled replay buffer --------------------------
_MODELS: dict[str, tuple[Any, int, int]] = {}


def update_setup(name: str, algo: str, env_id: str, k: int, fill: int = 10_000, batch: int = 256,
                 warmup_calls: int = 3, seed: int = 0) -> dict:
    """A model whose replay buffer holds ``fill`` random transitions; ``warmup_calls`` calls of
    ``model.train(gradient_steps=k, batch_size=batch)`` (sbx compiles its K-step update there)."""
    from stable_baselines3.common.logger import Logger

    model = make_model(algo, env_id, k=k, warmup_steps=0, seed=seed, batch=batch)
    model.set_logger(Logger(None, []))
    rb = model.replay_buffer
    rng = np.random.default_rng(seed)
    rb.observations[:fill] = rng.standard_normal(rb.observations[:fill].shape)
    rb.next_observations[:fill] = rng.standard_normal(rb.next_observations[:fill].shape)
    rb.actions[:fill] = rng.uniform(-1, 1, rb.actions[:fill].shape)
    rb.rewards[:fill] = rng.standard_normal(rb.rewards[:fill].shape)
    rb.pos = fill
    t0 = time.perf_counter()
    for _ in range(warmup_calls):
        model.train(gradient_steps=k, batch_size=batch)
    _MODELS[name] = (model, k, batch)
    return {"warmup_s": time.perf_counter() - t0, "settings": settings(model)}


def update_run(name: str, n_updates: int) -> dict:
    """Time ``n_updates`` updates (rounded up to whole calls of ``train(gradient_steps=k)``). Each call
    samples its K batches from the replay buffer on the host first (sbx: one ``sample(256 * K)``; SB3: one
    per gradient step) and reads the losses back (``.item()``), so every call is complete when it returns."""
    model, k, batch = _MODELS[name]
    calls = max(1, -(-n_updates // k))
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        model.train(gradient_steps=k, batch_size=batch)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": dt, "cpu_s": cpu, "updates": calls * k, "updates_per_s": calls * k / dt}


def update_drop(name: str) -> None:
    _MODELS.pop(name, None)


_TORCH_DEFAULT_THREADS = None


def set_threads(threads: int = 0) -> int:
    """torch's intra-op threads for what follows (0: torch's default). SB3 computes with torch; sbx
    only builds its replay samples as torch tensors."""
    global _TORCH_DEFAULT_THREADS
    import torch

    if _TORCH_DEFAULT_THREADS is None:
        _TORCH_DEFAULT_THREADS = torch.get_num_threads()
    torch.set_num_threads(threads or _TORCH_DEFAULT_THREADS)
    return torch.get_num_threads()


def check_env(env_id: str) -> dict:
    env = gymnasium.make(env_id)
    out = {"obs": list(env.observation_space.shape), "act": list(env.action_space.shape)}
    env.close()
    return out


def info() -> dict:
    import importlib.metadata as md

    import jax
    import torch

    def v(p: str) -> str | None:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0], "sbx_rl": v("sbx-rl"), "stable_baselines3": v("stable-baselines3"),
        "jax": jax.__version__, "jaxlib": v("jaxlib"), "flax": v("flax"), "optax": v("optax"),
        "tfp_nightly": v("tfp-nightly"), "torch": torch.__version__, "numpy": np.__version__,
        "gymnasium": gymnasium.__version__, "mujoco": v("mujoco"), "jax_backend": jax.default_backend(),
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
    }


if __name__ == "__main__":
    _worker.serve({"info": info, "sac_run": sac_run, "update_setup": update_setup, "update_run": update_run,
                   "update_drop": update_drop, "check_env": check_env, "set_threads": set_threads})
