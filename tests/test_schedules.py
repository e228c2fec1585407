"""The reference's schedules as optax schedules, checked count by count against stepping oracles written
from the reference's definitions, and BPStepScheduler driving a learning rate, a target entropy and
bad paths."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from emote_jax import LossCallback, Trainer
from emote_jax.schedules import (
    BPStepScheduler,
    bp_step_schedule,
    constant_schedule,
    cosine_annealing_schedule,
    cosine_annealing_warm_restarts_schedule,
    cyclic_schedule,
    linear_schedule,
    truncated_linear,
)


# ---- oracles: the reference's step() semantics (value after the (c + 1)-th step() is f(c)) ----------------
class Linear:
    def __init__(self, initial, final, steps, staircase=None):
        self.a, self.b, self.n, self.k, self.c, self.value = initial, final, steps, staircase, 0, initial

    def step(self):
        f = self.c / self.n
        if self.k:
            f = math.floor(f * self.k) / self.k
        self.value = self.a + min(f, 1.0) * (self.b - self.a)
        self.c += 1


class Cyclic:
    def __init__(self, initial, final, half, mode):
        self.a, self.b, self.h, self.mode, self.c, self.value = initial, final, half, mode, 0, initial

    def step(self):
        cycle = math.floor(1 + self.c / (2 * self.h))
        x = math.fabs(self.c / self.h - 2 * cycle + 1)
        scale = 1 if self.mode == "triangular" else 1 / (2.0 ** (cycle - 1))
        self.value = self.a + (self.b - self.a) * max(0, 1 - x) * scale
        self.c += 1


class CosineRecursive:
    """PyTorch's CosineAnnealingLR recursion, as the reference's CosineAnnealing steps it."""

    def __init__(self, initial, final, steps):
        self.a, self.b, self.n, self.c, self.value = initial, final, steps, 0, initial

    def step(self):
        if self.c > 0:
            if (self.c - 1 - self.n) % (2 * self.n) == 0:
                self.value += (self.a - self.b) * (1 - math.cos(math.pi / self.n)) / 2
            else:
                self.value = ((1 + math.cos(math.pi * self.c / self.n)) / (1 + math.cos(math.pi * (self.c - 1) / self.n))
                              * (self.value - self.b) + self.b)
        self.c += 1


class WarmRestarts:
    def __init__(self, initial, final, steps):
        self.a, self.b, self.n, self.c, self.value = initial, final, steps, 0, initial

    def step(self):
        if self.c >= self.n:
            self.c %= self.n
        self.value = self.b + (self.a - self.b) * (1 + math.cos(math.pi * self.c / self.n)) / 2
        self.c += 1


CASES = [
    (linear_schedule(1.0, 0.1, 40), Linear(1.0, 0.1, 40)),
    (linear_schedule(-2.0, -6.0, 30, use_staircase=True, staircase_steps=3), Linear(-2.0, -6.0, 30, staircase=3)),
    (cyclic_schedule(0.1, 1.0, 7), Cyclic(0.1, 1.0, 7, "triangular")),
    (cyclic_schedule(0.1, 1.0, 7, mode="triangular2"), Cyclic(0.1, 1.0, 7, "triangular2")),
    (cosine_annealing_schedule(1.0, 0.2, 13), CosineRecursive(1.0, 0.2, 13)),
    (cosine_annealing_warm_restarts_schedule(1.0, 0.2, 13), WarmRestarts(1.0, 0.2, 13)),
]


@pytest.mark.parametrize("i", range(len(CASES)))
def test_each_schedule_matches_the_references_values_count_by_count(i):
    schedule, oracle = CASES[i]
    counts = np.arange(100)
    expected = []
    for _ in counts:
        oracle.step()
        expected.append(oracle.value)
    np.testing.assert_allclose(np.asarray(jax.jit(schedule)(counts)), expected, rtol=2e-5, atol=2e-6)
    assert float(schedule(0)) == pytest.approx(expected[0], abs=1e-6)  # a Python int count works too


def test_constant_and_truncated_linear():
    np.testing.assert_array_equal(constant_schedule(0.5)(jnp.arange(3)), [0.5, 0.5, 0.5])
    f = truncated_linear(10, 20, 1.0, 3.0)
    np.testing.assert_allclose(f(jnp.array([0, 10, 15, 20, 99])), [1.0, 1.0, 2.0, 3.0, 3.0], rtol=1e-6)
    down = bp_step_schedule(0, 4, 8.0, 0.0)  # value_min above value_max: still clamped between them
    np.testing.assert_allclose(down(jnp.array([0, 1, 4, 9])), [8.0, 6.0, 0.0, 0.0], rtol=1e-6)
    assert float(truncated_linear(5, 5, 1.0, 7.0)(3)) == 7.0  # the reference: max_y when the x range is empty


@pytest.mark.parametrize("make", [lambda: linear_schedule(1, 0, 0), lambda: cyclic_schedule(1, 0, 5, mode="sine"),
                                  lambda: cosine_annealing_schedule(1, 0, -3), lambda: linear_schedule(1, 0, 5, True, 0)])
def test_bad_schedule_arguments_are_refused(make):
    with pytest.raises(ValueError, match="expected"):
        make()


def _fit(lr=1.0):
    """A loss of gradient 1 on ``w``: each step moves w by -lr."""
    return LossCallback(name="fit", params={"w": jnp.zeros(())}, optimizer=optax.sgd, lr=lr, max_grad_norm=1e9,
                        loss_fn=lambda p, ctx: p["w"])


def test_bp_step_scheduler_drives_a_learning_rate_per_backprop_step():
    sched = BPStepScheduler("fit", ("opt_state", "hyperparams", "learning_rate"), bp_step_schedule(0, 10, 0.0, 1.0))
    trainer = Trainer([_fit(), sched], [{"default": {}, "batch_size": 1}] * 6, steps_per_call=3)
    ctx = trainer.train()
    np.testing.assert_allclose(ctx.metrics["fit/lr"], [0.4, 0.5, 0.6], rtol=1e-6)  # the last call: steps 4..6
    np.testing.assert_allclose(ctx.metrics["fit/learning_rate_scheduler/value"], [0.4, 0.5, 0.6], rtol=1e-6)
    assert float(ctx.state["fit"]["params"]["w"]) == pytest.approx(-2.1, rel=1e-6)  # 0.1 + ... + 0.6


def test_bp_step_scheduler_drives_sacs_target_entropy():
    from emote_jax.algorithms.sac import make_sac_callbacks
    from test_sac_parity import _batch  # tests/ is on sys.path under pytest

    cbs, _ = make_sac_callbacks(obs_dim=3, n_actions=2, key=jax.random.key(0), hidden_dims=(16,))
    sched = BPStepScheduler("alpha", "extra/target_entropy", linear_schedule(-1.0, -3.0, 2))
    ctx = Trainer([*cbs, sched], [{"default": _batch(seed=s), "batch_size": 16} for s in range(3)],
                  steps_per_call=3).train()
    np.testing.assert_allclose(ctx.metrics["alpha/target_entropy"], [-2.0, -3.0, -3.0], rtol=1e-6)


@pytest.mark.parametrize("path,match", [(("opt_state", "hyperparams", "beta"), "has no 'opt_state/hyperparams/beta'"),
                                        (("nope",), "has no 'nope'"),
                                        (("params", "v"), "expected fit/params/v a scalar, got shape \\(3,\\)")])
def test_a_scheduler_path_that_leads_nowhere_stops_at_the_first_compile(path, match):
    loss = LossCallback(name="fit", params={"w": jnp.zeros(()), "v": jnp.zeros((3,))}, optimizer=optax.sgd, lr=1.0,
                        loss_fn=lambda p, ctx: p["w"] + p["v"].sum())
    sched = BPStepScheduler("fit", path, constant_schedule(1.0))
    with pytest.raises(Exception, match=match):
        Trainer([loss, sched], [{"default": {}, "batch_size": 1}], steps_per_call=1).train()


def test_a_scheduler_over_a_learning_rate_the_optimizer_already_schedules_is_refused():
    # inject_hyperparams would rewrite the value at every update: the scheduler's value would be lost silently
    sched = BPStepScheduler("fit", ("opt_state", "hyperparams", "learning_rate"), constant_schedule(1.0))
    trainer = Trainer([_fit(lr=linear_schedule(1.0, 0.0, 10)), sched], [{"default": {}, "batch_size": 1}],
                      steps_per_call=1)
    with pytest.raises(Exception, match="fit/opt_state/hyperparams/learning_rate is already driven by a schedule "
                                        "given to the optimizer.*give fit a float for 'learning_rate'"):
        trainer.train()


def test_bad_scheduler_arguments_are_refused():
    with pytest.raises(ValueError, match="non-empty"):
        BPStepScheduler("fit", "", constant_schedule(1.0))
    with pytest.raises(TypeError, match="schedule a function"):
        BPStepScheduler("fit", "a/b", 0.5)
