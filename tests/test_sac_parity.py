"""Where SAC meets the reference's numbers: the policy loss's value (twin-min or Q1 only), the logged
learning rate (the one the update used), and alpha's start (the given value, clamped after the step)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax.algorithms.sac import AlphaLoss, PolicyLoss, make_sac_callbacks
from emote_jax.callback import CallbackError
from emote_jax.context import Context
from emote_jax.loss import LossCallback
from emote_jax.trainer import Trainer


def _batch(b: int = 16, obs_dim: int = 3, n_actions: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation": {"obs": rng.normal(size=(b, obs_dim)).astype(np.float32)},
            "next_observation": {"obs": rng.normal(size=(b, obs_dim)).astype(np.float32)},
            "actions": rng.uniform(-1, 1, size=(b, n_actions)).astype(np.float32),
            "rewards": rng.normal(size=(b, 1)).astype(np.float32), "masks": np.ones((b, 1), np.float32)}


def _policy_loss_by_hand(cbs, state, batch, key, use_min: bool) -> float:
    """The reference's policy loss in NumPy: u = mean + std * eps, a = tanh(u), logp of the squashed
    Gaussian, Q at (obs, a), loss = mean(alpha * logp - Q)."""
    policy, q1 = cbs[2], cbs[0]
    obs = batch["observation"]["obs"]
    mean, std = (np.asarray(x, np.float64) for x in policy.network.apply(state["policy"]["params"], obs))
    eps = np.asarray(jax.random.normal(key, mean.shape, jnp.float32), np.float64)
    u = mean + std * eps
    logp = (-0.5 * eps**2 - np.log(std) - 0.5 * np.log(2 * np.pi) - np.log(1 - np.tanh(u) ** 2)).sum(-1)
    a = jnp.asarray(np.tanh(u), jnp.float32)
    qa = np.asarray(q1.network.apply(state["q1"]["params"], obs, a), np.float64)[:, 0]
    qb = np.asarray(q1.network.apply(state["q2"]["params"], obs, a), np.float64)[:, 0]
    q = np.minimum(qa, qb) if use_min else qa
    alpha = float(np.exp(state["alpha"]["params"]["ln_alpha"]))
    assert not np.allclose(qa, qb)  # the two critics differ, so min and Q1 differ
    return float(np.mean(alpha * logp - q))


@pytest.mark.parametrize("policy_q", ["min", "q1"])
def test_policy_loss_value_by_hand(policy_q):
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(3), hidden_dims=(16, 16),
                                initial_alpha=0.3, max_alpha=1.0, policy_q=policy_q)
    policy = cbs[2]
    assert isinstance(policy, PolicyLoss) and policy.q2 == ("q2" if policy_q == "min" else None)
    state = {cb.name: cb.init_state(jax.random.key(i)) for i, cb in enumerate(cbs)}
    batch, key = _batch(), jax.random.key(7)
    ctx = Context(state=state, batch={"default": batch}, key=key, metrics={}, bp_step=1)
    loss, _ = policy.loss(state["policy"]["params"], ctx)
    expected = _policy_loss_by_hand(cbs, state, batch, key, use_min=policy_q == "min")
    other = _policy_loss_by_hand(cbs, state, batch, key, use_min=policy_q != "min")
    assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert abs(other - expected) > 1e-3


def test_policy_q_is_checked():
    with pytest.raises(ValueError, match="policy_q"):
        make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), policy_q="q2")


def test_the_logged_learning_rate_is_the_one_the_update_used():
    """An optax schedule 1/(count+1) is applied as [1, 1/2, 1/3, 1/4]; it is logged so, not a step behind."""
    sched = lambda count: 1.0 / (count + 1.0)  # noqa: E731
    loss = LossCallback(name="fit", params={"w": jnp.zeros(())}, optimizer=optax.sgd, lr=sched, max_grad_norm=1e9,
                        loss_fn=lambda p, ctx: p["w"])  # gradient 1: each step moves w by -lr
    trainer = Trainer([loss], [{"default": {}, "batch_size": 1}] * 4, steps_per_call=4)
    ctx = trainer.train()
    np.testing.assert_allclose(ctx.metrics["fit/lr"], [1, 1 / 2, 1 / 3, 1 / 4], rtol=1e-6)
    assert float(ctx.state["fit"]["params"]["w"]) == pytest.approx(-(1 + 1 / 2 + 1 / 3 + 1 / 4), rel=1e-6)


def test_initial_alpha_is_used_as_given_then_clamped_after_the_step():
    """The reference's ``ln_alpha=1`` (alpha = e) with max_alpha 0.2: step 1 uses e, the clamp follows."""
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16,),
                                initial_alpha=float(np.e), max_alpha=0.2)
    trainer = Trainer(cbs, [{"default": _batch(seed=s), "batch_size": 16} for s in range(3)], steps_per_call=1)
    assert float(trainer.ctx.state["alpha"]["params"]["ln_alpha"]) == pytest.approx(1.0, abs=1e-6)
    ctx = trainer.train()
    # the last call's alpha (step 3) was clamped after steps 1 and 2; the state stays clamped
    assert float(jnp.exp(ctx.state["alpha"]["params"]["ln_alpha"])) <= 0.2 + 1e-6
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16,),
                                initial_alpha=float(np.e), max_alpha=0.2)  # fresh: the first trainer donated these
    first = Trainer(cbs, [{"default": _batch(), "batch_size": 16}], steps_per_call=1).train()
    assert float(first.metrics["alpha/alpha"][0]) == pytest.approx(np.e, rel=1e-6)  # step 1 used e
    assert float(jnp.exp(first.state["alpha"]["params"]["ln_alpha"])) <= 0.2 + 1e-6


