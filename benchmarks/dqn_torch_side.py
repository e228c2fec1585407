"""The PyTorch side of ``dqn_speed.py``: a plain PyTorch DQN, run with the reference's venv (``.ref-venv``).

emote-rl 23.0.0, the reference release, ships no DQN (its ``emote`` package has ``sac`` only; DQN came to
the reference's repository later), so this is the equivalent that issue 11 asks for: the settings of
``emote_jax``'s ``DQNConfig`` on CartPole-v1, written the way a PyTorch user writes DQN (CleanRL's layout):

* Q: 2x256 ReLU MLP, Adam lr 2.3e-3, Huber loss (delta 1), gradient-norm clip 10, batch 64;
* target: ``max_a Q_target(s', a)``, bootstrap masked by true termination only, a hard copy every 128 updates;
* replay: NumPy ring buffer of 100k, uniform sampling with replacement;
* acting: epsilon-greedy (1 -> 0.04 over 8k env steps) with the network in ``torch.no_grad``;
* schedule: 1,000 random warm-up steps, then one update every 2 env steps (one env).

Prints one JSON line: ``{"what": ..., ...}``. Usage (``dqn_speed.py`` runs it)::

    .ref-venv/bin/python dqn_torch_side.py update --updates 2000
    .ref-venv/bin/python dqn_torch_side.py e2e --env-steps 20000 --measure-from 6000
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import gymnasium
import numpy as np
import torch
from torch import nn

HIDDEN, LR, BATCH, GAMMA, TARGET_EVERY, CLIP = 256, 2.3e-3, 64, 0.99, 128, 10.0
MEMORY, WARMUP, EPS_START, EPS_END, EPS_DECAY = 100_000, 1_000, 1.0, 0.04, 8_000


def q_network(obs_dim: int, n_actions: int) -> nn.Module:
    return nn.Sequential(nn.Linear(obs_dim, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, n_actions))


class Replay:
    """A NumPy ring buffer of (obs, action, reward, next_obs, mask) with uniform sampling."""

    def __init__(self, obs_dim: int, size: int = MEMORY, seed: int = 0):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros(size, np.int64)
        self.rewards = np.zeros(size, np.float32)
        self.masks = np.zeros(size, np.float32)
        self.size, self.n, self.i = size, 0, 0
        self.rng = np.random.default_rng(seed)

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        self.obs[self.i], self.next_obs[self.i] = obs, next_obs
        self.actions[self.i], self.rewards[self.i], self.masks[self.i] = action, reward, 0.0 if terminated else 1.0
        self.i, self.n = (self.i + 1) % self.size, min(self.n + 1, self.size)

    def sample(self, b: int = BATCH):
        idx = self.rng.integers(0, self.n, b)
        return tuple(torch.from_numpy(a[idx]) for a in (self.obs, self.actions, self.rewards, self.next_obs, self.masks))


class DQN:
    def __init__(self, obs_dim: int, n_actions: int, seed: int = 0):
        torch.manual_seed(seed)
        self.q = q_network(obs_dim, n_actions)
        self.target = copy.deepcopy(self.q)
        self.opt = torch.optim.Adam(self.q.parameters(), lr=LR)
        self.updates = 0

    def update(self, obs, actions, rewards, next_obs, masks) -> None:
        with torch.no_grad():
            target = rewards + GAMMA * masks * self.target(next_obs).max(1).values
        q = self.q(obs).gather(1, actions[:, None])[:, 0]
        loss = nn.functional.smooth_l1_loss(q, target)
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.q.parameters(), CLIP)
        self.opt.step()
        self.updates += 1
        if self.updates % TARGET_EVERY == 0:
            self.target.load_state_dict(self.q.state_dict())

    def act(self, obs: np.ndarray, eps: float, rng: np.random.Generator, n_actions: int) -> int:
        if rng.random() < eps:
            return int(rng.integers(n_actions))
        with torch.no_grad():
            return int(self.q(torch.from_numpy(obs[None])).argmax(1)[0])


def update_only(updates: int, seed: int = 0) -> dict:
    """Updates/s on batches sampled from a buffer of 10k random CartPole-shaped transitions."""
    rng = np.random.default_rng(seed)
    replay, agent = Replay(4, seed=seed), DQN(4, 2, seed)
    for _ in range(10_000):
        replay.add(rng.standard_normal(4), rng.integers(2), rng.standard_normal(), rng.standard_normal(4), False)
    for _ in range(50):  # warm up the allocator and the kernels
        agent.update(*replay.sample())
    t0 = time.perf_counter()
    for _ in range(updates):
        agent.update(*replay.sample())
    dt = time.perf_counter() - t0
    return {"what": "update", "updates": updates, "seconds": dt, "updates_per_s": updates / dt,
            "torch_threads": torch.get_num_threads()}


def end_to_end(env_steps: int, measure_from: int, seed: int = 0) -> dict:
    """Train on CartPole-v1 for ``env_steps``; the rate is over the env steps after ``measure_from``."""
    env = gymnasium.make("CartPole-v1")
    n_actions, obs_dim = env.action_space.n, env.observation_space.shape[0]
    replay, agent, rng = Replay(obs_dim, seed=seed), DQN(obs_dim, n_actions, seed), np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    returns, ep_return, t0 = [], 0.0, None
    for step in range(env_steps):
        if step == measure_from:
            t0, u0 = time.perf_counter(), agent.updates
        eps = max(EPS_END, EPS_START - (EPS_START - EPS_END) * step / EPS_DECAY)
        action = int(rng.integers(n_actions)) if step < WARMUP else agent.act(obs.astype(np.float32), eps, rng, n_actions)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.add(obs, action, reward, next_obs, terminated)
        ep_return += reward
        obs = next_obs
        if terminated or truncated:
            returns.append(ep_return)
            obs, ep_return = env.reset()[0], 0.0
        if step >= WARMUP and step % 2 == 1:
            agent.update(*replay.sample())
    dt = time.perf_counter() - t0
    n = env_steps - measure_from
    return {"what": "e2e", "env_steps": n, "updates": agent.updates - u0, "seconds": dt, "env_steps_per_s": n / dt,
            "updates_per_s": (agent.updates - u0) / dt, "last10_return": float(np.mean(returns[-10:])),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    u = sub.add_parser("update")
    u.add_argument("--updates", type=int, default=2_000)
    e = sub.add_parser("e2e")
    e.add_argument("--env-steps", type=int, default=20_000)
    e.add_argument("--measure-from", type=int, default=6_000)
    for s in (u, e):
        s.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    res = update_only(a.updates, a.seed) if a.what == "update" else end_to_end(a.env_steps, a.measure_from, a.seed)
    res.update(torch=torch.__version__)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
