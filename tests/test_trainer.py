"""The functional core: cycles, hook order, K steps per call, shutdown, errors, state checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emote_jax import Callback, CallbackError, Context, HostCallback, Trainer, TrainingShutdownException
from emote_jax.trainer import StateMismatchError


def batches(n: int | None = None, size: int = 4):
    """n (or endless) batches {"x": (size, 1)}, with the batch size under "batch_size"."""
    i = 0
    while n is None or i < n:
        yield {"x": np.full((size, 1), float(i), np.float32), "batch_size": size}
        i += 1


class DeviceCounter(Callback):
    """Counts its cycle hooks in its slot and records the bp_step of each begin_cycle."""

    def init_state(self, key):
        return {"begin": jnp.zeros((), jnp.int32), "end": jnp.zeros((), jnp.int32),
                "begin_steps": jnp.zeros((8,), jnp.int32)}

    def begin_cycle(self, ctx):
        s = ctx.slot(self.name)
        s = {**s, "begin": s["begin"] + 1, "begin_steps": s["begin_steps"].at[s["begin"]].set(ctx.bp_step)}
        return ctx.with_slot(self.name, s)

    def end_cycle(self, ctx):
        s = ctx.slot(self.name)
        return ctx.with_slot(self.name, {**s, "end": s["end"] + 1})


class HostCounter(HostCallback):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.begin_steps: list[int] = []
        self.end_steps: list[int] = []
        self.events: list[str] = []

    def begin_cycle(self, ctx):
        self.begin_steps.append(ctx.bp_step)

    def end_cycle(self, ctx):
        self.end_steps.append(ctx.bp_step)

    def begin_training(self, ctx):
        self.events.append("begin_training")

    def end_training(self, ctx):
        self.events.append("end_training")


@pytest.mark.parametrize("k", [1, 3])
def test_cycle_counts_match_the_reference(k):
    cycles = [None, 0, 1, 2]
    dev = [DeviceCounter(name=f"d{c}", cycle=c) for c in cycles]
    host = [HostCounter(name=f"h{c}", cycle=c) for c in cycles]
    trainer = Trainer(dev + host, batches(3), steps_per_call=k)
    ctx = trainer.train()
    assert [int(ctx.state[f"d{c}"]["end"]) for c in cycles] == [0, 0, 3, 1]
    assert [len(h.end_steps) for h in host] == [0, 0, 3, 1]
    # begin_cycle fires when (bp_step - 1) % cycle == 0
    assert [int(ctx.state[f"d{c}"]["begin"]) for c in cycles] == [0, 0, 3, 2]
    assert list(np.asarray(ctx.state["d2"]["begin_steps"][:2])) == [1, 3]
    assert host[3].begin_steps == [1, 3] and host[3].end_steps == [2]
    assert host[2].begin_steps == [1, 2, 3] and host[2].end_steps == [1, 2, 3]
    assert trainer.bp_step == 4 and ctx.bp_samples == 12


def test_hook_order_follows_order_then_list_order():
    calls: list[tuple[str, str]] = []

    class Recorder(Callback):
        def _rec(self, hook, ctx):
            calls.append((self.name, hook))  # runs at trace time, in trace order
            return ctx

        def begin_batch(self, ctx):
            return self._rec("begin_batch", ctx)

        def backward(self, ctx):
            return self._rec("backward", ctx)

        def end_batch(self, ctx):
            return self._rec("end_batch", ctx)

    cbs = [Recorder(name="a", order=1), Recorder(name="b", order=0), Recorder(name="c", order=1),
           Recorder(name="d", order=-1)]
    Trainer(cbs, batches(1)).train()
    names = ["d", "b", "a", "c"]
    assert calls == [(n, h) for h in ("begin_batch", "backward", "end_batch") for n in names]


class Accumulate(Callback):
    """A small stateful device callback with randomness: w <- 0.9 w + x.mean() + noise."""

    def init_state(self, key):
        return {"w": jax.random.normal(key, (3,))}

    def backward(self, ctx):
        ctx, key = ctx.split_key()
        w = ctx.slot(self.name)["w"]
        w = 0.9 * w + ctx.batch["x"].mean() + 0.01 * jax.random.normal(key, w.shape)
        return ctx.with_slot(self.name, {"w": w}).log(w0=w[0])


def test_k1_and_k8_give_identical_results():
    out = []
    for k in (1, 8):
        t = Trainer([Accumulate(name="acc")], batches(16), steps_per_call=k, seed=3)
        ctx = t.train()
        out.append((np.asarray(ctx.state["acc"]["w"]), t.bp_step, ctx.bp_samples))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1:] == out[1][1:] == (17, 64)


@pytest.mark.parametrize("k", [1, 4])
def test_device_and_numpy_batches_give_identical_results(k):
    """A prefetching loader yields device arrays (at K = 1 the trainer adds their step axis in one compiled
    call), MemoryLoader NumPy arrays (passed straight to the compiled call): the same training either way."""
    out = []
    for on_device in (False, True):
        data = ({**b, "x": jax.device_put(b["x"])} if on_device else b for b in batches(12))
        t = Trainer([Accumulate(name="acc")], data, steps_per_call=k, seed=5)
        ctx = t.train()
        out.append((np.asarray(ctx.state["acc"]["w"]), t.bp_step, ctx.bp_samples, t.num_compilations))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    assert out[0][1:] == out[1][1:] == (13, 48, 1)


def test_metrics_come_back_per_call_with_k_entries():
    t = Trainer([Accumulate(name="acc")], batches(8), steps_per_call=4)
    ctx = t.train()
    assert ctx.metrics["w0"].shape == (4,)
    assert isinstance(ctx.metrics["w0"], np.ndarray)
    np.testing.assert_allclose(ctx.metrics["w0"][-1], np.asarray(ctx.state["acc"]["w"][0]))


def test_shutdown_signal_runs_end_training_and_returns():
    host = HostCounter(name="h", cycle=1)
    calls = {"n": 0}

    def signal():
        calls["n"] += 1
        return calls["n"] > 2

    t = Trainer([host], batches(None))
    t.train(shutdown_signal=signal)
    assert host.events == ["begin_training", "end_training"]
    assert host.end_steps == [1, 2]


def test_shutdown_exception_from_dataloader_runs_end_training_and_returns():
    host = HostCounter(name="h", cycle=1)

    def loader():
        yield from batches(2)
        raise TrainingShutdownException()

    Trainer([host], loader()).train()
    assert host.events == ["begin_training", "end_training"]
    assert host.end_steps == [1, 2]


def test_shutdown_exception_from_a_callback_returns():
    class Stopper(HostCallback):
        def end_cycle(self, ctx):
            if ctx.bp_step == 3:
                raise TrainingShutdownException()

    host = HostCounter(name="h", cycle=1)
    t = Trainer([Stopper(name="stop", cycle=1), host], batches(None))
    t.train()
    assert host.events[-1] == "end_training"
    assert t.bp_step == 4


def test_error_in_a_host_hook_runs_end_training_and_names_the_callback():
    class Broken(HostCallback):
        def end_cycle(self, ctx):
            raise ValueError("boom")

    host = HostCounter(name="h")
    with pytest.raises(CallbackError, match=r"'broken'.*end_cycle.*bp_step 1.*ValueError: boom") as e:
        Trainer([Broken(name="broken", cycle=1), host], batches(5)).train()
    assert isinstance(e.value.__cause__, ValueError)
    assert host.events == ["begin_training", "end_training"]


def test_error_in_a_device_hook_runs_end_training_and_names_the_callback():
    class Broken(Callback):
        def backward(self, ctx):
            raise ValueError("bad trace")

    host = HostCounter(name="h")
    with pytest.raises(CallbackError, match=r"'broken_dev'.*backward.*bad trace"):
        Trainer([Broken(name="broken_dev"), host], batches(5)).train()
    assert host.events == ["begin_training", "end_training"]


def test_error_from_the_dataloader_propagates_after_end_training():
    host = HostCounter(name="h")

    def loader():
        yield from batches(1)
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        Trainer([host], loader()).train()
    assert host.events == ["begin_training", "end_training"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda s: {"w": jnp.zeros((4,))}, r"'shapey' backward changed state\['shapey'\]\['w'\]: expected float32\[3\], got float32\[4\]"),
        (lambda s: {"w": jnp.zeros((3,), jnp.int32)}, r"expected float32\[3\], got int32\[3\]"),
        (lambda s: {"w": s["w"], "extra": jnp.zeros(())}, r"'shapey' backward returned a state of another structure"),
    ],
)
def test_a_wrongly_shaped_or_typed_state_is_a_clear_error(bad, message):
    class Shapey(Callback):
        def init_state(self, key):
            return {"w": jnp.zeros((3,))}

        def backward(self, ctx):
            return ctx.with_slot(self.name, bad(ctx.slot(self.name)))

    with pytest.raises(StateMismatchError, match=message):
        Trainer([Shapey(name="shapey")], batches(1)).train()


def test_a_hook_that_returns_no_context_is_a_clear_error():
    class NoCtx(Callback):
        def backward(self, ctx):
            return None

    with pytest.raises(StateMismatchError, match=r"'noctx' backward must return a Context, got NoneType"):
        Trainer([NoCtx(name="noctx")], batches(1)).train()


def test_duplicate_names_are_an_error():
    with pytest.raises(ValueError, match=r"duplicated: \['x'\]"):
        Trainer([Accumulate(name="x"), HostCounter(name="x")], batches(1))


def test_metric_from_a_cycle_hook_is_nan_when_the_hook_does_not_run():
    class Every2(Callback):
        def end_cycle(self, ctx):
            return ctx.log(ended=ctx.bp_step)

    t = Trainer([Every2(name="e", cycle=2)], batches(4), steps_per_call=4)
    ctx = t.train()
    np.testing.assert_array_equal(ctx.metrics["ended"], [np.nan, 2, np.nan, 4])


def test_restored_bp_step_continues():
    class Restore(HostCallback):
        def restore_state(self, ctx):
            return ctx.with_slot("trainer", {"bp_step": jnp.asarray(100, jnp.int32)}).replace(bp_samples=7)

    host = HostCounter(name="h", cycle=1)
    t = Trainer([Restore(name="r"), host], batches(2))
    ctx = t.train()
    assert host.end_steps == [100, 101]
    assert t.bp_step == 102 and ctx.bp_samples == 7 + 8
