"""DQN against hand computations: the target (n-step, terminal/truncated/mid-episode, double or not), the
TD losses, the target update (hard copy every N steps, Polyak), epsilon-greedy frequencies, the host
mirror of the Q network, and the collector's Discrete actions."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax import Context, HostCallback, Trainer
from emote_jax.algorithms.dqn import QLoss, QTarget, bootstrap_value, make_dqn_callbacks, td_loss
from emote_jax.collectors import DiscreteActions, GymCollector, PolicyOutputError, memory_spec
from emote_jax.collectors.actions import HostSchedule, epsilon_greedy
from emote_jax.errors import ConfigError
from emote_jax.memory import MemoryProxy, ReplayTable
from emote_jax.networks.dqn import GreedyHostPolicy, QNetwork, greedy_policy
from emote_jax.recipes.dqn import DQNConfig


class LinearQ:
    """A contract network: Q(o) = o @ W, (B, 2) -> (B, 3)."""

    def init(self, key, *inputs):
        return {"w": jnp.zeros((2, 3))}

    def apply(self, params, obs):
        return obs @ params["w"]


W_ONLINE = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]], np.float32)
W_TARGET = np.array([[0.5, 1.0, -0.5], [2.0, -1.0, 0.25]], np.float32)


def hand_target(rewards, next_obs, masks, gamma, scale, double):
    """The n-step DQN target of each position, by recursion in float64."""
    b, t = rewards.shape
    out = np.zeros((b, t))
    for i in range(b):
        q_t = next_obs[i].astype(np.float64) @ W_TARGET
        v = q_t[np.argmax(next_obs[i] @ W_ONLINE)] if double else q_t.max()
        running = masks[i, 0] * v
        for j in reversed(range(t)):
            running = scale * rewards[i, j] + gamma * running
            out[i, j] = running
    return out.reshape(-1, 1)


@pytest.mark.parametrize("double", [False, True])
def test_q_target_matches_a_hand_computation(double):
    gamma, scale, t = 0.9, 2.0, 3
    qt = QTarget(q_net=LinearQ(), target_params={"w": jnp.asarray(W_TARGET)}, gamma=gamma, reward_scale=scale,
                 double_dqn=double)
    # 3 rollouts of length 3: the first ends in a true termination, the second in a time-limit truncation
    # (bootstrapped all the same), the third mid-episode
    rewards = np.array([[1.0, 2.0, -1.0], [3.0, 4.0, 0.5], [-1.0, 0.5, 2.0]], np.float32)
    next_obs = np.array([[2.0, 1.0], [1.0, -3.0], [-3.0, 0.5]], np.float32)
    masks = np.array([[0.0], [1.0], [1.0]], np.float32)
    batch = {"default": {
        "observation": {"obs": np.zeros((3 * t, 2), np.float32)}, "next_observation": {"obs": next_obs},
        "actions": np.zeros((3 * t,), np.int64), "rewards": rewards.reshape(-1, 1), "masks": masks,
        "terminated": 1.0 - masks, "truncated": np.array([[0.0], [1.0], [0.0]], np.float32),
    }}
    state = {"q_target": qt.init_state(jax.random.key(0)), "q": {"params": {"w": jnp.asarray(W_ONLINE)}}}
    ctx = Context(state=state, batch=jax.tree.map(jnp.asarray, batch), key=jax.random.key(0), metrics={}, bp_step=1)
    got = np.asarray(jax.jit(qt.begin_batch)(ctx).batch["default"]["q_target"])
    expected = hand_target(rewards, next_obs, masks, gamma, scale, double)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # not vacuous: double DQN changes the second rollout's bootstrap, termination removes the first's
    assert not np.allclose(expected, hand_target(rewards, next_obs, masks, gamma, scale, not double))
    assert not np.allclose(expected, hand_target(rewards, next_obs, np.ones_like(masks), gamma, scale, double))


def test_bootstrap_value_is_the_max_or_the_target_value_of_the_online_argmax():
    q_target = jnp.array([[1.0, 5.0, 3.0], [0.0, -1.0, 2.0]])
    q_online = jnp.array([[9.0, 0.0, 1.0], [0.0, 1.0, 0.5]])
    np.testing.assert_array_equal(bootstrap_value(q_target), [[5.0], [2.0]])
    np.testing.assert_array_equal(bootstrap_value(q_target, q_online), [[1.0], [-1.0]])


def test_td_losses_by_hand():
    q, target = jnp.array([[1.0], [0.0], [3.0]]), jnp.array([[0.5], [2.0], [0.0]])  # errors 0.5, -2, 3
    assert float(td_loss(q, target, "mse")) == pytest.approx((0.25 + 4 + 9) / 3, rel=1e-6)
    assert float(td_loss(q, target, "huber")) == pytest.approx((0.125 + 1.5 + 2.5) / 3, rel=1e-6)
    assert float(td_loss(q, target, "huber", huber_delta=2.0)) == pytest.approx((0.125 + 2 + 4) / 3, rel=1e-6)
    w = jnp.array([1.0, 0.5, 2.0])
    assert float(td_loss(q, target, "mse", weights=w)) == pytest.approx((0.25 + 2 + 18) / 3, rel=1e-6)
    with pytest.raises(ValueError, match="expected kind in"):
        td_loss(q, target, "l1")


def test_q_loss_takes_the_q_value_of_the_stored_action():
    loss = QLoss(q=LinearQ(), params={"w": jnp.asarray(W_ONLINE)}, loss="mse")
    obs = np.array([[1.0, 2.0], [0.5, -1.0]], np.float32)
    batch = {"default": {"observation": {"obs": jnp.asarray(obs)}, "actions": jnp.array([2, 0], jnp.int32),
                         "q_target": jnp.array([[1.0], [0.0]])}}
    ctx = Context(state={"q": loss.init_state(jax.random.key(0))}, batch=batch, key=jax.random.key(0), metrics={},
                  bp_step=1)
    value, aux = loss.loss({"w": jnp.asarray(W_ONLINE)}, ctx)
    q = obs @ W_ONLINE
    assert float(value) == pytest.approx(((q[0, 2] - 1.0) ** 2 + (q[1, 0] - 0.0) ** 2) / 2, rel=1e-6)
    assert float(aux["q_mean"]) == pytest.approx((q[0, 2] + q[1, 0]) / 2, rel=1e-6)


# ---- the target network's updates, inside the compiled step ---------------------------------------------


def fixed_batches(obs_dim=3, n_actions=2, size=8):
    rng = np.random.default_rng(0)
    while True:
        yield {"default": {
            "observation": {"obs": rng.normal(size=(size, obs_dim)).astype(np.float32)},
            "next_observation": {"obs": rng.normal(size=(size, obs_dim)).astype(np.float32)},
            "actions": rng.integers(0, n_actions, size=size), "rewards": rng.normal(size=(size, 1)).astype(np.float32),
            "masks": np.ones((size, 1), np.float32)}, "batch_size": size}


class Record(HostCallback):
    """After every step: (bp_step, online params, target params) as host copies."""

    def __init__(self):
        super().__init__(name="record", cycle=1, order=50)
        self.rows = []

    def end_cycle(self, ctx):
        copy = lambda t: jax.tree.map(lambda x: np.array(x, copy=True), t)  # noqa: E731
        self.rows.append((ctx.bp_step, copy(ctx.state["q"]["params"]), copy(ctx.state["q_target"]["target_params"])))


def run_updates(steps, **hp):
    callbacks, _ = make_dqn_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(1), hidden_dims=(8,), lr=1e-2, **hp)
    rec = Record()
    trainer = Trainer([*callbacks, rec], fixed_batches())
    init = jax.tree.map(np.asarray, trainer.ctx.state["q"]["params"])
    trainer.train(lambda: trainer.bp_step > steps)
    return init, rec.rows


def leaves(tree):
    return jax.tree.leaves(tree)


def test_the_hard_copy_happens_exactly_every_n_steps():
    init, rows = run_updates(7, tau=1.0, target_update_interval=3)
    assert [r[0] for r in rows] == list(range(1, 8))
    last_copy = init
    for step, online, target in rows:
        if step % 3 == 0:
            last_copy = online
        assert all(np.array_equal(a, b) for a, b in zip(leaves(target), leaves(last_copy))), step
        # the online network moved every step, so the target differs from it between copies
        assert (step % 3 == 0) == all(np.array_equal(a, b) for a, b in zip(leaves(target), leaves(online))), step


def test_polyak_updates_follow_the_formula():
    init, rows = run_updates(4, tau=0.1, target_update_interval=1)
    expected = init
    for _, online, target in rows:
        expected = jax.tree.map(lambda t, o: 0.9 * t + 0.1 * o, expected, online)
        for a, b in zip(leaves(target), leaves(expected)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


# ---- acting ---------------------------------------------------------------------------------------------


def test_epsilon_greedy_frequencies_follow_the_schedule():
    n_actions, n = 4, 40_000
    actions = DiscreteActions(gymnasium.spaces.Discrete(n_actions), epsilon=optax.linear_schedule(1.0, 0.1, 1000))
    rng = np.random.default_rng(0)
    greedy = np.full(n, 3, np.int64)
    for step, eps in [(0, 1.0), (250, 0.775), (500, 0.55), (1000, 0.1), (5000, 0.1)]:
        assert actions.epsilon(step) == pytest.approx(eps, abs=1e-6)
        out = actions.explore(greedy, step, rng)
        p_other = eps * (n_actions - 1) / n_actions  # a random action is the greedy one 1/n of the time
        assert abs(np.mean(out != 3) - p_other) < 4 * np.sqrt(p_other * (1 - p_other) / n) + 1e-9, step
        counts = np.bincount(out[out != 3], minlength=n_actions)[:3]
        assert counts.min() > 0.9 * counts.mean()  # the random ones are uniform over the others
    assert np.array_equal(epsilon_greedy(greedy[:10], 0.0, n_actions, rng), greedy[:10])


def test_the_host_schedule_equals_the_optax_schedule():
    schedule = optax.linear_schedule(1.0, 0.05, 10_000)
    host = HostSchedule(schedule, block=256)
    for step in [0, 1, 255, 256, 257, 9_999, 10_000, 12_345, 3, 100_000]:
        assert host.value(step) == pytest.approx(float(schedule(step)), rel=1e-6), step  # XLA may fuse differently
    # a value depends on the step alone, not on which block was evaluated before (exact resume needs that)
    assert [HostSchedule(schedule, block=256).value(s) for s in (9_999, 300)] == [host.value(9_999), host.value(300)]


def test_the_host_mirror_equals_the_jitted_q_network():
    net = QNetwork(3, (16, 16))
    params = net.init(jax.random.key(0), jnp.zeros((1, 5)))
    obs = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    host = GreedyHostPolicy(net)
    hp = host.to_host(params)
    np.testing.assert_allclose(host.q_values(hp, obs), np.asarray(net.apply(params, obs)), rtol=1e-5, atol=1e-6)
    jitted = np.asarray(jax.jit(greedy_policy(net))(params, obs, jax.random.key(0)))
    np.testing.assert_array_equal(host.act(hp, obs, np.random.default_rng(0)), jitted)
    assert len(set(jitted.tolist())) > 1  # the comparison is not between constant policies
    with pytest.raises(ValueError, match=r"expected observations \(N, 5\)"):
        host.act(hp, obs[:, :4], np.random.default_rng(0))


def test_the_collector_stores_discrete_actions_as_int64_and_explores():
    env = gymnasium.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    actions = DiscreteActions(env.single_action_space, epsilon=0.5)
    obs_spec, action_shape = memory_spec(env, actions)
    table = ReplayTable(500, obs_spec, action_shape, action_dtype=actions.dtype)
    net = QNetwork(2, (8,))
    params = net.init(jax.random.key(0), jnp.zeros((1, 4)))
    collector = GymCollector(env, GreedyHostPolicy(net), MemoryProxy(table), params_slot="q", actions=actions,
                             warmup_steps=20, random_warmup=True)
    ctx = Context(state={"q": {"params": params}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=1)
    collector.begin_training(ctx)
    for _ in range(100):
        collector.end_cycle(ctx)
    collector.end_training(ctx)
    env.close()
    assert action_shape == () and table.action_dtype == np.int64
    stored = table.sample(200)["actions"]
    assert stored.shape == (200,) and stored.dtype == np.int64 and set(np.unique(stored)) == {0, 1}

    class OutOfRange(GreedyHostPolicy):
        def act(self, host_params, obs, rng):
            return np.full(obs.shape[0], 2, np.int64)

    env = gymnasium.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    bad = GymCollector(env, OutOfRange(net), MemoryProxy(ReplayTable(50, obs_spec, (), action_dtype=np.int64)),
                       params_slot="q", actions=DiscreteActions(env.single_action_space))
    with pytest.raises(PolicyOutputError, match=r"returned action 2 .* expected indices in \[0, 2\)"):
        bad.begin_training(ctx)
    env.close()


def test_discrete_actions_go_to_the_env_with_the_space_start():
    actions = DiscreteActions(gymnasium.spaces.Discrete(3, start=-1))
    np.testing.assert_array_equal(actions.to_env(np.array([0, 1, 2])), [-1, 0, 1])
    with pytest.raises(TypeError, match="needs a gymnasium Discrete action space"):
        DiscreteActions(gymnasium.spaces.Box(-1, 1, (2,)))


# ---- config --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, option", [
    ("epsilon_end", 1.5, "--epsilon-end"), ("target_update_interval", 0, "--target-update-interval"),
    ("tau", 0.0, "--tau"), ("loss", "l1", "--loss"), ("lr", -1.0, "--lr"), ("hidden_dims", (), "--hidden"),
    ("algo", "sac", "--algo"),
])
def test_dqn_config_errors_name_the_option(field, value, option):
    with pytest.raises(ConfigError, match=rf"^{option} .* is not valid: expected"):
        DQNConfig(**{field: value}).validate()
