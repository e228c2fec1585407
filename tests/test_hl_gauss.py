"""HL-Gauss critics: the histogram transform, the value, the loss, a regression fit, SAC with them."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax.algorithms.hl_gauss import HLGaussQNet, HLGaussSupport, hl_gauss_q_loss
from emote_jax.algorithms.sac import HLGaussQLoss, QLoss, make_sac_callbacks
from emote_jax.context import Context
from emote_jax.errors import ConfigError
from emote_jax.recipes.sac import SACConfig
from emote_jax.trainer import Trainer

SUPPORT = HLGaussSupport(v_min=-10.0, v_max=30.0, num_bins=41, sigma_ratio=0.75)  # bin width 40/41


def test_geometry():
    s = SUPPORT
    assert s.edges.shape == (42,) and s.edges[0] == -10.0 and s.edges[-1] == pytest.approx(30.0)
    np.testing.assert_allclose(np.diff(s.edges), 40 / 41, rtol=1e-5)
    np.testing.assert_allclose(s.centers, s.edges[:-1] + 20 / 41, rtol=1e-5, atol=1e-5)
    assert s.sigma == pytest.approx(0.75 * 40 / 41)


def test_probs_are_the_gaussian_mass_of_each_bin():
    """Against a numerical integral of the truncated Gaussian's density over each bin (not the erf form)."""
    s, y = SUPPORT, 3.3
    probs = np.asarray(s.to_probs(jnp.array([[y]])))[0]
    x = np.linspace(s.v_min, s.v_max, 400_001)
    pdf = np.exp(-0.5 * ((x - y) / s.sigma) ** 2)
    cum = np.concatenate([[0.0], np.cumsum((pdf[1:] + pdf[:-1]) / 2 * np.diff(x))])
    at_edges = np.interp(s.edges, x, cum)
    expected = np.diff(at_edges) / cum[-1]
    np.testing.assert_allclose(probs, expected, atol=2e-6)


@pytest.mark.parametrize("y", [-10.0 + 4 * 0.75 * 40 / 41, -3.7, 0.0, 0.5, 12.345, 30.0 - 4 * 0.75 * 40 / 41])
def test_probs_sum_to_one_and_their_mean_is_the_target(y):
    p = SUPPORT.to_probs(jnp.array([y]))
    assert p.shape == (1, 41)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(p[0] @ SUPPORT.centers) == pytest.approx(y, abs=1e-3)
    assert float(SUPPORT.to_value(jnp.log(p))[0, 0]) == pytest.approx(y, abs=1e-3)


@pytest.mark.parametrize("y,edge", [(-500.0, -10.0), (-10.0001, -10.0), (30.5, 30.0), (1e6, 30.0)])
def test_targets_outside_the_range_are_clamped(y, edge):
    p = SUPPORT.to_probs(jnp.array([[y]]))
    np.testing.assert_allclose(p, SUPPORT.to_probs(jnp.array([[edge]])), atol=1e-7)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)
    # truncated at the edge: the mean sits inside the range, within a sigma of the edge
    mean = float(p[0] @ SUPPORT.centers)
    assert 0.5 * SUPPORT.sigma < abs(mean - edge) < SUPPORT.sigma


def test_value_is_the_expectation_over_the_centers():
    logits = jnp.array([[0.0, math.log(3.0)] + [-1e9] * 39])  # 1/4 on bin 0, 3/4 on bin 1
    c = SUPPORT.centers
    assert float(SUPPORT.to_value(logits)[0, 0]) == pytest.approx(0.25 * c[0] + 0.75 * c[1], rel=1e-6)
    assert SUPPORT.to_value(jnp.zeros((5, 41))).shape == (5, 1)


def test_cross_entropy_by_hand():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 41)), jnp.float32)
    targets = jnp.array([[-3.0], [0.0], [7.5], [99.0]])
    ce = np.asarray(SUPPORT.cross_entropy(logits, targets))
    probs = np.asarray(SUPPORT.to_probs(targets))
    logq = np.asarray(logits) - np.log(np.exp(np.asarray(logits)).sum(-1, keepdims=True))
    np.testing.assert_allclose(ce, -(probs * logq).sum(-1), rtol=1e-5)
    g = jax.grad(lambda t: SUPPORT.cross_entropy(logits, t).sum())(targets)
    assert not np.any(np.asarray(g))  # no gradient into the target


