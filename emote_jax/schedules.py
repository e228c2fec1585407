"""The reference's schedules as optax schedules, and :class:`BPStepScheduler`, which drives a hyperparameter.

Each function returns an ``optax.Schedule``: ``count -> value``, traceable (``count`` a Python int or an
int array, the value a float32 array), so it works as an optax learning rate (``LossCallback(lr=...)``),
as :class:`~emote_jax.algorithms.sac.AlphaLoss`'s ``target_entropy`` and, through
:class:`BPStepScheduler`, for any scalar in a callback's slot.

The reference's ``Schedule`` objects hold a value that ``step()`` advances; its ``AlphaLoss`` reads the
value in the loss and steps it after the update, so backprop step ``n`` sees ``f(max(n - 2, 0))``. Here a
schedule is a pure function of the count it is given: an optax learning rate or ``target_entropy``
sees ``f(n - 1)`` at backprop step ``n`` (optax's count of updates done), one step ahead of the
reference's, and :class:`BPStepScheduler` gives ``f(n)`` (the backprop step itself, as the reference's
``BPStepScheduler.evaluate_at(bp)``). docs/porting.md lists this difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from emote_jax.callback import Callback
from emote_jax.context import Context, PyTree

Schedule = optax.Schedule

__all__ = [
    "BPStepScheduler",
    "bp_step_schedule",
    "constant_schedule",
    "cosine_annealing_schedule",
    "cosine_annealing_warm_restarts_schedule",
    "cyclic_schedule",
    "linear_schedule",
    "truncated_linear",
]


def _positive_int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: expected {what} an int >= 1, got {value!r}")
    return value


def _count(count: Any) -> jax.Array:
    return jnp.asarray(count, jnp.float32)


def constant_schedule(value: float) -> Schedule:
    """The reference's ``ConstantSchedule(value)``: ``value`` at every count."""
    v = float(value)
    return lambda count: jnp.full(jnp.shape(count), v, jnp.float32)


def linear_schedule(initial: float, final: float, steps: int, use_staircase: bool = False,
                    staircase_steps: int = 5) -> Schedule:
    """The reference's ``LinearSchedule``: ``initial + min(count / steps, 1) * (final - initial)``.

    With ``use_staircase`` the fraction ``count / steps`` is floored to multiples of ``1 / staircase_steps``
    (``staircase_steps`` equal stairs from ``initial``, ``final`` from ``steps`` on).
    """
    _positive_int(steps, "steps", "linear_schedule")
    _positive_int(staircase_steps, "staircase_steps", "linear_schedule")
    a, b = float(initial), float(final)

    def schedule(count: Any) -> jax.Array:
        fraction = _count(count) / steps
        if use_staircase:
            fraction = jnp.floor(fraction * staircase_steps) / staircase_steps
        return a + jnp.minimum(fraction, 1.0) * (b - a)

    return schedule


def cyclic_schedule(initial: float, final: float, half_period_steps: int, mode: str = "triangular") -> Schedule:
    """The reference's ``CyclicSchedule``: a triangle from ``initial`` to ``final`` in ``half_period_steps``
    and back, period ``2 * half_period_steps``.

    ``mode="triangular2"`` halves the amplitude each cycle (cycle ``c`` = 1, 2, ... scales it by
    ``2 ** (1 - c)``), so the value settles at ``initial``.
    """
    _positive_int(half_period_steps, "half_period_steps", "cyclic_schedule")
    if mode not in ("triangular", "triangular2"):
        raise ValueError(f"cyclic_schedule: expected mode 'triangular' or 'triangular2', got {mode!r}")
    a, b, h = float(initial), float(final), float(half_period_steps)

    def schedule(count: Any) -> jax.Array:
        t = _count(count)
        cycle = jnp.floor(1.0 + t / (2.0 * h))
        x = jnp.abs(t / h - 2.0 * cycle + 1.0)
        scale = 1.0 if mode == "triangular" else 1.0 / 2.0 ** (cycle - 1.0)
        return a + (b - a) * jnp.maximum(0.0, 1.0 - x) * scale

    return schedule


def cosine_annealing_schedule(initial: float, final: float, steps: int) -> Schedule:
    """The reference's ``CosineAnnealing`` (PyTorch's ``CosineAnnealingLR``, closed form):
    ``final + (initial - final) * (1 + cos(pi * count / steps)) / 2``, from ``initial`` down to ``final`` at
    ``steps`` and, past it, back up again (period ``2 * steps``) as the reference's recursion does."""
    _positive_int(steps, "steps", "cosine_annealing_schedule")
    a, b = float(initial), float(final)
    return lambda count: b + (a - b) * (1.0 + jnp.cos(math.pi * _count(count) / steps)) / 2.0


def cosine_annealing_warm_restarts_schedule(initial: float, final: float, steps: int) -> Schedule:
    """The reference's ``CosineAnnealingWarmRestarts``: the cosine from ``initial`` to ``final`` over
    ``steps`` counts, restarting at ``initial`` every ``steps``."""
    _positive_int(steps, "steps", "cosine_annealing_warm_restarts_schedule")
    a, b = float(initial), float(final)
    return lambda count: b + (a - b) * (1.0 + jnp.cos(math.pi * jnp.mod(_count(count), steps) / steps)) / 2.0


