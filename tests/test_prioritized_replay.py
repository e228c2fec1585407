"""Prioritized replay end to end: the weighted Q loss, TD errors back with the metrics, priority updates,
a prioritized SAC run on HitTheMiddle that learns and resumes bitwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emote_jax import Context, HostCallback, Trainer
from emote_jax.algorithms.sac import QLoss
from emote_jax.checkpoint import checkpoint_steps
from emote_jax.collectors import GymCollector
from emote_jax.memory import PrioritizedSampler, ReplayTable
from emote_jax.memory.priority import PriorityFeedback, PriorityUpdater
from emote_jax.train import SACConfig, build_sac

REPO = Path(__file__).resolve().parents[1]


class LinearQ:
    """Q(obs, a) = w * obs[:, :1] + a."""

    def init(self, key, obs, act):
        return {"w": jnp.asarray(1.0)}

    def apply(self, params, obs, act):
        return params["w"] * obs[:, :1] + act


def q_ctx(obs, actions, q_target, weights=None):
    batch = {"observation": {"obs": obs}, "actions": actions, "q_target": q_target}
    if weights is not None:
        batch["weights"] = weights
    return Context(state={}, batch={"default": jax.tree.map(jnp.asarray, batch)}, key=jax.random.key(0),
                   metrics={}, bp_step=1)


def test_weighted_q_loss_equals_a_hand_computation():
    loss = QLoss(name="q1", q=LinearQ(), params={"w": jnp.asarray(0.5)})
    # 2 windows of T = 2 (rows 0-1, 2-3), weights per window
    obs = np.array([[1.0], [2.0], [-1.0], [4.0]], np.float32)
    act = np.array([[0.5], [0.0], [1.0], [-1.0]], np.float32)
    target = np.array([[2.0], [0.0], [0.0], [3.0]], np.float32)
    weights = np.array([0.25, 1.0], np.float32)
    value, aux = loss.loss({"w": jnp.asarray(0.5)}, q_ctx(obs, act, target, weights))
    q = 0.5 * obs + act  # [1, 1, 0.5, 1]
    err = (q - target)[:, 0]  # [-1, 1, 0.5, -2]
    expected = np.mean(np.repeat(weights, 2) * err**2)  # (0.25 + 0.25 + 0.25 + 4) / 4
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["td_error"], [1.0, 1.25], rtol=1e-6)  # mean |err| per window

    plain, plain_aux = loss.loss({"w": jnp.asarray(0.5)}, q_ctx(obs, act, target))
    assert float(plain) == float(jnp.mean((jnp.asarray(q) - jnp.asarray(target)) ** 2))  # bitwise, no weights
    assert "td_error" not in plain_aux


def test_the_loss_callback_returns_td_errors_as_per_sample_metrics():
    loss = QLoss(name="q1", q=LinearQ(), params={"w": jnp.asarray(0.5)})
    obs = np.arange(6, dtype=np.float32).reshape(6, 1)
    ctx = q_ctx(obs, np.zeros((6, 1), np.float32), np.ones((6, 1), np.float32), np.ones(6, np.float32))
    ctx = ctx.replace(state={"q1": loss.init_state(jax.random.key(0))})
    out = loss.backward(ctx)
    assert out.metrics["q1/td_error"].shape == (6,)
    np.testing.assert_allclose(out.metrics["q1/td_error"], np.abs(0.5 * obs[:, 0] - 1.0), rtol=1e-6)
    assert out.metrics["q1/loss"].shape == ()
    fb = PriorityFeedback().end_batch(out.replace(
        batch={"default": {**out.batch["default"], "indices": jnp.arange(6, dtype=jnp.int32)}},
        metrics={**out.metrics, "q2/td_error": jnp.zeros(6)}))
    assert "q1/td_error" not in fb.metrics and "q2/td_error" not in fb.metrics
    np.testing.assert_allclose(fb.metrics["priority/td_error"], out.metrics["q1/td_error"] / 2, rtol=1e-6)
    np.testing.assert_array_equal(fb.metrics["priority/indices"], np.arange(6))


def test_the_updater_writes_each_call_once_in_step_order():
    sampler = PrioritizedSampler(alpha=1.0, eps=0.5)
    table = ReplayTable(20, {"obs": ((1,), np.float32)}, (1,), sampler=sampler)
    table.add_transitions(agent_ids=np.zeros(10, int), episode_ids=np.zeros(10, int), steps=np.arange(10),
                          observation={"obs": np.zeros((10, 1))}, next_observation={"obs": np.zeros((10, 1))},
                          actions=np.zeros((10, 1)), rewards=np.zeros(10, np.float32))
    updater = PriorityUpdater(table)
    # a call of K = 2 steps, B = 3; row 4 in both steps: the later TD error wins
    metrics = {"priority/indices": np.array([[1, 4, 2], [4, 7, 8]], np.int32),
               "priority/td_error": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)}
    ctx = Context(state={}, batch=None, key=None, metrics=metrics, bp_step=1)
    updater.end_cycle(ctx)
    updater.end_cycle(ctx.replace(bp_step=2))  # the second step of the same call: nothing new
    assert updater.updates == 1
    np.testing.assert_allclose(sampler.priorities(np.array([1, 2, 4, 7, 8, 0])), [1.5, 3.5, 4.5, 5.5, 6.5, 1.0])
    assert sampler.max_priority == 6.5


N = 100
CFG = dict(env_id="HitTheMiddle-v0", num_envs=10, hidden_dims=(10, 10), batch_size=200, memory_size=1000,
           warmup_steps=1000, steps_per_call=10, seed=0, env_steps=10**6, log_metrics=False, eval_episodes=0,
           checkpoint_interval=N, replay="prioritized", lr_q=8e-3, lr_policy=1e-3, lr_alpha=1e-3,
           bp_steps_per_env_step=10)

RESUME = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[4])
from test_prioritized_replay import dump
from emote_jax.train import SACConfig, build_sac
cfg = SACConfig(**json.loads(sys.argv[1]))
run = build_sac(cfg, out=None, resume=True)
t = run.trainer
ctx = t.train(lambda: t.bp_step > int(sys.argv[2]))
run.env.close()
np.savez(sys.argv[3], **dump(run, ctx))
"""


