"""The immutable context that device hooks receive and return.

A :class:`Context` is a pytree. Inside the compiled step every device hook of every callback takes one
and returns a new one (``ctx.replace(...)`` or the helpers below); nothing is mutated in place.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PyTree = Any
#: The metric-name prefixes of :meth:`Context.log_histogram` and :meth:`Context.log_image` arrays.
HISTOGRAM_PREFIX, IMAGE_PREFIX = "histogram:", "image:"
#: The metric-name prefix of :meth:`Context.log_counters` values (read by host hooks, never written by loggers).
COUNTER_PREFIX = "counter:"


@struct.dataclass
class Context:
    """What a hook sees.

    Attributes:
        state: one slot per callback, keyed by the callback's ``name`` (params, target params, optimizer
            state, counters, ...). Slots are pytrees of arrays whose shapes and dtypes never change.
        batch: the current batch from the dataloader, a pytree of arrays (leading axis = batch).
            ``None`` in host hooks.
        key: a PRNG key for this step. Use :meth:`split_key` to draw from it.
        metrics: scalars logged during this step, ``name -> array of shape ()`` (and per-sample metrics of
            shape ``(B,)``, see :meth:`log_samples`). In host hooks these are the host (NumPy) metrics of
            the last compiled call, each of shape ``(K,)`` (``(K, B)`` for per-sample ones).
        bp_step: the backprop step being run (starts at 1), an int32 scalar on the device and a Python
            int in host hooks.
        bp_samples: the number of samples consumed so far. Host-side only (a Python int in host
            hooks; 0 inside the compiled step, where it is not tracked to avoid int32 overflow).
    """

    state: dict[str, PyTree]
    batch: PyTree
    key: jax.Array
    metrics: dict[str, Any]
    bp_step: Any
    bp_samples: Any = struct.field(pytree_node=False, default=0)

    def slot(self, name: str) -> PyTree:
        """The state slot of the callback called ``name``; a clear KeyError if there is none."""
        try:
            return self.state[name]
        except KeyError:
            raise KeyError(
                f"no state slot named {name!r}; slots present: {sorted(self.state)}. "
                "A callback reads another's state by that callback's name."
            ) from None

    def with_slot(self, name: str, value: PyTree) -> Context:
        """A new context whose slot ``name`` is ``value``."""
        return self.replace(state={**self.state, name: value})

    def log(self, **scalars: Any) -> Context:
        """A new context with the given scalar metrics added (each must be of shape ())."""
        new = dict(self.metrics)
        for name, value in scalars.items():
            value = jnp.asarray(value)
            if value.shape != ():
                raise ValueError(f"metric {name!r} must be a scalar, got shape {value.shape}")
            new[name] = value
        return self.replace(metrics=new)

    def log_samples(self, **arrays: Any) -> Context:
        """A new context with per-sample metrics added, each of shape (B,) (e.g. TD errors for prioritized
        replay). They come back to the host with the scalar metrics, as (K, B); loggers skip them."""
        new = dict(self.metrics)
        for name, value in arrays.items():
            value = jnp.asarray(value)
            if value.ndim != 1:
                raise ValueError(f"per-sample metric {name!r} must have shape (B,), got shape {value.shape}")
            new[name] = value
        return self.replace(metrics=new)

    def log_histogram(self, **arrays: Any) -> Context:
        """A new context with arrays (any fixed shape) to log as histograms: they come back with the
        metrics, ``(K, *shape)`` per call, and a ``MetricsLogger`` writes the value of each histogram step
        (its ``histogram_interval``). Each is copied to the host every call: keep them small, or log them
        from a cycle hook (NaN on the steps it does not run, which are not written)."""
        new = dict(self.metrics)
        for name, value in arrays.items():
            new[HISTOGRAM_PREFIX + name] = jnp.asarray(value, jnp.float32)
        return self.replace(metrics=new)

    def log_image(self, **images: Any) -> Context:
        """A new context with images to log, each ``(H, W, C)`` (C = 1, 3 or 4) with values in [0, 1];
        written at the logger's histogram steps, like :meth:`log_histogram`."""
        new = dict(self.metrics)
        for name, value in images.items():
            value = jnp.asarray(value, jnp.float32)
            if value.ndim != 3 or value.shape[-1] not in (1, 3, 4):
                raise ValueError(f"image {name!r} must have shape (H, W, C) with C in (1, 3, 4), got {value.shape}")
            new[IMAGE_PREFIX + name] = value
        return self.replace(metrics=new)

    def log_counters(self, **counters: Any) -> Context:
        """A new context with int32 scalar counters (a collector's step and episode counts) that host hooks
        read from ``ctx.metrics["counter:<name>"]`` (shape ``(K,)``) after the call: they come back in the
        call's one metrics fetch, so a host hook needs no device read of its own. Loggers do not write them."""
        new = dict(self.metrics)
        for name, value in counters.items():
            value = jnp.asarray(value, jnp.int32)
            if value.shape != ():
                raise ValueError(f"counter {name!r} must be a scalar, got shape {value.shape}")
            new[COUNTER_PREFIX + name] = value
        return self.replace(metrics=new)

    def log_dict(self, scalars: dict[str, Any], prefix: str = "") -> Context:
        """Like :meth:`log`, for a dict of scalars, each name prefixed with ``prefix``."""
        return self.log(**{f"{prefix}{k}": v for k, v in scalars.items()})

    def split_key(self) -> tuple[Context, jax.Array]:
        """Draw a fresh key: returns ``(new_ctx, key)``; ``new_ctx`` carries the advanced key."""
        key, sub = jax.random.split(self.key)
        return self.replace(key=key), sub
