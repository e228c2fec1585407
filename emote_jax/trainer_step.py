"""The compiled step: each device hook of the callbacks traced in order (checked, and under ``lax.cond``
for a cycle hook), K steps under ``jax.lax.scan``, and the packed layout in which the step metrics come
back to the host. :class:`~emote_jax.trainer.Trainer` compiles and calls it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.callback import DEVICE_HOOKS, Callback, CallbackError, overrides
from emote_jax.context import Context, PyTree
from emote_jax.faults import NONFINITE_SUFFIX
from emote_jax.trainer_checks import TRAINER_SLOT, StateMismatchError, _check_same_state


class _MetricsLayout:
    """Where each metric of one compiled call lies in the call's packed metrics.

    The compiled step returns its metrics (``name -> (K, *shape)``) as one array per dtype, of shape
    ``(rows, K)``: one row per scalar metric (``size`` rows for a metric of per-step shape ``shape``),
    so that the host fetches one buffer per call instead of one per metric, and each scalar metric is a
    contiguous ``(K,)`` view of it.
    """

    def __init__(self, metrics: dict[str, jax.ShapeDtypeStruct]):
        self.dtypes: list[np.dtype] = []
        self.entries: list[tuple[str, int, int, int, tuple[int, ...]]] = []  # name, group, lo, hi, shape
        rows: dict[np.dtype, int] = {}
        for name, value in metrics.items():
            dtype, shape = np.dtype(value.dtype), tuple(value.shape[1:])
            if dtype not in rows:
                rows[dtype] = 0
                self.dtypes.append(dtype)
            lo = rows[dtype]
            rows[dtype] = lo + int(np.prod(shape, dtype=np.int64))
            self.entries.append((name, self.dtypes.index(dtype), lo, rows[dtype], shape))
        self.names = [e[0] for e in self.entries]
        # the common case: scalar metrics of one dtype, rows in metric order
        self.simple = len(self.dtypes) <= 1 and all(e[4] == () for e in self.entries)
        scalar_flags = [e for e in self.entries if e[0].endswith(NONFINITE_SUFFIX) and e[4] == ()]
        self.flag_rows = {g: np.array([e[2] for e in scalar_flags if e[1] == g], np.intp)
                          for g in range(len(self.dtypes))}
        self.flag_rows = {g: r for g, r in self.flag_rows.items() if r.size}
        self.other_flags = [e[0] for e in self.entries if e[0].endswith(NONFINITE_SUFFIX) and e[4] != ()]

    def pack(self, metrics: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        """(traced) ``name -> (K, *shape)`` to one ``(rows, K)`` array per dtype."""
        groups: list[list[jax.Array]] = [[] for _ in self.dtypes]
        for name, g, lo, hi, _shape in self.entries:
            value = metrics[name]
            groups[g].append(jnp.reshape(value, (value.shape[0], hi - lo)).T)
        return tuple(jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0] for rows in groups)

    def unpack(self, host: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Host arrays of :meth:`pack` to ``name -> (K, *shape)`` (views, no copies)."""
        if self.simple:
            return dict(zip(self.names, host[0])) if self.names else {}
        out = {}
        for name, g, lo, hi, shape in self.entries:
            rows = host[g]
            out[name] = rows[lo] if shape == () else rows[lo:hi].T.reshape(rows.shape[1], *shape)
        return out

    def flagged(self, host: list[np.ndarray], metrics: dict[str, np.ndarray]) -> bool:
        """Whether any non-finite flag is set (NaN, a cycle hook that did not run, is not set)."""
        for g, rows in self.flag_rows.items():
            if (host[g][rows] > 0).any():
                return True
        return any(np.any(np.asarray(metrics[n]) > 0) for n in self.other_flags)


def device_hook(cb: Callback, hook: str, ctx: Context) -> Context:
    """Run (trace) ``cb``'s device hook ``hook``: errors name the callback and the hook, and the state and
    key it returns must have the structure, shapes and dtypes of those it was given."""
    try:
        out = getattr(cb, hook)(ctx)
    except (StateMismatchError, CallbackError):
        raise
    except Exception as e:
        raise CallbackError(cb.name, hook, None, e) from e
    if not isinstance(out, Context):
        raise StateMismatchError(
            f"callback {cb.name!r} {hook} must return a Context, got {type(out).__name__}"
        )
    state = _check_same_state(ctx.state, out.state, cb.name, hook)
    return out.replace(state=state, key=_check_same_state(ctx.key, out.key, cb.name, hook))


def cycle_hook(cb: Callback, hook: str, ctx: Context) -> Context:
    """Run a cycle hook under ``lax.cond``; metrics it logs are NaN on steps it does not run."""
    if cb.cycle == 1:
        return device_hook(cb, hook, ctx)
    due = (ctx.bp_step - 1) % cb.cycle == 0 if hook == "begin_cycle" else ctx.bp_step % cb.cycle == 0
    out_shape = jax.eval_shape(lambda c: device_hook(cb, hook, c), ctx)
    new_names = [k for k in out_shape.metrics if k not in ctx.metrics]

    def run(c: Context) -> Context:
        out = device_hook(cb, hook, c)
        return out.replace(metrics={**out.metrics, **{k: out.metrics[k].astype(jnp.float32) for k in new_names}})

    def skip(c: Context) -> Context:
        nan = {k: jnp.full(out_shape.metrics[k].shape, jnp.nan, jnp.float32) for k in new_names}
        return c.replace(metrics={**c.metrics, **nan})

    return jax.lax.cond(due, run, skip, ctx)


def one_step(
    callbacks: Sequence[Callback], carry: tuple[PyTree, jax.Array], batch: PyTree
) -> tuple[tuple[PyTree, jax.Array], dict]:
    """One backprop step (the body of the scan): per hook of :data:`~emote_jax.callback.DEVICE_HOOKS`, that
    hook of every callback of ``callbacks`` (sorted by order) that overrides it; then ``bp_step + 1``."""
    state, key = carry
    key, step_key = jax.random.split(key)
    bp_step = state[TRAINER_SLOT]["bp_step"]
    ctx = Context(state=state, batch=batch, key=step_key, metrics={}, bp_step=bp_step)
    for hook in DEVICE_HOOKS:
        for cb in callbacks:
            if not overrides(cb, hook):
                continue
            if hook in ("begin_cycle", "end_cycle"):
                if cb.cycle:
                    ctx = cycle_hook(cb, hook, ctx)
            else:
                ctx = device_hook(cb, hook, ctx)
    state = dict(ctx.state)
    state[TRAINER_SLOT] = {**state[TRAINER_SLOT], "bp_step": bp_step + 1}
    return (state, key), ctx.metrics


def scan_steps(
    callbacks: Sequence[Callback], steps_per_call: int, state: PyTree, key: jax.Array, batches: PyTree
) -> tuple[PyTree, jax.Array, dict[str, jax.Array]]:
    """K steps of ``callbacks`` through ``jax.lax.scan`` over ``batches`` (leading axis K); the metrics as
    ``name -> (K, *shape)``."""
    # a batch without arrays (a loss of the parameters alone) has no axis to count the K steps by
    length = None if jax.tree.leaves(batches) else steps_per_call
    (state, key), metrics = jax.lax.scan(functools.partial(one_step, callbacks), (state, key), batches, length=length)
    return state, key, metrics