@pytest.mark.parametrize("alpha_logp", ["policy", "updated"])
def test_alphas_logp_is_the_policy_losss_sample_or_a_sample_of_the_updated_policy(alpha_logp):
    """``policy``: alpha's loss is ln_alpha * (-mean(logp) - target_entropy) with the policy loss's own
    mean logp of the same step (SB3, sbx); ``updated``: logp of the updated policy, a different number."""
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16, 16),
                                initial_alpha=0.5, max_alpha=1.0, alpha_logp=alpha_logp, lr_policy=0.05)
    assert cbs[3].logp_source == alpha_logp
    ln_alpha0 = float(np.log(0.5))
    ctx = Trainer(cbs, [{"default": _batch(), "batch_size": 16}], steps_per_call=1).train()
    m = {k: float(np.asarray(v)[0]) for k, v in ctx.metrics.items() if k.startswith(("alpha/", "policy/"))}
    assert m["alpha/target_entropy"] == -2.0
    if alpha_logp == "policy":
        assert m["alpha/entropy"] == pytest.approx(-m["policy/logp_mean"], rel=1e-6)
        assert m["alpha/loss"] == pytest.approx(ln_alpha0 * (-m["policy/logp_mean"] + 2.0), rel=1e-5)
    else:  # the policy moved (lr 0.05): the updated policy's logp is another number
        assert abs(m["alpha/entropy"] + m["policy/logp_mean"]) > 1e-3
        assert m["alpha/loss"] == pytest.approx(ln_alpha0 * (m["alpha/entropy"] + 2.0), rel=1e-5)


def test_alphas_logp_from_the_policy_loss_needs_the_policy_loss_first():
    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16,),
                                alpha_logp="policy")
    q1, q2, policy, alpha, q_target = cbs
    with pytest.raises(CallbackError, match="alpha: logp_source='policy' reads the 'policy/logp_mean' metric"):
        Trainer([q1, q2, alpha, policy, q_target], [{"default": _batch(), "batch_size": 16}]).train()
    with pytest.raises(ValueError, match="logp_source: expected one of"):
        AlphaLoss(policy=policy.network, n_actions=2, logp_source="fresh")
    with pytest.raises(ValueError, match="alpha_logp: expected 'policy'"):
        make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), alpha_logp="fresh")