@pytest.mark.parametrize("bad", [dict(v_min=1.0, v_max=1.0), dict(v_min=0.0, v_max=float("nan")),
                                 dict(v_min=0.0, v_max=1.0, num_bins=1), dict(v_min=0.0, v_max=1.0, sigma_ratio=0.0),
                                 dict(v_min=0.0, v_max=1.0, sigma_ratio=float("inf"))])
def test_bad_support_is_refused(bad):
    with pytest.raises(ValueError, match="HLGaussSupport"):
        HLGaussSupport(**bad)


def test_critic_fits_a_regression_problem():
    """Q(obs, a) = 20 sin(2 obs_0) + 10 a_0 on fixed random inputs: the HL-Gauss critic's expectation fits it."""
    support = HLGaussSupport(-40.0, 40.0, num_bins=51)
    net = HLGaussQNet(support, (64, 64))
    rng = np.random.default_rng(0)
    obs = jnp.asarray(rng.uniform(-1.5, 1.5, (512, 3)), jnp.float32)
    act = jnp.asarray(rng.uniform(-1, 1, (512, 1)), jnp.float32)
    y = 20 * jnp.sin(2 * obs[:, :1]) + 10 * act
    params = net.init(jax.random.key(0), obs[:1], act[:1])
    tx = optax.adam(3e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt):
        loss, g = jax.value_and_grad(lambda p: hl_gauss_q_loss(net, p, obs, act, y)[0])(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt, loss

    rmse0 = float(jnp.sqrt(jnp.mean((net.apply(params, obs, act) - y) ** 2)))
    for _ in range(1500):
        params, opt, loss = step(params, opt)
    rmse = float(jnp.sqrt(jnp.mean((net.apply(params, obs, act) - y) ** 2)))
    assert rmse0 > 10.0 and rmse < 1.0, (rmse0, rmse)


def _batch(n: int = 8, obs_dim: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)  # noqa: E731
    return {"observation": {"obs": f(n, obs_dim)}, "next_observation": {"obs": f(n, obs_dim)},
            "actions": jnp.tanh(f(n, 1)), "rewards": f(n, 1), "masks": jnp.ones((n, 1))}


def test_sac_with_hl_gauss_critics_builds_and_trains():
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=1, key=jax.random.key(0), hidden_dims=(32, 32),
                                critic="hl-gauss", v_min=-50.0, v_max=50.0, num_bins=21)
    assert [type(c) for c in cbs[:2]] == [HLGaussQLoss, HLGaussQLoss]
    assert cbs[0].state_dict(cbs[0].init_state(jax.random.key(1)))["network"]["params"]["head"]["kernel"].shape == (32, 21)
    trainer = Trainer(cbs, [{"default": _batch(), "batch_size": 8}] * 4, seed=0)
    m = trainer.train().metrics
    assert np.all(np.isfinite(m["q1/loss"])) and np.all(m["q1/loss"] > 0)
    assert np.all((-50.0 <= m["q1/q_mean"]) & (m["q1/q_mean"] <= 50.0))