def truncated_linear(min_x: float, max_x: float, min_y: float, max_y: float) -> Schedule:
    """The reference's ``truncated_linear`` as a function of ``x``: ``min_y`` up to ``min_x``, ``max_y``
    from ``max_x``, linear between (``max_y`` everywhere when ``max_x - min_x < 1e-10``)."""
    x0, x1, y0, y1 = float(min_x), float(max_x), float(min_y), float(max_y)
    if x1 - x0 < 1e-10:
        return constant_schedule(y1)

    def schedule(x: Any) -> jax.Array:
        f = y0 + (_count(x) - x0) / (x1 - x0) * (y1 - y0)
        return jnp.clip(f, min(y0, y1), max(y0, y1))

    return schedule


def bp_step_schedule(bp_step_begin: float, bp_step_end: float, value_min: float, value_max: float) -> Schedule:
    """The reference's ``BPStepScheduler(bp_step_begin, bp_step_end, value_min, value_max).evaluate_at``:
    ``value_min`` until ``bp_step_begin``, ``value_max`` from ``bp_step_end``, linear between."""
    return truncated_linear(bp_step_begin, bp_step_end, value_min, value_max)


def _get(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node[key]
    if hasattr(node, "_fields") or hasattr(node, "__dataclass_fields__"):
        return getattr(node, key)
    raise KeyError(key)


def _set(node: Any, path: Sequence[str], value: Any) -> Any:
    """``node`` with the leaf at ``path`` replaced (dicts, NamedTuples and flax dataclasses)."""
    key, rest = path[0], path[1:]
    new = value if not rest else _set(_get(node, key), rest, value)
    if isinstance(node, dict):
        return {**node, key: new}
    if hasattr(node, "_fields"):
        return node._replace(**{key: new})
    return node.replace(**{key: new})


class BPStepScheduler(Callback):
    """Sets a scalar in another callback's slot to ``schedule(bp_step)`` before each backprop step.

    The reference's ``BPStepScheduler`` gives a value per backprop step for its user to read; this one
    writes it where it is used: ``target`` is the callback's name and ``path`` the keys down to the scalar
    (``"a/b"`` or a tuple), e.g. ``("opt_state", "hyperparams", "learning_rate")`` for a
    :class:`~emote_jax.loss.LossCallback`'s learning rate, ``("extra", "target_entropy")`` for
    :class:`~emote_jax.algorithms.sac.AlphaLoss`, ``("hparams", "gamma")`` for a ``QTarget``. The value is
    cast to the leaf's dtype and logged as ``{name}/value``. A path that does not lead to a scalar stops
    the first compile with an error naming the path and what is there.

    Args:
        target: the name of the callback whose slot holds the value.
        path: the keys from the slot down to the value.
        schedule: ``bp_step -> value`` (any ``optax.Schedule``; :func:`bp_step_schedule` is the reference's).
        name: this callback's name (default ``"{target}/{last key}_scheduler"``).
    """

    def __init__(self, target: str, path: str | Sequence[str], schedule: Schedule, *, name: str | None = None):
        keys = tuple(path.split("/")) if isinstance(path, str) else tuple(path)
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"BPStepScheduler: expected path a non-empty 'a/b' string or tuple of keys, got {path!r}")
        if not callable(schedule):
            raise TypeError(f"BPStepScheduler: expected schedule a function bp_step -> value, got {type(schedule).__name__}")
        super().__init__(name=name or f"{target}/{keys[-1]}_scheduler", order=-1)
        self.target, self.path, self.schedule = target, keys, schedule

    def begin_batch(self, ctx: Context) -> Context:
        slot = ctx.slot(self.target)
        node: PyTree = slot
        for i, k in enumerate(self.path):
            parent = node
            try:
                node = _get(node, k)
            except (KeyError, AttributeError):
                have = sorted(node) if isinstance(node, dict) else getattr(node, "_fields", type(node).__name__)
                raise KeyError(f"{self.name}: slot {self.target!r} has no {'/'.join(self.path[:i + 1])!r}; "
                               f"there: {have}") from None
            scheduled = getattr(parent, "hyperparams_states", {}) if k == "hyperparams" else {}
            if i + 1 < len(self.path) and self.path[i + 1] in scheduled:
                raise ValueError(
                    f"{self.name}: {self.target}/{'/'.join(self.path)} is already driven by a schedule given to "
                    f"the optimizer (optax.inject_hyperparams rewrites it at every update, over this "
                    f"scheduler's value); give {self.target} a float for {self.path[i + 1]!r} and let this "
                    f"scheduler drive it, or drop the scheduler")
        if jnp.shape(node) != ():
            raise ValueError(f"{self.name}: expected {self.target}/{'/'.join(self.path)} a scalar, got shape "
                             f"{jnp.shape(node)}")
        value = jnp.asarray(self.schedule(ctx.bp_step), jnp.result_type(node)).reshape(())
        return ctx.with_slot(self.target, _set(slot, self.path, value)).log(**{f"{self.name}/value": value})
