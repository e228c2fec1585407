"""modified_adamw: weight decay on kernels only, as the reference's ModifiedAdamW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from emote_jax.loss import LossCallback
from emote_jax.optimizers import kernel_mask, modified_adamw
from emote_jax.trainer import Trainer


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm(name="norm")(nn.Dense(4, name="body")(x))
        return nn.Dense(1, name="head")(x)


PARAMS = Net().init(jax.random.key(0), jnp.ones((1, 3)))


def test_the_mask_selects_kernels_outside_the_excluded_modules():
    m = kernel_mask(PARAMS)["params"]
    assert m["body"] == {"kernel": True, "bias": False} and m["head"] == {"kernel": True, "bias": False}
    assert m["norm"] == {"scale": False, "bias": False}
    assert kernel_mask(PARAMS, exclude=("head",))["params"]["head"]["kernel"] is False


def test_only_kernels_decay_with_a_zero_gradient():
    """With zero gradients Adam's step is 0, so what changes is the decay alone: kernels shrink by
    lr * wd * w per step, everything else stays."""
    tx = modified_adamw(0.1, weight_decay=0.5, exclude=("head",))
    state = tx.init(PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zeros, state, PARAMS)
    new = optax.apply_updates(PARAMS, updates)["params"]
    old = PARAMS["params"]
    np.testing.assert_allclose(new["body"]["kernel"], old["body"]["kernel"] * (1 - 0.1 * 0.5), rtol=1e-6)
    for mod, leaf in [("body", "bias"), ("head", "kernel"), ("head", "bias"), ("norm", "scale"), ("norm", "bias")]:
        np.testing.assert_array_equal(new[mod][leaf], old[mod][leaf])


def test_it_works_as_a_loss_callback_optimizer_with_weight_decay_a_hyperparameter():
    loss = LossCallback(name="fit", params=PARAMS, optimizer=modified_adamw, lr=1e-2,
                        optimizer_kwargs={"weight_decay": 0.1}, loss_fn=lambda p, ctx: jnp.sum(Net().apply(p, jnp.ones((2, 3))) ** 2))
    t = Trainer([loss], [{"default": {}, "batch_size": 1}] * 3)
    ctx = t.train()
    assert float(loss.hyperparams(ctx)["weight_decay"]) == np.float32(0.1)
    assert np.all(np.isfinite(ctx.metrics["fit/loss"]))
