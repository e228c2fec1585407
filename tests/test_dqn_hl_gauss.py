"""HL-Gauss Q for DQN (``--critic hl-gauss``): the loss by hand, the greedy policy's NumPy mirror, the
settings' checks, and a short run through train, eval and ONNX-ready evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Context
from emote_jax.algorithms.dqn import HLGaussQLoss, make_dqn_callbacks
from emote_jax.algorithms.hl_gauss import HLGaussSupport
from emote_jax.errors import ConfigError
from emote_jax.networks.dqn import GreedyHostPolicy, HLGaussQNetwork
from emote_jax.recipes.dqn import DQNConfig

SUPPORT = HLGaussSupport(-5.0, 15.0, num_bins=21)


def _net_and_params(seed=0):
    net = HLGaussQNetwork(3, SUPPORT, (16,))
    params = net.init(jax.random.key(seed), jnp.zeros((1, 4)))
    return net, jax.tree.map(lambda x: x * 30.0, params)  # sharper histograms than the near-uniform init


def test_the_q_values_are_the_expectations_of_each_actions_histogram():
    net, params = _net_and_params()
    obs = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    logits = np.asarray(net.apply(params, obs, method=HLGaussQNetwork.logits))  # (6, 3, 21)
    assert logits.shape == (6, 3, 21)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(net.apply(params, obs)), p @ SUPPORT.centers, rtol=1e-5, atol=1e-5)


def test_the_loss_is_the_cross_entropy_of_the_taken_actions_histogram():
    net, params = _net_and_params()
    loss_cb = HLGaussQLoss(q=net, params=params)
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((8, 4)).astype(np.float32)
    actions = rng.integers(0, 3, (8, 1))
    target = rng.uniform(-8.0, 20.0, (8, 1)).astype(np.float32)  # some outside the range: clamped
    batch = {"default": {"observation": {"obs": obs}, "actions": actions, "q_target": target}}
    ctx = Context(state={}, batch=jax.tree.map(jnp.asarray, batch), key=jax.random.key(0), metrics={}, bp_step=1)
    loss, aux = loss_cb.loss(params, ctx)
    logits = np.asarray(net.apply(params, obs, method=HLGaussQNetwork.logits))[np.arange(8), actions[:, 0]]
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    probs = np.asarray(SUPPORT.to_probs(jnp.clip(target, -5.0, 15.0)))
    assert float(loss) == pytest.approx(float(-(probs * logq).sum(-1).mean()), rel=1e-5)
    q_taken = np.asarray(net.apply(params, obs))[np.arange(8), actions[:, 0]]
    assert float(aux["q_mean"]) == pytest.approx(float(q_taken.mean()), rel=1e-5)


def test_the_host_mirror_acts_like_the_network():
    net, params = _net_and_params(seed=2)
    host = GreedyHostPolicy(net)
    obs = np.random.default_rng(3).standard_normal((200, 4)).astype(np.float32)
    hp = host.to_host(params)
    np.testing.assert_allclose(host.q_values(hp, obs), np.asarray(net.apply(params, obs)), rtol=1e-4, atol=1e-4)
    actions = host.act(hp, obs, np.random.default_rng(0))
    np.testing.assert_array_equal(actions, np.argmax(np.asarray(net.apply(params, obs)), -1))
    assert len(np.unique(actions)) == 3


def test_make_dqn_callbacks_builds_the_hl_gauss_loss_and_checks_its_range():
    cbs, net = make_dqn_callbacks(obs_dim=4, n_actions=2, key=jax.random.key(0), critic="hl-gauss", v_min=0.0,
                                  v_max=100.0, num_bins=11)
    assert isinstance(cbs[0], HLGaussQLoss) and isinstance(net, HLGaussQNetwork) and net.support.num_bins == 11
    with pytest.raises(ValueError, match="v_min and v_max"):
        make_dqn_callbacks(obs_dim=4, n_actions=2, key=jax.random.key(0), critic="hl-gauss")
    with pytest.raises(ConfigError, match="--v-min"):
        DQNConfig(critic="hl-gauss").validate()
    with pytest.raises(ConfigError, match="--critic 'c51' is not valid"):
        DQNConfig(critic="c51").validate()


def test_emote_jax_trains_and_evaluates_an_hl_gauss_dqn(tmp_path, capsys):
    from emote_jax.cli import main

    run = tmp_path / "run"
    assert main(["train", "--algo", "dqn", "--critic", "hl-gauss", "--v-min", "0", "--v-max", "100", "--bins", "51",
                 "--hidden", "32,32", "--steps", "1500", "--warmup-steps", "200", "--eval-interval", "0",
                 "--eval-episodes", "2", "--no-log-metrics", "--checkpoint-interval", "0", "--run-dir", str(run)]) == 0
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    assert "mean return" in capsys.readouterr().out
