"""The network contract and adapters for Flax Linen and Flax NNX.

emote_jax depends on a functional contract, not on one module system. A *network* is any object with

* ``init(key, *example_inputs) -> params`` — a pytree of arrays, and
* ``apply(params, *inputs) -> outputs`` — a pure function.

Flax Linen modules fit it as they are. Flax NNX modules fit it through :class:`NNXNetwork`, which splits
the module once into a static graph definition and its parameters and merges them again inside
``apply`` (so no NNX graph walk runs outside tracing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
from flax import linen as nn
from flax import nnx

PyTree = Any


@runtime_checkable
class Network(Protocol):
    """``init(key, *inputs) -> params`` and ``apply(params, *inputs) -> outputs``."""

    def init(self, key: jax.Array, *inputs: Any) -> PyTree: ...

    def apply(self, params: PyTree, *inputs: Any) -> Any: ...


class NNXNetwork:
    """Adapt a Flax NNX module to the network contract.

    Args:
        module: an ``nnx.Module`` (already initialised with its own ``rngs``), or a factory
            ``rngs -> nnx.Module``. With a factory, ``init(key, ...)`` builds a fresh module from
            ``nnx.Rngs(key)``; with a module, ``init`` returns the module's current parameters.

    ``params`` are the module's ``nnx.Param`` values as a plain nested dict (checkpoint friendly);
    other variables (e.g. batch statistics) are kept fixed as they were at ``init``.
    """

    def __init__(self, module: nnx.Module | Callable[[nnx.Rngs], nnx.Module]):
        if isinstance(module, nnx.Module):
            self._factory = None
            self._set_module(module)
        elif callable(module):
            self._factory = module
            self._graphdef = None
        else:
            raise TypeError(f"NNXNetwork expects an nnx.Module or a factory rngs -> Module, got {type(module).__name__}")

    def _set_module(self, module: nnx.Module) -> None:
        self._graphdef, params, self._rest = nnx.split(module, nnx.Param, ...)
        self._params_template = params

    def init(self, key: jax.Array, *inputs: Any) -> PyTree:
        if self._factory is not None:
            self._set_module(self._factory(nnx.Rngs(key)))
        return nnx.to_pure_dict(self._params_template)

    def apply(self, params: PyTree, *inputs: Any) -> Any:
        if self._graphdef is None:
            raise RuntimeError("NNXNetwork.apply called before init")
        state = jax.tree.map(lambda x: x, self._params_template)  # a fresh State; the template stays intact
        nnx.replace_by_pure_dict(state, params)
        module = nnx.merge(self._graphdef, state, self._rest)
        return module(*inputs)


def as_network(obj: Any) -> Network:
    """Return ``obj`` as a :class:`Network`: Linen modules and contract objects as they are, NNX wrapped."""
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, nnx.Module):
        return NNXNetwork(obj)
    if hasattr(obj, "init") and hasattr(obj, "apply"):
        return obj
    raise TypeError(
        f"expected a network (an object with init(key, *inputs) and apply(params, *inputs): a Flax Linen "
        f"module, a Flax NNX module, or your own), got {type(obj).__name__}"
    )
