"""LossCallback: learning a regression with Linen and NNX networks, hyperparameters without recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from emote_jax import HostCallback, LossCallback, Trainer
from emote_jax.networks import NNXNetwork


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(64)(x))
        x = nn.tanh(nn.Dense(64)(x))
        return nn.Dense(1)(x)


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(1, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 64, rngs=rngs)
        self.l3 = nnx.Linear(64, 1, rngs=rngs)

    def __call__(self, x):
        return self.l3(jnp.tanh(self.l2(jnp.tanh(self.l1(x)))))


def sin_batches(n: int, size: int = 128, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = rng.uniform(-np.pi, np.pi, (size, 1)).astype(np.float32)
        yield {"x": x, "y": np.sin(x), "batch_size": size}


class MSE(LossCallback):
    def loss(self, params, ctx):
        pred = self.network.apply(params, ctx.batch["x"])
        return jnp.mean((pred - ctx.batch["y"]) ** 2), {"pred_mean": pred.mean()}


def eval_mse(net, params):
    x = jnp.linspace(-np.pi, np.pi, 256)[:, None]
    return float(jnp.mean((net.apply(params, x) - jnp.sin(x)) ** 2))


@pytest.mark.parametrize("kind", ["linen", "nnx_module", "nnx_factory"])
def test_fits_sin_to_a_loss_bar(kind):
    net = {"linen": LinenMLP(), "nnx_module": NNXMLP(nnx.Rngs(0)), "nnx_factory": NNXNetwork(NNXMLP)}[kind]
    cb = MSE(name="fit", network=net, example_inputs=(jnp.zeros((1, 1)),), lr=3e-3)
    t = Trainer([cb], sin_batches(1500), steps_per_call=50, seed=0)
    ctx = t.train()
    mse = eval_mse(cb.network, ctx.state["fit"]["params"])
    assert mse < 2e-3, mse
    assert set(ctx.metrics) == {"fit/loss", "fit/lr", "fit/grad_norm", "fit/pred_mean", "fit/nonfinite"}
    assert float(np.max(ctx.metrics["fit/nonfinite"])) == 0.0
    np.testing.assert_allclose(ctx.metrics["fit/lr"], 3e-3, rtol=1e-6)


def test_changing_the_learning_rate_does_not_recompile():
    cb = MSE(name="fit", network=LinenMLP(), example_inputs=(jnp.zeros((1, 1)),), lr=1e-3)
    seen = []

    class LrChanger(HostCallback):
        def end_cycle(self, ctx):
            seen.append(float(ctx.metrics["fit/lr"][-1]))
            return cb.set_hyperparams(ctx, learning_rate=1e-3 / (ctx.bp_step + 1), max_grad_norm=5.0)

    t = Trainer([cb, LrChanger(name="lr", cycle=1)], sin_batches(6))
    t.train()
    assert t.num_compilations == 1
    np.testing.assert_allclose(seen, [1e-3] + [1e-3 / (s + 1) for s in range(1, 6)], rtol=1e-6)
    assert float(cb.hyperparams(t.ctx)["max_grad_norm"]) == 5.0


def test_gradients_are_clipped_to_the_global_norm():
    # loss = 1000 * sum(w): gradient norm 1000 * sqrt(3); with SGD lr 1 the step is the clipped gradient.
    cb = LossCallback(
        name="lin", params={"w": jnp.zeros(3)}, optimizer=optax.sgd, lr=1.0, max_grad_norm=10.0,
        loss_fn=lambda p, ctx: 1000.0 * jnp.sum(p["w"]),
    )
    ctx = Trainer([cb], sin_batches(1)).train()
    np.testing.assert_allclose(ctx.state["lin"]["params"]["w"], -10.0 / np.sqrt(3) * np.ones(3), rtol=1e-5)
    np.testing.assert_allclose(ctx.metrics["lin/grad_norm"], [1000 * np.sqrt(3)], rtol=1e-5)


def test_a_schedule_drives_the_learning_rate():
    sched = optax.linear_schedule(1.0, 0.0, 4)
    cb = LossCallback(name="s", params={"w": jnp.zeros(())}, optimizer=optax.sgd, lr=sched,
                      loss_fn=lambda p, ctx: p["w"])
    ctx = Trainer([cb], sin_batches(4), steps_per_call=4).train()
    # each step moves w by -lr(count) with count 0, 1, 2, 3
    np.testing.assert_allclose(ctx.state["s"]["params"]["w"], -(1.0 + 0.75 + 0.5 + 0.25), rtol=1e-6)


def test_load_state_dict_restores_only_the_selected_parts():
    cb = MSE(name="fit", network=LinenMLP(), example_inputs=(jnp.zeros((1, 1)),), lr=1e-3)
    t = Trainer([cb], sin_batches(3))
    ctx = t.train()
    trained = ctx.state["fit"]
    fresh = cb.init_state(jax.random.key(5))
    fresh_ctx = cb.set_hyperparams(ctx.with_slot("fit", fresh), learning_rate=0.5)
    fresh = fresh_ctx.state["fit"]
    sd = cb.state_dict(trained)

    def same(a, b):
        return jax.tree.structure(a) == jax.tree.structure(b) and all(
            np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    only_net = cb.load_state_dict(fresh, sd, load_network=True, load_optimizer=False, load_hparams=False)
    assert same(only_net["params"], trained["params"])
    assert same(only_net["opt_state"], fresh["opt_state"])

    only_opt = cb.load_state_dict(fresh, sd, load_network=False, load_optimizer=True, load_hparams=False)
    assert same(only_opt["params"], fresh["params"])
    assert same(only_opt["opt_state"].inner_state, trained["opt_state"].inner_state)
    assert float(only_opt["opt_state"].hyperparams["learning_rate"]) == 0.5

    only_hp = cb.load_state_dict(fresh, sd, load_network=False, load_optimizer=False, load_hparams=True)
    assert same(only_hp["params"], fresh["params"])
    assert same(only_hp["opt_state"].inner_state, fresh["opt_state"].inner_state)
    np.testing.assert_allclose(only_hp["opt_state"].hyperparams["learning_rate"], 1e-3, rtol=1e-6)
