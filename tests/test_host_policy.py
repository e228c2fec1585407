"""GaussianHostPolicy: the NumPy mirror of the Flax GaussianPolicy, and the collectors acting with it."""

from __future__ import annotations

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from emote_jax import CallbackError, Trainer
from emote_jax.algorithms import make_sac_callbacks
from emote_jax.collectors import GymCollector, ObservationShapeError, ThreadedGymCollector, memory_spec
from emote_jax.context import Context
from emote_jax.envs import HitTheMiddle
from emote_jax.memory import MemoryLoader, MemoryProxy, MemoryWarmup, ReplayTable
from emote_jax.networks.host import GaussianHostPolicy, HostPolicy
from emote_jax.networks.sac import GaussianPolicy, mode_action


def _policy(obs_dim=5, n_actions=3, hidden=(32, 16), seed=0):
    net = GaussianPolicy(n_actions, hidden)
    params = net.init(jax.random.key(seed), jnp.zeros((1, obs_dim)))
    # the init's head gain of 0.01 makes mean ~ 0 and std ~ 1: scale the heads so that the clamps matter
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300.0 if any(getattr(p, "key", None) in ("mean", "log_std") for p in path) else x, params
    )
    return net, params


def test_sampled_actions_equal_the_flax_forward_with_the_same_noise():
    net, params = _policy()
    obs = np.random.default_rng(1).standard_normal((64, 5)).astype(np.float32) * 3
    host = GaussianHostPolicy(net)
    hp = host.to_host(params)
    actions = host.act(hp, obs, np.random.default_rng(7))
    eps = np.random.default_rng(7).standard_normal((64, 3), dtype=np.float32)  # what act drew
    mean, std = net.apply(params, obs)
    expected = np.tanh(np.asarray(mean) + np.asarray(std) * eps)
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-5)  # float32 rounding of mean + std * eps
    assert actions.shape == (64, 3) and actions.dtype == np.float32
    # the clamps were exercised: some means at +-5, some log-stds at the bounds
    assert np.any(np.abs(np.asarray(mean)) == 5.0)
    assert np.any(np.asarray(std) == pytest.approx(np.exp(2.0))) or np.any(np.asarray(std) < 1e-8)


def test_sampled_actions_follow_the_policys_squashed_gaussian():
    """20,000 draws at one observation: atanh(action) standardised by the Flax policy's (mean, std) is
    N(0, 1) per action dimension (KS test), with mean and variance within 4 standard errors."""
    from scipy import stats

    net = GaussianPolicy(3, (32, 16))
    params = net.init(jax.random.key(4), jnp.zeros((1, 5)))
    params = jax.tree_util.tree_map_with_path(  # means of order 1 and stds below 1, away from the clamps
        lambda path, x: x * 40.0 if any(getattr(p, "key", None) in ("mean", "log_std") for p in path) else x, params)
    obs = np.random.default_rng(3).standard_normal((1, 5)).astype(np.float32)
    mean, std = (np.asarray(x, np.float64)[0] for x in net.apply(params, obs))
    assert np.all(np.abs(mean) > 0.05) and np.all(std < 0.95) and np.all(np.abs(mean) + 3 * std < 3.0)
    host = GaussianHostPolicy(net)
    n = 20_000
    actions = host.act(host.to_host(params), np.repeat(obs, n, axis=0), np.random.default_rng(11))
    z = (np.arctanh(actions.astype(np.float64)) - mean) / std
    for d in range(3):
        assert abs(z[:, d].mean()) < 4 / np.sqrt(n), d
        assert abs(z[:, d].var() - 1.0) < 4 * np.sqrt(2 / n), d
        assert stats.kstest(z[:, d], "norm").pvalue > 1e-3, d


def test_deterministic_actions_equal_mode_action():
    net, params = _policy(seed=3)
    obs = np.random.default_rng(2).standard_normal((16, 5)).astype(np.float32)
    host = GaussianHostPolicy(net, deterministic=True)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    actions = host.act(host.to_host(params), obs, rng)
    np.testing.assert_allclose(actions, np.asarray(mode_action(net.apply(params, obs)[0])), rtol=1e-5, atol=1e-6)
    assert rng.bit_generator.state == state  # the mode draws no noise


def test_to_host_copies_and_accepts_the_inner_params_dict():
    net, params = _policy()
    host = GaussianHostPolicy(net)
    a = host.to_host(params)
    b = host.to_host(params["params"])
    for (wa, ba), (wb, bb) in zip(a["layers"] + [a["mean"], a["log_std"]], b["layers"] + [b["mean"], b["log_std"]]):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
        assert wa.flags.writeable and wa.flags.owndata  # a copy, not a view of a device buffer


def test_wrong_parameters_and_observations_give_clear_errors():
    net, params = _policy()
    host = GaussianHostPolicy(net)
    with pytest.raises(ValueError, match=r"expected GaussianPolicy parameters .*missing 'MLP_0'"):
        host.to_host({"params": {"Dense_0": {}}})
    other_net, other = _policy(hidden=(32, 8))
    with pytest.raises(ValueError, match=r"expected MLP_0/Dense_1 with 16 outputs, got kernel \(32, 8\)"):
        host.to_host(other)
    with pytest.raises(ValueError, match=r"expected observations \(N, 5\), got shape \(4, 2\)"):
        host.act(host.to_host(params), np.zeros((4, 2), np.float32), np.random.default_rng(0))
    with pytest.raises(TypeError, match="mirrors emote_jax.networks.sac.GaussianPolicy"):
        GaussianHostPolicy(object())


