"""The reference's Callback habits: ``cycle`` positional, ``self._order``, and per-step hooks on a host callback."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax.callback import Callback, HostCallback
from emote_jax.trainer import Trainer


class Counter(Callback):
    """A device callback written the reference's way: ``super().__init__(cycle)``, then ``self._order``."""

    def __init__(self, cycle: int, order: int):
        super().__init__(cycle)
        self._order = order

    def init_state(self, key):
        return {"calls": jnp.zeros((), jnp.int32), "seen": jnp.zeros((), jnp.int32)}

    def end_cycle(self, ctx):
        slot = ctx.slot(self.name)
        return ctx.with_slot(self.name, {**slot, "calls": slot["calls"] + 1})


def _batches(n: int):
    return [{"default": {"x": np.zeros((2, 1), np.float32)}, "batch_size": 2}] * n


def test_cycle_is_positional_and_order_is_read_from_the_reference_attribute():
    cb = Counter(5, order=7)
    assert cb.cycle == 5 and cb.order == 7 and cb._order == 7 and cb.name == "Counter"
    ctx = Trainer([cb], _batches(12)).train()
    assert int(ctx.state["Counter"]["calls"]) == 2  # end_cycle at steps 5 and 10


def test_order_set_through_the_reference_attribute_sorts_the_callbacks():
    class A(Counter):
        pass

    class B(Counter):
        pass

    a, b = A(1, order=3), B(1, order=-2)
    trainer = Trainer([a, b], _batches(1))
    assert [cb.name for cb in trainer.callbacks] == ["B", "A"]
    a._order = -5
    assert [cb.name for cb in Trainer([a, b], _batches(1)).callbacks] == ["A", "B"]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_a_bad_cycle_is_refused_naming_the_callback(bad):
    with pytest.raises(ValueError, match="cycle must be None or an int >= 0.*Counter"):
        Counter(bad, order=0)


@pytest.mark.parametrize("hook", ["begin_batch", "backward", "end_batch"])
def test_a_host_callback_with_a_per_step_hook_is_refused_at_construction(hook):
    cls = type("PortedLogger", (HostCallback,), {hook: lambda self, ctx: None})
    with pytest.raises(TypeError) as e:
        Trainer([cls()], _batches(1))
    msg = str(e.value)
    assert "'PortedLogger'" in msg and hook in msg and "begin_cycle/end_cycle with cycle=1" in msg


def test_a_host_callback_with_cycle_hooks_only_is_accepted():
    calls = []

    class Ok(HostCallback):
        def end_cycle(self, ctx):
            calls.append(ctx.bp_step)

    Trainer([Ok(1)], _batches(3)).train()
    assert calls == [1, 2, 3]
