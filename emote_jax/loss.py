"""LossCallback: a loss function, ``jax.value_and_grad``, global-norm clipping and an optax optimizer.

The device-side ``backward`` is the reference's: compute the loss, its gradients, clip the global norm
(default 10), take an optimizer step (the learning-rate schedule steps with it). It logs the loss, the
learning rate this step's update used (``inject_hyperparams`` evaluates the schedule at the step's count
and keeps the value in the new state) and the gradient norm (before clipping).

Hyperparameters live in the optimizer state through ``optax.inject_hyperparams``, so changing the
learning rate (or the clipping norm, or any optimizer keyword) mid-run changes an array, not the
compiled program: no recompilation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from emote_jax.callback import Callback
from emote_jax.context import Context, PyTree
from emote_jax.faults import NONFINITE_SUFFIX
from emote_jax.networks.contract import Network, as_network

OptimizerFactory = Callable[..., optax.GradientTransformation]


def _make_tx(optimizer: OptimizerFactory, kwarg_names: list[str]) -> Callable[..., optax.GradientTransformation]:
    """A factory ``(learning_rate, max_grad_norm, **kwargs) -> clip + optimizer`` with an explicit signature.

    ``optax.inject_hyperparams`` reads the factory's signature, so ``**kwargs`` is spelled out.
    """

    def make(learning_rate: Any, max_grad_norm: Any, **kwargs: Any) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), optimizer(learning_rate, **kwargs))

    names = ["learning_rate", "max_grad_norm", *kwarg_names]
    make.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    )
    return make


class LossCallback(Callback):
    """A callback that minimises ``loss(params, ctx) -> (scalar, aux_metrics)`` in ``backward``.

    Subclass and implement :meth:`loss`, or pass ``loss_fn``. The slot holds
    ``{"params": ..., "opt_state": ...}``.

    Args:
        name: the slot name (and metric prefix).
        network: the network (see :mod:`emote_jax.networks`); kept for subclasses' ``apply``.
        params: the initial parameters, or None to call ``network.init(key, *example_inputs)``.
        example_inputs: inputs for ``network.init`` when ``params`` is None.
        optimizer: an optax optimizer factory taking the learning rate first (``optax.adam``).
        lr: learning rate, a float or an optax schedule (``count -> lr``).
        max_grad_norm: global gradient-norm clip (the reference's default 10).
        optimizer_kwargs: further keyword arguments of ``optimizer``; floats among them become
            hyperparameters that can change mid-run too.
        loss_fn: ``(params, ctx) -> loss`` or ``(loss, aux_dict)``, instead of overriding :meth:`loss`.

    Aux metrics are scalars, or per-sample arrays of shape (B,) (logged with ``Context.log_samples``).
    """

    state_categories = {"params": "network", "opt_state": "optimizer"}

    def __init__(
        self,
        *,
        name: str,
        network: Any = None,
        params: PyTree | None = None,
        example_inputs: tuple[Any, ...] = (),
        optimizer: OptimizerFactory = optax.adam,
        lr: float | Callable[[jax.Array], jax.Array] = 3e-4,
        max_grad_norm: float = 10.0,
        optimizer_kwargs: dict[str, Any] | None = None,
        loss_fn: Callable[[PyTree, Context], Any] | None = None,
        data_group: str = "default",
        order: int = 0,
        cycle: int | None = None,
    ):
        super().__init__(name=name, order=order, cycle=cycle)
        self.network: Network | None = as_network(network) if network is not None else None
        if params is None and self.network is None:
            raise ValueError(f"{name}: give params, or a network (and example_inputs) to initialise them")
        self._params = params
        self._example_inputs = example_inputs
        self.data_group = data_group
        self._loss_fn = loss_fn
        optimizer_kwargs = dict(optimizer_kwargs or {})
        hparams = {"learning_rate": lr, "max_grad_norm": float(max_grad_norm), **optimizer_kwargs}
        self.tx = optax.inject_hyperparams(_make_tx(optimizer, list(optimizer_kwargs)))(**hparams)

    # ---- to implement --------------------------------------------------------------------------------
    def loss(self, params: PyTree, ctx: Context) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
        """The scalar loss of ``params`` on ``ctx`` (and optionally a dict of scalar aux metrics)."""
        if self._loss_fn is None:
            raise NotImplementedError(f"{type(self).__name__} must implement loss() or be given loss_fn")
        return self._loss_fn(params, ctx)

    # ---- state ---------------------------------------------------------------------------------------
    def init_state(self, key: jax.Array) -> PyTree:
        params = self._params
        if params is None:
            params = self.network.init(key, *self._example_inputs)
        return {"params": params, "opt_state": self.tx.init(params)}

    def state_dict(self, slot: PyTree) -> dict[str, Any]:
        """``{"network": params, "optimizer": {count, inner_state}, "hparams": {name: value}}``."""
        opt = slot["opt_state"]
        return {
            "network": slot["params"],
            "optimizer": {"count": opt.count, "inner_state": opt.inner_state},
            "hparams": dict(opt.hyperparams),
        }

    def load_state_dict(self, slot, state_dict, load_network=True, load_optimizer=True, load_hparams=True):
        opt = slot["opt_state"]
        params = state_dict["network"] if load_network else slot["params"]
        if load_optimizer:
            opt = opt._replace(count=state_dict["optimizer"]["count"], inner_state=state_dict["optimizer"]["inner_state"])
        if load_hparams:
            opt = opt._replace(hyperparams={**opt.hyperparams, **state_dict["hparams"]})
        return {"params": params, "opt_state": opt}

    # ---- hyperparameters -----------------------------------------------------------------------------
    def hyperparams(self, ctx: Context) -> dict[str, jax.Array]:
        """The current hyperparameter values (learning_rate, max_grad_norm, ...)."""
        return dict(ctx.slot(self.name)["opt_state"].hyperparams)

    def set_hyperparams(self, ctx: Context, **values: float) -> Context:
        """A new context with hyperparameters changed (same dtype, so the step is not recompiled)."""
        slot = ctx.slot(self.name)
        hp = dict(slot["opt_state"].hyperparams)
        for k, v in values.items():
            if k not in hp:
                raise KeyError(f"{self.name}: no hyperparameter {k!r}; have {sorted(hp)}")
            hp[k] = jnp.asarray(v, dtype=jnp.asarray(hp[k]).dtype)
        return ctx.with_slot(self.name, {**slot, "opt_state": slot["opt_state"]._replace(hyperparams=hp)})

    # ---- the device hook -----------------------------------------------------------------------------
    def backward(self, ctx: Context) -> Context:
        slot = ctx.slot(self.name)

        def loss_and_aux(p: PyTree) -> tuple[jax.Array, dict[str, jax.Array]]:
            out = self.loss(p, ctx)
            loss, aux = out if isinstance(out, tuple) else (out, {})
            if jnp.shape(loss) != ():
                raise ValueError(f"{self.name}: loss must be a scalar, got shape {jnp.shape(loss)}")
            return loss, aux

        (loss, aux), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(slot["params"])
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = self.tx.update(grads, slot["opt_state"], slot["params"])
        params = optax.apply_updates(slot["params"], updates)
        ctx = ctx.with_slot(self.name, {**slot, "params": params, "opt_state": opt_state})
        # 1.0 when the loss, a gradient (the norm of a NaN or inf is not finite) or a new parameter is not
        # finite; the trainer stops on it (emote_jax.faults), without an extra host round trip.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
        per_sample = {f"{self.name}/{k}": aux.pop(k) for k in [k for k, v in aux.items() if jnp.ndim(v) == 1]}
        if per_sample:  # e.g. QLoss's td_error for prioritized replay (see Context.log_samples)
            ctx = ctx.log_samples(**per_sample)
        return ctx.log_dict(
            {"loss": loss, "lr": opt_state.hyperparams["learning_rate"], "grad_norm": grad_norm, **aux,
             NONFINITE_SUFFIX[1:]: 1.0 - finite.astype(jnp.float32)},
            prefix=f"{self.name}/",
        )


def all_finite(tree: PyTree) -> jax.Array:
    """A bool scalar: every element of every floating leaf of ``tree`` is finite (True for no leaves)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)
