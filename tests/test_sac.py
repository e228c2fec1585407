"""SAC pieces against hand computations: squashed log-prob, gamma matrix, Q target, Polyak, alpha clamp."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Context, Trainer
from emote_jax.algorithms.sac import AlphaLoss, QTarget, gamma_matrix, make_sac_callbacks
from emote_jax.networks.sac import GaussianPolicy, QNet, mode_action, sample_action, squashed_log_prob


def test_squashed_log_prob_matches_change_of_variables():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(64, 3)).astype(np.float32)
    std = np.exp(rng.uniform(-2, 1, size=(64, 3))).astype(np.float32)
    u = (mean + std * rng.normal(size=(64, 3))).astype(np.float32)
    ours = np.asarray(squashed_log_prob(jnp.asarray(u), jnp.asarray(mean), jnp.asarray(std)))
    u64, m64, s64 = u.astype(np.float64), mean.astype(np.float64), std.astype(np.float64)
    normal = -0.5 * ((u64 - m64) / s64) ** 2 - np.log(s64) - 0.5 * np.log(2 * np.pi)
    expected = np.sum(normal - np.log(1 - np.tanh(u64) ** 2), axis=-1, keepdims=True)
    assert ours.shape == (64, 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_squashed_density_integrates_to_one():
    # density of a = tanh(u) on (-1, 1): p(a) = exp(logp(u)) with u = atanh(a)
    a = np.linspace(-1 + 1e-6, 1 - 1e-6, 400001)
    u = np.arctanh(a)[:, None].astype(np.float32)
    logp = np.asarray(squashed_log_prob(jnp.asarray(u), jnp.full_like(u, 0.3), jnp.full_like(u, 0.7)))[:, 0]
    assert abs(np.trapezoid(np.exp(logp.astype(np.float64)), a) - 1.0) < 1e-3


def test_sample_action_is_squashed_and_mode_is_tanh_mean():
    mean, std = jnp.full((1000, 2), 0.5), jnp.full((1000, 2), 0.3)
    action, logp = sample_action(mean, std, jax.random.key(0))
    assert action.shape == (1000, 2) and logp.shape == (1000, 1)
    assert float(jnp.abs(action).max()) < 1.0
    np.testing.assert_allclose(jnp.arctanh(action).mean(0), 0.5, atol=0.03)
    np.testing.assert_allclose(mode_action(mean), np.tanh(0.5) * np.ones((1000, 2)), rtol=1e-6)


def test_policy_head_clamps_like_the_reference():
    net = GaussianPolicy(2, (8,))
    params = net.init(jax.random.key(0), jnp.zeros((1, 3)))
    params = jax.tree.map(lambda x: x, params)
    params["params"]["mean"]["bias"] = jnp.array([100.0, -100.0])
    params["params"]["log_std"]["bias"] = jnp.array([100.0, -100.0])
    mean, std = net.apply(params, jnp.zeros((1, 3)))
    np.testing.assert_allclose(mean, [[5.0, -5.0]])
    np.testing.assert_allclose(std, [[np.exp(2.0), np.exp(-20.0)]], rtol=1e-6)


def test_gamma_matrix_equals_recursive_discounting():
    gamma, t = 0.97, 5
    rng = np.random.default_rng(1)
    rewards, bootstrap = rng.normal(size=(4, t)), rng.normal(size=(4, 1))
    ours = np.concatenate([rewards, bootstrap], 1) @ gamma_matrix(gamma, t)
    expected = np.zeros((4, t))
    running = bootstrap[:, 0]
    for i in reversed(range(t)):
        running = rewards[:, i] + gamma * running
        expected[:, i] = running
    np.testing.assert_allclose(ours, expected, atol=1e-5)


class LinearQ:
    """A contract network: Q(o, a) = w * sum(o) + sum(a)."""

    def init(self, key, *inputs):
        return {"w": jnp.asarray(1.0)}

    def apply(self, params, obs, action):
        return params["w"] * obs.sum(-1, keepdims=True) + action.sum(-1, keepdims=True)


class FixedPolicy:
    """A contract network with mean = obs[:, :1] / 10 and the smallest std, so a' = tanh(mean)."""

    def init(self, key, *inputs):
        return {"b": jnp.asarray(0.0)}

    def apply(self, params, obs):
        mean = obs[:, :1] / 10.0 + params["b"]
        return mean, jnp.full_like(mean, np.exp(-20.0))


