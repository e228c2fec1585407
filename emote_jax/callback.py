"""Callbacks: the unit of behaviour that a :class:`~emote_jax.trainer.Trainer` runs.

There are two kinds, with the names of the reference's hooks:

* :class:`Callback` has *device hooks* (``begin_cycle``, ``begin_batch``, ``backward``, ``end_batch``,
  ``end_cycle``). They are pure functions ``Context -> Context`` that the trainer traces into one
  ``jax.jit``-compiled step. No Python side effects, no ``.item()``, no host round trips.
* :class:`HostCallback` has *host* cycle hooks (``begin_cycle``, ``end_cycle``) that run in Python
  between compiled calls: collectors, loggers, checkpointers.

Both have the host hooks ``restore_state``, ``begin_training`` and ``end_training``, and own one slot of
the training state (``ctx.state[self.name]``), created by :meth:`Callback.init_state`.
A host hook takes the host context and returns a new one, or ``None`` to leave it unchanged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax

from emote_jax.context import Context, PyTree

#: Device hooks in the order the trainer runs them within one step.
DEVICE_HOOKS: tuple[str, ...] = ("begin_cycle", "begin_batch", "backward", "end_batch", "end_cycle")
#: Categories of state that ``load_state_dict`` can restore selectively.
STATE_CATEGORIES: tuple[str, ...] = ("network", "optimizer", "hparams", "other")


class TrainingShutdownException(Exception):
    """Raised by a callback or a dataloader to end training cleanly.

    The trainer then runs every ``end_training`` hook and returns without an error.
    """


class CallbackError(RuntimeError):
    """An exception raised inside a callback's hook, re-raised by the trainer with the callback's name.

    The original exception is ``__cause__`` (and :attr:`original`).
    """

    def __init__(self, callback: str, hook: str, bp_step: int | None, original: BaseException):
        where = f" at bp_step {bp_step}" if bp_step is not None else ""
        super().__init__(
            f"callback {callback!r} failed in {hook}{where}: {type(original).__name__}: {original}"
        )
        self.callback = callback
        self.hook = hook
        self.bp_step = bp_step
        self.original = original


class _Base:
    """What both kinds of callback share: a name, an order, a cycle, a state slot and host hooks."""

    #: Where the cycle hooks run: "device" (traced) or "host" (Python between calls).
    runs_on: ClassVar[str] = "device"
    #: Which category each top-level key of the slot belongs to (see :meth:`load_state_dict`);
    #: keys not listed are "network".
    state_categories: ClassVar[dict[str, str]] = {}

    def __init__(self, cycle: int | None = None, *, name: str | None = None, order: int = 0):
        """``cycle`` may be given positionally, as the reference's ``Callback.__init__(self, cycle=0)``
        (``super().__init__(5)``); ``None`` or 0: no cycle hooks."""
        if cycle is not None and (isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 0):
            raise ValueError(f"cycle must be None or an int >= 0, got {cycle!r} for {name or type(self).__name__}")
        self.name: str = name if name is not None else type(self).__name__
        self.order: int = order
        self.cycle: int | None = cycle

    @property
    def _order(self) -> int:
        """The reference's name of :attr:`order` (its callbacks set ``self._order = 1`` after ``__init__``)."""
        return self.order

    @_order.setter
    def _order(self, value: int) -> None:
        self.order = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, order={self.order}, cycle={self.cycle})"

    # ---- state -----------------------------------------------------------------------------------
    def init_state(self, key: jax.Array) -> PyTree | None:
        """The initial content of this callback's slot (a pytree of arrays), or None for no slot."""
        return None

    def state_dict(self, slot: PyTree) -> dict[str, Any]:
        """What a checkpoint stores for this callback: by default the slot itself."""
        return slot

    def load_state_dict(
        self,
        slot: PyTree,
        state_dict: dict[str, Any],
        load_network: bool = True,
        load_optimizer: bool = True,
        load_hparams: bool = True,
    ) -> PyTree:
        """Return ``slot`` with the parts of ``state_dict`` selected by the flags put in.

        Each top-level key of a dict slot belongs to a category (``state_categories``, default
        "network"); "other" (counters, RNG) is always loaded.
        """
        wanted = {"network": load_network, "optimizer": load_optimizer, "hparams": load_hparams, "other": True}
        if not isinstance(slot, dict):
            return state_dict if load_network else slot
        new = dict(slot)
        for k, v in state_dict.items():
            if k not in slot:
                raise KeyError(f"{self.name}: state dict has key {k!r}, slot has {sorted(slot)}")
            if wanted[self.state_categories.get(k, "network")]:
                new[k] = v
        return new

    # ---- host hooks ------------------------------------------------------------------------------
    def restore_state(self, ctx: Context) -> Context | None:
        """Host: before training, to load saved state. Return a new context or None."""
        return None

    def begin_training(self, ctx: Context) -> Context | None:
        """Host: once before the first step."""
        return None

    def end_training(self, ctx: Context) -> Context | None:
        """Host: once at the end, also after a shutdown or an error."""
        return None