def _ctx(params, bp_step=1):
    return Context(state={"policy": {"params": params}}, batch=None, key=jax.random.key(0), metrics={}, bp_step=bp_step)


class CountingHost(GaussianHostPolicy):
    def __init__(self, net):
        super().__init__(net)
        self.copies = 0

    def to_host(self, params):
        self.copies += 1
        return super().to_host(params)


def test_collector_copies_params_once_per_new_params_and_stores_the_actions_it_took():
    net, params = _policy(obs_dim=2, n_actions=1, hidden=(16,))
    env = SyncVectorEnv([HitTheMiddle for _ in range(3)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(1000, obs_spec, action_shape)
    host = CountingHost(net)
    col = GymCollector(env, host, MemoryProxy(table), seed=5)
    col.begin_training(_ctx(params))
    copies_at_start = host.copies
    new_params = jax.tree.map(lambda x: x + 0.0, params)  # equal values, a new object: as after a compiled call
    for step in range(1, 7):  # the same params object for 3 steps, then the new one for 3
        col.end_cycle(_ctx(params if step <= 3 else new_params, step))
    # steps 1-3 reuse the copy begin_training made of the same params; the new params are copied once
    assert host.copies - copies_at_start == 1
    # the stored actions are the policy's on the stored observations, with the collector's noise
    batch = table.sample(len(table), 1)
    assert len(table) == 5 * 3  # the 6th step's transitions wait for their next add (no episode ended yet)
    mean, std = net.apply(params, batch["observation"]["obs"])
    z = (np.arctanh(np.clip(batch["actions"], -1 + 1e-6, 1 - 1e-6)) - np.asarray(mean)) / np.asarray(std)
    assert np.all(np.abs(z) < 6)  # plausible N(0, 1) noise for every stored action
    env.close()


def test_collector_rng_draws_are_reproducible_and_the_start_check_draws_none():
    def run(seed):
        net, params = _policy(obs_dim=2, n_actions=1, hidden=(16,))
        env = SyncVectorEnv([HitTheMiddle for _ in range(2)])
        obs_spec, action_shape = memory_spec(env)
        table = ReplayTable(1000, obs_spec, action_shape)
        col = GymCollector(env, GaussianHostPolicy(net), MemoryProxy(table), seed=seed)
        col.begin_training(_ctx(params))
        for step in range(1, 5):
            col.end_cycle(_ctx(params, step))
        env.close()
        return table.sample(len(table), 1)["actions"], col

    a, col = run(0)
    np.testing.assert_array_equal(a, run(0)[0])
    assert not np.allclose(np.sort(a.ravel()), np.sort(run(1)[0].ravel()))
    # only the 4 steps drew noise (2 envs x 1 action each): the begin_training check restored the generator
    fresh = np.random.default_rng(0)
    fresh.standard_normal((2, 1), dtype=np.float32)
    for _ in range(3):
        fresh.standard_normal((2, 1), dtype=np.float32)
    assert col._rng.bit_generator.state == fresh.bit_generator.state


def test_observation_mismatch_is_refused_before_compiling():
    env = SyncVectorEnv([HitTheMiddle for _ in range(2)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(500, obs_spec, action_shape)
    loader = MemoryLoader(table, 16)
    cbs, policy_net = make_sac_callbacks(obs_dim=3, n_actions=1, key=jax.random.key(0), hidden_dims=(8,))
    collector = GymCollector(env, GaussianHostPolicy(policy_net), MemoryProxy(table), warmup_steps=20)
    trainer = Trainer([*cbs, collector, MemoryWarmup(loader)], loader)
    with pytest.raises(CallbackError, match=r"cannot act on the env's observations") as e:
        trainer.train()
    assert isinstance(e.value.__cause__, ObservationShapeError)
    assert trainer.num_compilations == 0
    env.close()


@pytest.mark.parametrize("threaded", [False, True])
def test_sac_trains_with_a_host_policy_inside_the_trainer(threaded):
    env = SyncVectorEnv([HitTheMiddle for _ in range(2)])
    obs_spec, action_shape = memory_spec(env)
    table = ReplayTable(2000, obs_spec, action_shape)
    loader = MemoryLoader(table, 32)
    cbs, policy_net = make_sac_callbacks(obs_dim=2, n_actions=1, key=jax.random.key(0), hidden_dims=(16,))
    if threaded:
        collector = ThreadedGymCollector(env, GaussianHostPolicy(policy_net), MemoryProxy(table), warmup_steps=50,
                                         random_warmup=True, max_env_steps_per_bp_step=1.0)
    else:
        collector = GymCollector(env, GaussianHostPolicy(policy_net), MemoryProxy(table), warmup_steps=50,
                                 random_warmup=True)

    class Stop:
        def __init__(self):
            self.n = 0

        def __iter__(self):
            for b in loader:
                self.n += 1
                if self.n > 40:
                    return
                yield b

    trainer = Trainer([*cbs, collector, MemoryWarmup(loader)], Stop(), steps_per_call=4)
    trainer.train()
    assert trainer.bp_step - 1 == 40
    assert collector.vector_steps >= 50 + (40 if not threaded else 1)
    assert isinstance(collector._host_policy, HostPolicy)
    env.close()
