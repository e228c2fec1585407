"""The reference side of the benchmarks: emote-rl 23.0.0 (PyTorch), driven through its public API.

Run by ``run.py`` with the interpreter of ``benchmarks/.ref-venv`` as a worker subprocess (see
``_worker.py``: JSON commands on stdin, JSON results on stdout). Only emote's public classes are used:
``emote.Trainer``, ``emote.Callback``, ``emote.sac`` (QLoss, QTarget, PolicyLoss, AlphaLoss,
FeatureAgentProxy), ``emote.nn`` (GaussianMlpPolicy, ActionValueMlp), ``emote.memory``
(DictObsTable, TableMemoryProxy, MemoryLoader). The released package ships no gym collector (the
reference keeps its collectors in its test tree), so :class:`GymStepper` below is this harness's own:
one vector-env step per backprop step, in ``begin_batch``, feeding the reference's TableMemoryProxy.

The SAC set-up mirrors ``emote_jax.train.SACConfig`` defaults: 2x256 ReLU trunks, Adam lr 3e-4 for
Q, policy and alpha, gamma 0.99, tau 0.005, batch 256, gradient-norm clip 10, max alpha 0.2, and the
reference's own default target entropy (``n_actions * (1 + log(2 pi 0.089^2)) / 2``, about
``-n_actions``). Time-limit truncation is stored as INTERRUPTED with the terminal column on, so the
bootstrap is masked on true terminations only, as emote_jax does.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _worker  # noqa: E402

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import emote  # noqa: E402
from emote import Callback, Trainer  # noqa: E402
from emote.memory import MemoryLoader, TableMemoryProxy  # noqa: E402
from emote.memory.builder import DictObsTable  # noqa: E402
from emote.nn.action_value_mlp import ActionValueMlp  # noqa: E402
from emote.nn.gaussian_policy import GaussianMlpPolicy  # noqa: E402
from emote.sac import AlphaLoss, FeatureAgentProxy, PolicyLoss, QLoss, QTarget  # noqa: E402
from emote.trainer import TrainingShutdownException  # noqa: E402
from emote.typing import DictObservation, EpisodeState  # noqa: E402
from emote.utils.spaces import BoxSpace, DictSpace, MDPSpace  # noqa: E402

_DEVICE = torch.device("cpu")
_TORCH_DEFAULT_THREADS = _DEFAULT_THREADS = torch.get_num_threads()


# ---- SAC -------------------------------------------------------------------------------------------
def make_sac(obs_dim: int, n_actions: int, hidden: tuple[int, ...] = (256, 256), lr: float = 3e-4,
             gamma: float = 0.99, tau: float = 0.005, device: torch.device = _DEVICE) -> tuple[list, Any]:
    """The reference's SAC callbacks ``[q1, q2, policy, alpha, q_target]`` and its policy network."""
    hidden = list(hidden)
    q1 = ActionValueMlp(obs_dim, n_actions, hidden).to(device)
    q2 = ActionValueMlp(obs_dim, n_actions, hidden).to(device)
    policy = GaussianMlpPolicy(obs_dim, n_actions, hidden).to(device)
    ln_alpha = torch.tensor(0.0, requires_grad=True, device=device)
    callbacks = [
        QLoss(name="q1", q=q1, opt=torch.optim.Adam(q1.parameters(), lr=lr)),
        QLoss(name="q2", q=q2, opt=torch.optim.Adam(q2.parameters(), lr=lr)),
        PolicyLoss(pi=policy, ln_alpha=ln_alpha, q=q1, q2=q2, opt=torch.optim.Adam(policy.parameters(), lr=lr)),
        AlphaLoss(pi=policy, ln_alpha=ln_alpha, opt=torch.optim.Adam([ln_alpha], lr=lr), n_actions=n_actions),
        QTarget(pi=policy, ln_alpha=ln_alpha, q1=q1, q2=q2, gamma=gamma, target_q_tau=tau),
    ]
    return callbacks, policy