class Callback(_Base):
    """A callback whose cycle hooks are device hooks, traced into the compiled step.

    Subclasses override any of ``begin_cycle``, ``begin_batch``, ``backward``, ``end_batch``,
    ``end_cycle``; each takes a :class:`Context` and returns a new one. ``begin_cycle`` runs when
    ``(bp_step - 1) % cycle == 0`` and ``end_cycle`` when ``bp_step % cycle == 0`` (only if
    ``cycle`` > 0). A metric logged in a cycle hook is NaN on steps where the hook did not run.
    """

    runs_on: ClassVar[str] = "device"

    def begin_cycle(self, ctx: Context) -> Context:
        return ctx

    def begin_batch(self, ctx: Context) -> Context:
        return ctx

    def backward(self, ctx: Context) -> Context:
        return ctx

    def end_batch(self, ctx: Context) -> Context:
        return ctx

    def end_cycle(self, ctx: Context) -> Context:
        return ctx


class HostCallback(_Base):
    """A callback whose cycle hooks run on the host, between compiled calls.

    Cycles are counted in backprop steps as for device callbacks. With K steps per compiled call, the
    ``begin_cycle`` hooks due during the call run before it and the ``end_cycle`` hooks after it, each
    with ``ctx.bp_step`` set to the step it is due for and the state as it is after the call.

    It has no per-step hooks: the steps run inside one compiled call. A subclass that defines
    ``begin_batch``, ``backward`` or ``end_batch`` (a habit from the reference, where every hook runs in
    Python) is refused by the :class:`~emote_jax.trainer.Trainer` with an error naming the hook: per-step
    work on the device is a :class:`Callback`'s, per-step work on the host is ``begin_cycle`` /
    ``end_cycle`` with ``cycle=1`` (every compiled call at ``steps_per_call=1``).
    """

    runs_on: ClassVar[str] = "host"

    def begin_cycle(self, ctx: Context) -> Context | None:
        return None

    def end_cycle(self, ctx: Context) -> Context | None:
        return None


AnyCallback = Callback | HostCallback


#: The reference's per-step hooks, which a :class:`HostCallback` cannot have.
PER_STEP_HOOKS: tuple[str, ...] = ("begin_batch", "backward", "end_batch")


def host_per_step_hooks(cb: _Base) -> list[str]:
    """The per-step hooks (``begin_batch``, ``backward``, ``end_batch``) a :class:`HostCallback` defines:
    hooks the trainer would never call."""
    return [h for h in PER_STEP_HOOKS if isinstance(cb, HostCallback) and callable(getattr(type(cb), h, None))]


def overrides(cb: _Base, hook: str) -> bool:
    """Whether ``cb`` defines ``hook`` itself rather than inheriting the no-op of its base kind."""
    base = Callback if isinstance(cb, Callback) else HostCallback if isinstance(cb, HostCallback) else _Base
    return getattr(type(cb), hook, None) is not getattr(base, hook, None)