def dump(run, ctx) -> dict[str, np.ndarray]:
    flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(ctx.state)[0]}
    flat["key_data"] = np.asarray(jax.random.key_data(ctx.key))
    state = run.table.state_dict()
    for k, v in state["columns"].items():
        flat["table/" + k] = v
    for k, v in state["sampler"]["arrays"].items():
        flat["sampler/" + k] = v
    for k, v in state["sampler"]["scalars"].items():
        flat["sampler/" + k] = np.asarray(v)
    flat["sampler/tree"] = run.table.sampler.tree.tree.copy()
    flat["env_steps"] = np.asarray(run.collector.env_steps)
    return flat


def test_prioritized_sac_learns_hit_the_middle_and_resumes_bitwise(tmp_path):
    # the straight run: 2N steps, episodes restarted at step N (what a resumed run does)
    straight = build_sac(SACConfig(**CFG), out=None)
    restart = _RestartAt(straight.collector, N, CFG["seed"])
    trainer = Trainer([*straight.trainer.callbacks, restart], straight.loader, steps_per_call=CFG["steps_per_call"],
                      seed=CFG["seed"])
    ctx = trainer.train(lambda: trainer.bp_step > 2 * N)
    straight.env.close()
    expected = dump(straight, ctx)
    sampler = straight.table.sampler
    prio = sampler.priorities(np.arange(straight.table.size()))
    assert len(np.unique(prio)) > 100 and sampler.max_priority > 1.0  # TD errors came back and were written
    assert sampler.batches_drawn >= 2 * N and 0.4 < sampler.beta() < 1.0
    assert "priority/td_error" in trainer.last_metrics and trainer.last_metrics["priority/td_error"].shape == (10, 200)

    cfg = {**CFG, "run_dir": str(tmp_path / "run"), "log_metrics": True}  # the logger skips per-sample metrics
    first = build_sac(SACConfig(**cfg), out=None)
    first.trainer.train(lambda: first.trainer.bp_step > N)
    first.env.close()
    assert checkpoint_steps(tmp_path / "run" / "checkpoints") == [N]
    out = tmp_path / "resumed.npz"
    proc = subprocess.run([sys.executable, "-c", RESUME, json.dumps(cfg), str(2 * N), str(out),
                           str(Path(__file__).parent)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(out, allow_pickle=False))
    assert set(got) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "q1/loss" in header and "td_error" not in header and "indices" not in header


def test_prioritized_sac_learns_hit_the_middle():
    run = build_sac(SACConfig(**{**CFG, "checkpoint_interval": 0}), out=None)
    run.trainer.train(lambda: run.trainer.bp_step > 800)
    run.env.close()
    returns = list(run.collector.episode_returns)[-10:]
    # a random policy gets about -37 per step, -1150 per 31-step episode; a PD controller about -50
    assert len(returns) == 10 and np.mean(returns) > -300, returns


class _RestartAt(HostCallback):
    """In the straight run: what a resumed run does at its first step."""

    def __init__(self, collector, step, seed):
        super().__init__(name="restart_at", cycle=1, order=2500)
        self.collector, self.step, self.seed = collector, step, seed

    def end_cycle(self, ctx):
        if ctx.bp_step == self.step:
            self.collector.restart_episodes(GymCollector.resume_seed(self.seed, self.step))


def test_the_replay_options_reach_the_config_and_bad_values_name_the_option():
    import pytest

    from emote_jax.cli import build_parser
    from emote_jax.errors import ConfigError
    from emote_jax.recipes.common import replay_sampler

    args = vars(build_parser().parse_args(["train", "--replay", "prioritized", "--per-alpha", "0.7", "--per-beta",
                                           "0.5", "--per-eps", "0.01", "--steps", "2000", "--num-envs", "2"]))
    assert (args["replay"], args["per_alpha"], args["per_beta"], args["per_eps"]) == ("prioritized", 0.7, 0.5, 0.01)
    assert vars(build_parser().parse_args(["train"]))["replay"] == "uniform"
    sampler = replay_sampler(SACConfig(replay="prioritized", per_alpha=0.7, per_beta=0.5, per_eps=0.01,
                                       env_steps=2000, num_envs=2))
    assert (sampler.alpha, sampler.beta0, sampler.eps, sampler.beta_steps) == (0.7, 0.5, 0.01, 1000)
    assert replay_sampler(SACConfig(replay="coverage", coverage_alpha=0.25)).alpha == 0.25
    for field, value, option in [("replay", "rank", "--replay"), ("per_alpha", -1.0, "--per-alpha"),
                                 ("per_beta", 1.5, "--per-beta"), ("per_eps", 0.0, "--per-eps"),
                                 ("coverage_alpha", float("nan"), "--coverage-alpha")]:
        with pytest.raises(ConfigError, match=f"^{option} .* is not valid: expected"):
            SACConfig(**{field: value}).validate()