def synthetic_batch(obs_dim: int, n_actions: int, batch: int, rng: np.random.Generator,
                    device: torch.device = _DEVICE) -> dict:
    """A batch in the layout the reference's DictObsTable + MemoryLoader produce."""
    t = lambda a: torch.tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    return {
        "default": {
            "observation": {"obs": t(rng.standard_normal((batch, obs_dim)))},
            "next_observation": {"obs": t(rng.standard_normal((batch, obs_dim)))},
            "actions": t(rng.uniform(-1, 1, (batch, n_actions))),
            "rewards": t(rng.standard_normal((batch, 1))),
            "masks": t(np.ones((batch, 1))),
        },
        "batch_size": batch,
    }


class _Batches:
    """A finite dataloader: ``n`` batches cycled from a small pre-made pool (the reference's Trainer
    ends its loop, without end_training, when the dataloader ends)."""

    def __init__(self, pool: list[dict], n: int):
        self.pool, self.n = pool, n

    def __iter__(self):
        for i in range(self.n):
            yield self.pool[i % len(self.pool)]


_UPDATE: dict[str, dict] = {}


def update_setup(name: str, obs_dim: int, n_actions: int, batch: int = 256, hidden: list[int] = (256, 256),
                 warmup: int = 20, device: str = "cpu", seed: int = 0) -> dict:
    """Build SAC and a pool of synthetic batches under ``name``; run ``warmup`` updates."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    callbacks, _ = make_sac(obs_dim, n_actions, tuple(hidden), device=dev)
    rng = np.random.default_rng(seed)
    pool = [synthetic_batch(obs_dim, n_actions, batch, rng, dev) for _ in range(4)]
    _UPDATE[name] = dict(callbacks=callbacks, pool=pool, device=dev)
    Trainer(callbacks, _Batches(pool, warmup)).train()
    _sync(dev)
    return {"torch_threads": torch.get_num_threads()}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def update_run(name: str, n_updates: int, threads: int = 0) -> dict:
    """Time ``n_updates`` SAC updates through emote.Trainer on the synthetic batches, at ``threads``
    torch threads (0: leave as is)."""
    u = _UPDATE[name]
    if threads:
        torch.set_num_threads(threads)
    trainer = Trainer(u["callbacks"], _Batches(u["pool"], n_updates))
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    _sync(u["device"])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    torch.set_num_threads(_DEFAULT_THREADS)
    return {"seconds": dt, "cpu_s": cpu, "updates": n_updates, "updates_per_s": n_updates / dt,
            "threads": threads or torch.get_num_threads()}


def set_threads(threads: int = 0) -> int:
    """Set torch's intra-op threads for what follows (0: torch's default)."""
    global _DEFAULT_THREADS
    _DEFAULT_THREADS = threads or _TORCH_DEFAULT_THREADS
    torch.set_num_threads(_DEFAULT_THREADS)
    return _DEFAULT_THREADS


def check_env(env_id: str) -> dict:
    env = gymnasium.make(env_id)
    out = {"obs": list(env.observation_space.shape), "act": list(env.action_space.shape)}
    env.close()
    return out


# ---- end to end: a gym env stepped once per backprop step ------------------------------------------
class GymStepper(Callback):
    """Steps a gymnasium (0.29) vector env with the reference's FeatureAgentProxy and TableMemoryProxy.

    ``begin_training`` resets and takes ``warmup_steps`` vector steps with uniform random actions (so
    the loader is ready); then ``begin_batch`` takes one vector step per backprop step and raises
    TrainingShutdownException once ``max_env_steps`` env steps are done. Time-limit truncation is
    recorded as INTERRUPTED, true termination as TERMINAL. Records completed episodes' returns with
    the env step at which they completed, and a time stamp every ``stamp_every`` env steps.
    """

    def __init__(self, env: Any, agent: FeatureAgentProxy, memory: TableMemoryProxy, *, warmup_steps: int,
                 max_env_steps: int, seed: int, stamp_every: int = 100):
        super().__init__()
        self.env, self.agent, self.memory = env, agent, memory
        self.warmup_steps, self.max_env_steps, self.seed = warmup_steps, max_env_steps, seed
        self.num_envs = env.num_envs
        self.low = env.single_action_space.low.astype(np.float64)
        self.high = env.single_action_space.high.astype(np.float64)
        self.rng = np.random.default_rng(seed)
        self.env_steps = 0
        self.episodes: list[tuple[int, float]] = []
        self.stamps: list[tuple[int, float]] = []
        self.stamp_every = stamp_every
        self._next_agent = 0

    def _new_agent(self) -> int:
        self._next_agent += 1
        return self._next_agent - 1

    def begin_training(self):
        obs, _ = self.env.reset(seed=self.seed)
        self.agents = [self._new_agent() for _ in range(self.num_envs)]
        self.returns = [0.0] * self.num_envs
        self.obs = {a: DictObservation(episode_state=EpisodeState.INITIAL,
                                       array_data={"obs": obs[i].astype(np.float32)}, rewards={"reward": None})
                    for i, a in enumerate(self.agents)}
        for _ in range(self.warmup_steps):
            self._step(random=True)

    def begin_batch(self):
        if self.env_steps >= self.max_env_steps:
            raise TrainingShutdownException()
        self._step(random=False)

    def _step(self, random: bool) -> None:
        if random:
            acts = self.rng.uniform(-1.0, 1.0, (self.num_envs, *self.low.shape)).astype(np.float32)
            responses = {a: _Response(acts[i]) for i, a in enumerate(self.agents)}
        else:
            responses = self.agent(self.obs)
            acts = np.stack([responses[a].list_data["actions"] for a in self.agents])
        self.memory.add(self.obs, responses)
        acts = np.clip(acts, -1.0, 1.0)
        next_obs, rew, term, trunc, info = self.env.step(self.low + (acts + 1.0) * 0.5 * (self.high - self.low))
        self.env_steps += self.num_envs
        if self.env_steps % self.stamp_every < self.num_envs:
            self.stamps.append((self.env_steps, time.perf_counter()))
        new_obs = {}
        for i, a in enumerate(self.agents):
            r = float(rew[i])
            self.returns[i] += r
            if term[i] or trunc[i]:
                final = np.asarray(info["final_observation"][i], np.float32)
                state = EpisodeState.TERMINAL if term[i] else EpisodeState.INTERRUPTED
                self.memory.add({a: DictObservation(episode_state=state, array_data={"obs": final},
                                                    rewards={"reward": r})}, {})
                self.episodes.append((self.env_steps, self.returns[i]))
                self.returns[i] = 0.0
                a = self.agents[i] = self._new_agent()
                new_obs[a] = DictObservation(episode_state=EpisodeState.INITIAL,
                                             array_data={"obs": next_obs[i].astype(np.float32)}, rewards={"reward": None})
            else:
                new_obs[a] = DictObservation(episode_state=EpisodeState.RUNNING,
                                             array_data={"obs": next_obs[i].astype(np.float32)}, rewards={"reward": r})
        self.obs = new_obs


class _Response:
    """A DictResponse-shaped holder for the random warm-up actions."""

    def __init__(self, action: np.ndarray):
        self.list_data = {"actions": action}
        self.scalar_data = {}


def _table(obs_dim: int, n_actions: int, maxlen: int) -> DictObsTable:
    spaces = MDPSpace(BoxSpace(np.float32, (1,)), BoxSpace(np.float32, (n_actions,)),
                      DictSpace({"obs": BoxSpace(np.float32, (obs_dim,))}))
    return DictObsTable(spaces=spaces, use_terminal_column=True, maxlen=maxlen, device=_DEVICE)


def sac_run(env_id: str, env_steps: int, warmup_steps: int = 1000, seed: int = 0, batch: int = 256,
            memory_size: int = 1_000_000, eval_episodes: int = 0) -> dict:
    """SAC on ``env_id`` (1 env, one update per env step) for ``env_steps`` env steps (warm-up included).

    Returns the time stamps (env step, seconds), the completed episodes (env step, return), the
    updates done, and the deterministic evaluation returns (``tanh(mean)``) when ``eval_episodes``.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)  # the reference's uniform sampler draws from numpy's global RNG
    import random as _random
    _random.seed(seed)
    env = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make(env_id)])
    env.action_space.seed(seed)
    obs_dim = int(np.prod(env.single_observation_space.shape))
    n_actions = int(np.prod(env.single_action_space.shape))
    callbacks, policy = make_sac(obs_dim, n_actions)
    table = _table(obs_dim, n_actions, memory_size)
    memory = TableMemoryProxy(table, use_terminal=True)
    loader = MemoryLoader(table, batch, 1, "batch_size")
    stepper = GymStepper(env, FeatureAgentProxy(policy, _DEVICE), memory, warmup_steps=warmup_steps,
                         max_env_steps=env_steps, seed=seed)
    trainer = Trainer([stepper, *callbacks], loader)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    env.close()
    returns = _evaluate(env_id, policy, eval_episodes, seed + 10_000) if eval_episodes else []
    return {"wall_s": wall, "env_steps": stepper.env_steps, "bp_steps": int(trainer.state.get("bp_step", 0)),
            "stamps": [(s, t - t0) for s, t in stepper.stamps], "episodes": stepper.episodes,
            "eval_returns": returns, "torch_threads": torch.get_num_threads()}