def test_q_target_matches_a_hand_computation():
    gamma, scale = 0.9, 2.0
    qt = QTarget(q=LinearQ(), policy=FixedPolicy(), gamma=gamma, reward_scale=scale, tau=0.1)
    qt.init_targets({"w": jnp.asarray(0.5)}, {"w": jnp.asarray(0.25)})
    # 3 rollouts of length 2: ends in a true termination, in a truncation, mid-episode
    rewards = np.array([[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5]], np.float32)
    next_obs = np.array([[2.0, 1.0], [4.0, -1.0], [-3.0, 0.0]], np.float32)
    masks = np.array([[0.0], [1.0], [1.0]], np.float32)
    batch = {"default": {
        "observation": {"obs": np.zeros((6, 2), np.float32)},
        "next_observation": {"obs": next_obs},
        "actions": np.zeros((6, 1), np.float32),
        "rewards": rewards.reshape(6, 1),
        "masks": masks,
    }}
    state = {
        "q_target": qt.init_state(jax.random.key(0)),
        "policy": {"params": {"b": jnp.asarray(0.0)}},
        "alpha": {"params": {"ln_alpha": jnp.asarray(-60.0)}},  # alpha * logp' vanishes
    }
    ctx = Context(state=state, batch=jax.tree.map(jnp.asarray, batch), key=jax.random.key(0), metrics={}, bp_step=1)
    out = qt.begin_batch(ctx)
    a_next = np.tanh(next_obs[:, 0] / 10.0)
    v = np.minimum(0.5 * next_obs.sum(1) + a_next, 0.25 * next_obs.sum(1) + a_next) * masks[:, 0]
    r = rewards * scale
    expected = np.stack([r[:, 0] + gamma * r[:, 1] + gamma**2 * v, r[:, 1] + gamma * v], 1).reshape(6, 1)
    np.testing.assert_allclose(out.batch["default"]["q_target"], expected, rtol=1e-5)

    # Polyak update after the batch: target <- (1 - tau) target + tau online
    out = out.replace(state={**out.state, "q1": {"params": {"w": jnp.asarray(1.5)}},
                             "q2": {"params": {"w": jnp.asarray(-0.75)}}})
    out = qt.end_batch(out)
    t1, t2 = out.state["q_target"]["target_params"]
    np.testing.assert_allclose([t1["w"], t2["w"]], [0.9 * 0.5 + 0.1 * 1.5, 0.9 * 0.25 - 0.1 * 0.75], rtol=1e-6)


def test_q_target_of_the_one_step_layout_is_one_step_per_row():
    """The reference's default table (``n_step=False``): 2 windows of T=2 rows, each row with its own
    next observation and mask, give 4 one-step targets ``r + gamma * mask * V(next_obs)``."""
    gamma = 0.9
    qt = QTarget(q=LinearQ(), policy=FixedPolicy(), gamma=gamma, tau=0.1)
    qt.init_targets({"w": jnp.asarray(0.5)}, {"w": jnp.asarray(0.25)})
    rewards = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    next_obs = np.array([[2.0, 1.0], [4.0, -1.0], [-3.0, 0.0], [1.0, 1.0]], np.float32)
    masks = np.array([[1.0], [0.0], [1.0], [1.0]], np.float32)
    batch = {"default": {"observation": {"obs": np.zeros((4, 2), np.float32)}, "next_observation": {"obs": next_obs},
                         "actions": np.zeros((4, 1), np.float32), "rewards": rewards, "masks": masks}}
    state = {"q_target": qt.init_state(jax.random.key(0)), "policy": {"params": {"b": jnp.asarray(0.0)}},
             "alpha": {"params": {"ln_alpha": jnp.asarray(-60.0)}}}
    ctx = Context(state=state, batch=jax.tree.map(jnp.asarray, batch), key=jax.random.key(0), metrics={}, bp_step=1)
    out = qt.begin_batch(ctx)
    a_next = np.tanh(next_obs[:, 0] / 10.0)
    v = np.minimum(0.5 * next_obs.sum(1) + a_next, 0.25 * next_obs.sum(1) + a_next) * masks[:, 0]
    np.testing.assert_allclose(out.batch["default"]["q_target"][:, 0], rewards[:, 0] + gamma * v, rtol=1e-5)


def test_q_target_entropy_term_uses_alpha_and_logp():
    qt = QTarget(q=LinearQ(), policy=FixedPolicy(), gamma=0.5)
    qt.init_targets({"w": jnp.asarray(1.0)}, {"w": jnp.asarray(1.0)})
    batch = {"default": {
        "observation": {"obs": jnp.zeros((1, 2))}, "next_observation": {"obs": jnp.zeros((1, 2))},
        "actions": jnp.zeros((1, 1)), "rewards": jnp.zeros((1, 1)), "masks": jnp.ones((1, 1)),
    }}
    base = {"q_target": qt.init_state(jax.random.key(0)), "policy": {"params": {"b": jnp.asarray(0.0)}}}
    targets = []
    for ln_alpha in (-60.0, np.log(0.5)):
        ctx = Context(state={**base, "alpha": {"params": {"ln_alpha": jnp.asarray(ln_alpha)}}}, batch=batch,
                      key=jax.random.key(3), metrics={}, bp_step=1)
        targets.append(float(qt.begin_batch(ctx).batch["default"]["q_target"][0, 0]))
    # same key, same eps: the only difference is -gamma * alpha * logp' with a' = tanh(u'), u' ~ N(0, e^-20)
    mean, std = FixedPolicy().apply({"b": jnp.asarray(0.0)}, jnp.zeros((1, 2)))
    ctx = Context(state={}, batch=None, key=jax.random.key(3), metrics={}, bp_step=1)
    _, key = ctx.split_key()
    _, logp = sample_action(mean, std, key)
    np.testing.assert_allclose(targets[1] - targets[0], -0.5 * 0.5 * float(logp[0, 0]), rtol=1e-4)