def test_hl_gauss_q_loss_value_by_hand():
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=1, key=jax.random.key(0), hidden_dims=(16,),
                                critic="hl-gauss", v_min=-5.0, v_max=5.0, num_bins=11)
    q1 = cbs[0]
    slot = q1.init_state(jax.random.key(0))
    batch = {**_batch(), "q_target": jnp.linspace(-7.0, 7.0, 8)[:, None]}
    ctx = Context(state={"q1": slot}, batch={"default": batch}, key=jax.random.key(0), metrics={}, bp_step=1)
    loss, aux = q1.loss(slot["params"], ctx)
    logits = q1.network.apply(slot["params"], batch["observation"]["obs"], batch["actions"], method=HLGaussQNet.logits)
    sup = q1.network.support
    probs = np.asarray(sup.to_probs(jnp.clip(batch["q_target"], -5.0, 5.0)))
    expected = -(probs * np.asarray(jax.nn.log_softmax(logits))).sum(-1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    # not the MSE loss of the expectation
    mse, _ = QLoss.loss(q1, slot["params"], ctx)
    assert float(mse) != pytest.approx(float(loss), rel=1e-2)


@pytest.mark.parametrize("kw,option", [(dict(), "--v-min"), (dict(v_min=-1.0), "--v-max"),
                                        (dict(v_min=0.0, v_max=-1.0), "--v-max"),
                                        (dict(v_min=0.0, v_max=1.0, num_bins=1), "--bins"),
                                        (dict(v_min=0.0, v_max=1.0, hl_sigma_ratio=-1.0), "--hl-sigma-ratio"),
                                        (dict(v_min=0.0, v_max=1.0, hl_sigma_ratio=float("inf")), "--hl-sigma-ratio"),
                                        (dict(v_min=0.0, v_max=1.0, hl_sigma_ratio=float("nan")), "--hl-sigma-ratio")])
def test_hl_gauss_settings_are_checked_naming_the_option(kw, option):
    with pytest.raises(ConfigError) as e:
        SACConfig(critic="hl-gauss", **kw).validate()
    assert e.value.option == option and option in str(e.value)


def test_unknown_critic_is_refused():
    with pytest.raises(ConfigError, match="--critic"):
        SACConfig(critic="c51").validate()


def test_importance_weights_weight_each_window_and_td_errors_come_back():
    """Prioritized replay: B=2 windows of T=2 rows; row losses weighted by their window's weight."""
    support = HLGaussSupport(-5.0, 5.0, num_bins=11)
    net = HLGaussQNet(support, (8,))
    rng = np.random.default_rng(1)
    obs, act = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), jnp.asarray(rng.normal(size=(4, 1)), jnp.float32)
    target = jnp.array([[1.0], [-2.0], [9.0], [0.5]])
    params = net.init(jax.random.key(0), obs, act)
    w = jnp.array([0.5, 2.0])
    loss, aux = hl_gauss_q_loss(net, params, obs, act, target, w)
    ce = np.asarray(support.cross_entropy(net.apply(params, obs, act, method=HLGaussQNet.logits), target))
    assert float(loss) == pytest.approx(float(np.mean(ce * np.array([0.5, 0.5, 2.0, 2.0]))), rel=1e-5)
    err = np.abs(np.asarray(net.apply(params, obs, act))[:, 0] - np.clip(np.asarray(target)[:, 0], -5, 5))
    np.testing.assert_allclose(aux["td_error"], [err[:2].mean(), err[2:].mean()], rtol=1e-5)
    unweighted, aux0 = hl_gauss_q_loss(net, params, obs, act, target)
    assert "td_error" not in aux0 and float(unweighted) == pytest.approx(float(ce.mean()), rel=1e-5)


def test_an_hl_gauss_critic_behind_a_dict_encoder():
    """Dict observations: the HL-Gauss critic sits behind the per-key encoder (EncodedQ), its loss is the
    cross-entropy of the encoded critic's logits, and SAC's callbacks train with it."""
    from emote_jax import Trainer
    from emote_jax.algorithms import make_sac_callbacks
    from emote_jax.algorithms.hl_gauss import hl_gauss_q_loss
    from emote_jax.networks.encoders import EncodedQ

    spec = {"angle": ((2,), np.float32), "velocity": ((1,), np.float32)}
    cbs, _ = make_sac_callbacks(obs_dim=spec, n_actions=1, key=jax.random.key(0), hidden_dims=(16,), critic="hl-gauss",
                                v_min=-10.0, v_max=10.0, num_bins=11)
    q1 = cbs[0]
    assert isinstance(q1.network, EncodedQ) and q1.network.support.num_bins == 11
    rng = np.random.default_rng(0)
    obs = {"angle": rng.standard_normal((8, 2)).astype(np.float32), "velocity": rng.standard_normal((8, 1)).astype(np.float32)}
    act = rng.uniform(-1, 1, (8, 1)).astype(np.float32)
    target = rng.uniform(-12, 12, (8, 1)).astype(np.float32)
    params = Trainer(cbs, [{"default": {}, "batch_size": 1}]).ctx.state["q1"]["params"]
    loss, _ = hl_gauss_q_loss(q1.network, params, obs, act, jnp.asarray(target))
    logits = np.asarray(q1.network.apply(params, obs, act, method="logits"))
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    probs = np.asarray(q1.network.support.to_probs(jnp.clip(target, -10.0, 10.0)))
    assert float(loss) == pytest.approx(float(-(probs * logq).sum(-1).mean()), rel=1e-5)
    batches = [{"default": {"observation": obs, "next_observation": obs, "actions": act,
                            "rewards": np.zeros((8, 1), np.float32), "masks": np.ones((8, 1), np.float32)},
                "batch_size": 8}] * 3
    cbs, _ = make_sac_callbacks(obs_dim=spec, n_actions=1, key=jax.random.key(0), hidden_dims=(16,), critic="hl-gauss",
                                v_min=-10.0, v_max=10.0, num_bins=11)
    ctx = Trainer(cbs, batches, steps_per_call=3).train()
    assert np.all(np.isfinite(ctx.metrics["q1/loss"])) and np.all(np.isfinite(ctx.metrics["policy/loss"]))
