"""The reference's BackPropStepsTerminator and test checks."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax.callback import CallbackError
from emote_jax.callbacks import BackPropStepsTerminator, FinalLossTestCheck, FinalRewardTestCheck, TestCheckError
from emote_jax.loss import LossCallback
from emote_jax.trainer import Trainer


def _fit(target: float = 3.0) -> LossCallback:
    """(w - target)^2, minimised by SGD: the loss falls every step."""
    return LossCallback(name="fit", params={"w": jnp.zeros(())}, optimizer=optax.sgd, lr=0.1,
                        loss_fn=lambda p, ctx: (p["w"] - target) ** 2)


def _batches():
    while True:
        yield {"default": {"reward": np.full((4, 1), 0.5, np.float32)}, "batch_size": 4}


@pytest.mark.parametrize("k,n,ran", [(1, 7, 7), (4, 8, 8), (4, 6, 8)])
def test_terminator_ends_after_the_call_with_step_n(k, n, ran):
    t = Trainer([_fit(), BackPropStepsTerminator(n)], _batches(), steps_per_call=k)
    ctx = t.train()
    assert t.bp_step - 1 == ran and t.interrupted_by is None
    assert ctx.state["trainer"]["bp_step"] == ran + 1


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_terminator_refuses_a_bad_count(bad):
    with pytest.raises(ValueError, match="bp_steps"):
        BackPropStepsTerminator(bad)


def test_final_loss_check_passes_and_ends_training_when_the_loss_is_low():
    t = Trainer([_fit(), FinalLossTestCheck(["fit"], [0.01], test_length=40)], _batches())
    ctx = t.train()
    assert t.bp_step - 1 == 40 and float(ctx.metrics["fit/loss"][-1]) <= 0.01


def test_final_loss_check_fails_naming_the_loss_and_the_cutoff():
    fit = _fit()
    t = Trainer([fit, FinalLossTestCheck([fit], [1e-6], test_length=5)], _batches())
    with pytest.raises(CallbackError) as e:
        t.train()
    assert isinstance(e.value.original, TestCheckError)
    assert "'fit'" in str(e.value) and "cutoff 1e-06" in str(e.value) and "bp step 5" in str(e.value)


def test_final_loss_check_wants_one_cutoff_per_loss():
    with pytest.raises(ValueError, match="2 callbacks but 1 cutoffs"):
        FinalLossTestCheck(["a", "b"], [1.0], test_length=3)


class _Reward(LossCallback):
    def loss(self, params, ctx):
        return (params["w"] ** 2, {"reward": ctx.batch["default"]["reward"].mean()})


@pytest.mark.parametrize("cutoff,ok", [(0.4, True), (0.6, False)])
def test_final_reward_check(cutoff, ok):
    cb = _Reward(name="r", params={"w": jnp.ones(())})
    check = FinalRewardTestCheck(cutoff, test_length=3, metric="r/reward")
    t = Trainer([cb, check], _batches())
    if ok:
        t.train()
        assert t.bp_step - 1 == 3
    else:
        with pytest.raises(CallbackError, match="r/reward is 0.5 at bp step 3, below the cutoff 0.6"):
            t.train()


def test_a_missing_metric_is_named():
    t = Trainer([_fit(), FinalRewardTestCheck(0.0, test_length=2)], _batches())
    with pytest.raises(CallbackError, match="no metric 'q_target/reward_mean'"):
        t.train()