def _random_batches(n, obs_dim=3, n_actions=2, b=16, t=1, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {"default": {
            "observation": {"obs": rng.normal(size=(b * t, obs_dim)).astype(np.float32)},
            "next_observation": {"obs": rng.normal(size=(b, obs_dim)).astype(np.float32)},
            "actions": rng.uniform(-1, 1, size=(b * t, n_actions)).astype(np.float32),
            "rewards": rng.normal(size=(b * t, 1)).astype(np.float32),
            "masks": (rng.uniform(size=(b, 1)) > 0.1).astype(np.float32),
        }, "batch_size": b * t}


def test_sac_step_runs_updates_every_network_and_clamps_alpha():
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16, 16),
                                lr_alpha=0.1, max_alpha=0.2)
    t = Trainer(cbs, _random_batches(20, t=2), steps_per_call=5)
    before = jax.tree.map(np.asarray, t.ctx.state)
    ctx = t.train()
    for name in ("q1", "q2", "policy"):
        assert jax.tree.structure(before[name]["params"]) == jax.tree.structure(ctx.state[name]["params"])
        changed = [not np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(before[name]["params"]), jax.tree.leaves(ctx.state[name]["params"]))]
        assert all(changed), name
    assert float(jnp.exp(ctx.state["alpha"]["params"]["ln_alpha"])) <= 0.2 + 1e-6
    assert np.all(ctx.metrics["alpha/alpha"] <= 0.2 + 1e-6)
    # targets moved by Polyak from the initial online params but stay distinct from the online ones
    t1 = ctx.state["q_target"]["target_params"][0]
    assert jax.tree.structure(t1) == jax.tree.structure(ctx.state["q1"]["params"])
    for target, start, online in zip(jax.tree.leaves(t1), jax.tree.leaves(before["q_target"]["target_params"][0]),
                                     jax.tree.leaves(ctx.state["q1"]["params"])):
        assert not np.array_equal(target, start)  # moved
        assert not np.allclose(target, online)  # by Polyak (tau 0.005), not a hard copy of the online params
    assert t.num_compilations == 1
    for k in ("q1/loss", "q2/loss", "policy/loss", "alpha/loss", "q1/grad_norm", "policy/lr", "alpha/alpha"):
        assert np.all(np.isfinite(ctx.metrics[k])), k


def test_alpha_target_entropy_defaults_to_minus_n_actions_and_accepts_a_schedule():
    pol = GaussianPolicy(3, (8,))
    a = AlphaLoss(policy=pol, n_actions=3)
    assert a.target_entropy == -3.0
    sched = AlphaLoss(policy=pol, n_actions=3, target_entropy=lambda count: -1.0 - count.astype(jnp.float32))
    slot = sched.init_state(jax.random.key(0))
    for count in (0, 1, 7, 250):  # the schedule is read at the loss's optimizer count
        at = {**slot, "opt_state": slot["opt_state"]._replace(count=jnp.asarray(count, jnp.int32))}
        ctx = Context(state={"alpha": at}, batch=None, key=jax.random.key(0), metrics={}, bp_step=count + 1)
        assert float(sched._target_entropy(ctx)) == -1.0 - count


def test_q_target_names_a_badly_shaped_batch():
    qt = QTarget(q=LinearQ(), policy=FixedPolicy())
    qt.init_targets({"w": jnp.asarray(1.0)}, {"w": jnp.asarray(1.0)})
    batch = {"default": {
        "observation": {"obs": jnp.zeros((4, 2))}, "next_observation": {"obs": jnp.zeros((2, 2))},
        "actions": jnp.zeros((4, 1)), "rewards": jnp.zeros((4,)), "masks": jnp.ones((2, 1)),
    }}
    state = {"q_target": qt.init_state(jax.random.key(0)), "policy": {"params": {"b": jnp.asarray(0.0)}},
             "alpha": {"params": {"ln_alpha": jnp.asarray(0.0)}}}
    ctx = Context(state=state, batch=batch, key=jax.random.key(0), metrics={}, bp_step=1)
    with pytest.raises(AssertionError, match=r"q_target: rewards must be \(B\*T, 1\)"):
        qt.begin_batch(ctx)