def _evaluate(env_id: str, policy: Any, episodes: int, seed: int) -> list[float]:
    env = gymnasium.make(env_id)
    low, high = env.action_space.low, env.action_space.high
    policy.eval()
    out = []
    with torch.no_grad():
        for ep in range(episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, total = False, 0.0
            while not done:
                x = torch.tensor(np.asarray(obs, np.float32)[None])
                a = policy(x, torch.zeros(1, env.action_space.shape[0])).numpy()[0]
                obs, r, term, trunc, _ = env.step(low + (a + 1.0) * 0.5 * (high - low))
                total += float(r)
                done = term or trunc
            out.append(total)
    policy.train()
    env.close()
    return out


# ---- memory ----------------------------------------------------------------------------------------
def memory_fill(transitions: int = 1_000_000, obs_dim: int = 17, n_actions: int = 6, episode_len: int = 1000,
                sample_batch: int = 256, sample_reps: int = 50) -> dict:
    """Peak RSS of a DictObsTable (maxlen = ``transitions``) filled with ``episode_len``-step episodes,
    through ``add_sequence`` (the table's own write; the proxy builds the same sequences). Run in a
    fresh process: the peak is process-wide."""
    base = _worker.rss_mb()
    table = _table(obs_dim, n_actions, transitions)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((episode_len + 1, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, (episode_len, n_actions)).astype(np.float32)
    rew = rng.standard_normal((episode_len, 1)).astype(np.float32)
    t0 = time.perf_counter()
    for ep in range(transitions // episode_len):
        table.add_sequence(ep, {"obs": obs + ep, "actions": act, "rewards": rew, "terminal": [1.0]})
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(sample_reps):
        table.sample(sample_batch, 1)
    sample_s = (time.perf_counter() - t0) / sample_reps
    return {"size": table.size(), "rss_before_mb": base, "rss_after_mb": _worker.rss_mb(),
            "peak_rss_mb": _worker.peak_rss_mb(), "fill_s": fill_s, "sample_256_ms": sample_s * 1e3}


# ---- information -----------------------------------------------------------------------------------
def info() -> dict:
    import importlib.metadata as md
    return {
        "python": sys.version.split()[0], "emote_rl": md.version("emote-rl"), "torch": torch.__version__,
        "numpy": np.__version__, "gymnasium": gymnasium.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "emote_file": emote.__file__, "mkldnn": torch.backends.mkldnn.is_available(),
    }


if __name__ == "__main__":
    _worker.serve({"info": info, "update_setup": update_setup, "update_run": update_run, "sac_run": sac_run,
                   "memory_fill": memory_fill,
                   "set_threads": set_threads, "check_env": check_env})
