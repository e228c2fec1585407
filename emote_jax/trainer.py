"""The Trainer: composes callbacks into one compiled step and runs the training loop.

Per compiled call the trainer takes K batches (one host-to-device transfer), runs K steps through
``jax.lax.scan`` and brings the step metrics back to the host once. Per step, as in the reference:
``begin_cycle``, ``begin_batch``, ``backward``, ``end_batch``, ``end_cycle``, each over all device
callbacks sorted by ``order`` (stable, so list order breaks ties).

The step itself is traced in :mod:`emote_jax.trainer_step`; the checks of the callbacks and of the states
their hooks return are in :mod:`emote_jax.trainer_checks`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.callback import (
    Callback,
    CallbackError,
    HostCallback,
    TrainingShutdownException,
    _Base,
    overrides,
)
from emote_jax.context import Context, PyTree
from emote_jax.faults import NonFiniteError, SignalShutdown, TrainingAborted, first_nonfinite
# TRAINER_SLOT, StateMismatchError and _check_same_state are imported from here too (emote_jax, checkpoint)
from emote_jax.trainer_checks import TRAINER_SLOT, StateMismatchError, _check_same_state, _sorted_callbacks
from emote_jax.trainer_step import _MetricsLayout, scan_steps


@contextlib.contextmanager
def _quiet_donation() -> Any:
    """Around a call that may compile: JAX then warns of donated buffers the program cannot reuse (nothing
    for a user to do). Entered only until a call runs without compiling, not on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        yield


class Trainer:
    """Runs callbacks through the training loop, compiling their device hooks into one step.

    Args:
        callbacks: device and host callbacks. Names must be unique.
        dataloader: an iterable of batches (pytrees of arrays). If it has an attribute
            ``steps_per_call`` it yields K batches already stacked on a leading axis; otherwise the
            trainer stacks K consecutive batches itself.
        batch_size_key: the key of a batch dict that holds the batch size (an int, popped before the
            batch goes to the device). Without it, the leading dimension of the first leaf is used.
        steps_per_call: K, the number of steps per compiled call (``jax.lax.scan``). Defaults to the
            loader's ``steps_per_call`` or 1.
        seed: seed of the trainer's PRNG key (split once per step).
        donate: donate the state buffers to the compiled call (saves memory on accelerators).

    After ``train`` the final state is in ``trainer.ctx`` (``ctx.state[name]`` per callback).
    """

    def __init__(
        self,
        callbacks: Sequence[Callback | HostCallback],
        dataloader: Iterable[Any],
        batch_size_key: str = "batch_size",
        *,
        steps_per_call: int | None = None,
        seed: int = 0,
        donate: bool = True,
    ):
        self.callbacks = _sorted_callbacks(list(callbacks))
        self.device_callbacks = [cb for cb in self.callbacks if isinstance(cb, Callback)]
        self.host_callbacks = [cb for cb in self.callbacks if isinstance(cb, HostCallback)]
        self.dataloader = dataloader
        self.batch_size_key = batch_size_key
        loader_k = getattr(dataloader, "steps_per_call", None)
        if steps_per_call is not None and loader_k is not None and steps_per_call != loader_k:
            raise ValueError(
                f"steps_per_call={steps_per_call} but the dataloader yields batches of {loader_k} steps"
            )
        self.steps_per_call = int(steps_per_call or loader_k or 1)
        if self.steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {self.steps_per_call}")
        # a loader that samples K > 1 steps at once stacks them itself; at K = 1 it adds no axis
        self._loader_stacks = loader_k is not None and loader_k > 1
        self.num_compilations = 0
        self._layouts: list[_MetricsLayout] = []
        self.last_metrics: dict[str, np.ndarray] = {}
        #: The signal ("SIGINT", "SIGTERM") that ended the last ``train`` early, else None.
        self.interrupted_by: str | None = None
        self._ctx: Context
        self._host_step: int | None = None  # bp_step as a Python int, None: read it from the state
        key = jax.random.key(seed)
        key, init_key = jax.random.split(key)
        state: dict[str, PyTree] = {TRAINER_SLOT: {"bp_step": jnp.asarray(1, jnp.int32)}}
        for i, cb in enumerate(self.callbacks):
            slot = self._call(cb, "init_state", jax.random.fold_in(init_key, i))
            if slot is not None:
                state[cb.name] = slot
        self.bp_samples = 0
        self.ctx = Context(state=state, batch=None, key=key, metrics={}, bp_step=1)
        donate_argnums = (0, 1) if donate else ()
        #: ``(state, key, batches) -> (state, key, packed metrics)``: K steps, batches with a leading axis K.
        self._compiled = jax.jit(self._run_steps, donate_argnums=donate_argnums)
        #: The same at K = 1 for a batch without the step axis (added inside: no host work, no extra
        #: dispatch). The training loop calls this one at K = 1.
        self._compiled_one = jax.jit(self._run_one, donate_argnums=donate_argnums)

    # ---- counters ----------------------------------------------------------------------------------
    @property
    def ctx(self) -> Context:
        """The host context: the training state after the last compiled call, the key, the counters."""
        return self._ctx

    @ctx.setter
    def ctx(self, value: Context) -> None:
        self._ctx = value
        self._host_step = None  # a new state may hold another step (a restored checkpoint)
        self._warm = False  # and another layout, which the next call may compile for

    @property
    def bp_step(self) -> int:
        """The next backprop step to run (starts at 1; continues from a restored checkpoint)."""
        if self._host_step is None:  # one device read, then counted on the host
            self._host_step = int(self._ctx.state[TRAINER_SLOT]["bp_step"])
        return self._host_step

    # ---- the compiled step (traced in :mod:`emote_jax.trainer_step`) --------------------------------
    def _run_steps(self, state: PyTree, key: jax.Array, batches: PyTree) -> tuple[PyTree, jax.Array, dict]:
        """K steps; the metrics come back packed (see :class:`_MetricsLayout`), keyed by their layout's
        index in ``self._layouts``: the key is part of the output's structure, so every compiled
        version of this function names its own layout."""
        self.num_compilations += 1  # runs only while tracing, i.e. once per compilation
        state, key, metrics = scan_steps(self.device_callbacks, self.steps_per_call, state, key, batches)
        layout = _MetricsLayout(metrics)
        self._layouts.append(layout)
        return state, key, {len(self._layouts) - 1: layout.pack(metrics)}

    def _run_one(self, state: PyTree, key: jax.Array, batch: PyTree) -> tuple[PyTree, jax.Array, dict]:
        """:meth:`_run_steps` at K = 1 for one batch without the step axis."""
        return self._run_steps(state, key, jax.tree.map(lambda x: x[None], batch))

    @property
    def _step_call(self) -> Callable[..., tuple[PyTree, jax.Array, dict]]:
        """The compiled call the training loop makes: at K = 1 the one that takes a batch without the step axis."""
        return self._compiled_one if self.steps_per_call == 1 else self._compiled

    def compiled_text(self, batches: PyTree = None) -> str:
        """The optimized program (HLO text) of the call the training loop makes, for the current state and
        ``batches`` (one call's batches as the loop passes them; ``{}``, the default, for a run whose batch
        comes from the state, as with a :class:`~emote_jax.collectors.device.DeviceCollector`). For
        inspection, e.g. of the copies a step makes; compiles without running."""
        lowered = self._step_call.lower(self.ctx.state, self.ctx.key, {} if batches is None else batches)
        return lowered.compile().as_text()

    def _fetch_metrics(self, packed: dict[int, tuple[jax.Array, ...]], first: int) -> dict[str, np.ndarray]:
        """Bring a call's packed metrics to the host (one buffer per dtype), set :attr:`last_metrics`,
        and raise :class:`NonFiniteError` if a non-finite flag is set."""
        ((index, arrays),) = packed.items()
        layout = self._layouts[index]
        host = [np.asarray(a) for a in arrays]  # waits for the call; no per-metric transfer
        self.last_metrics = metrics = layout.unpack(host)
        if layout.flagged(host, metrics):
            bad = first_nonfinite(metrics, first)
            if bad is not None:
                raise NonFiniteError(*bad)
        return metrics

    # ---- host side ---------------------------------------------------------------------------------
    def _call(self, cb: _Base, hook: str, *args: Any) -> Any:
        try:
            return getattr(cb, hook)(*args)
        except TrainingShutdownException:
            raise
        except Exception as e:
            step = args[0].bp_step if args and isinstance(args[0], Context) else None
            raise CallbackError(cb.name, hook, step, e) from e

    def _host_hook(self, cb: _Base, hook: str, bp_step: int | None = None) -> None:
        ctx = self._host_ctx(bp_step)
        out = self._call(cb, hook, ctx)
        if out is not None:
            self._take_host_out(cb, hook, out)

    def _take_host_out(self, cb: _Base, hook: str, out: Any) -> None:
        """Adopt the context a host hook returned (checked: same state structure, shapes, dtypes)."""
        if not isinstance(out, Context):
            raise StateMismatchError(f"callback {cb.name!r} {hook} must return a Context or None, got {type(out).__name__}")
        state = _check_same_state(self.ctx.state, out.state, cb.name, hook) if hook != "restore_state" else out.state
        self.ctx = self.ctx.replace(state=state, key=out.key)
        if hook == "restore_state" and isinstance(out.bp_samples, int):
            self.bp_samples = out.bp_samples

    def _host_ctx(self, bp_step: int | None = None) -> Context:
        return self.ctx.replace(
            metrics=self.last_metrics,
            bp_step=self.bp_step if bp_step is None else bp_step,
            bp_samples=self.bp_samples,
        )

    def _hook_schedule(self, hook: str) -> list[tuple[HostCallback, int, Callable[[Context], Any]]]:
        """``(callback, cycle, bound hook)`` of every host callback whose ``hook`` runs at all (it
        overrides the no-op and has a cycle), in hook order: worked out once per ``train``, not per step."""
        return [(cb, cb.cycle, getattr(cb, hook)) for cb in self.host_callbacks if cb.cycle and overrides(cb, hook)]

    def _run_host_hooks(self, schedule: list, hook: str, first: int, k: int) -> None:
        """Run the cycle hooks of ``schedule`` due at steps ``first .. first + k - 1``, step by step."""
        begin = hook == "begin_cycle"
        ctx = None
        for step in range(first, first + k):
            for cb, cycle, fn in schedule:
                if cycle != 1 and ((step - 1) % cycle if begin else step % cycle):
                    continue
                if ctx is None or ctx.bp_step != step:  # one host context per step, unless a hook replaced it
                    ctx = self._host_ctx(step)
                try:
                    out = fn(ctx)
                except TrainingShutdownException:
                    raise
                except Exception as e:
                    raise CallbackError(cb.name, hook, step, e) from e
                if out is not None:
                    self._take_host_out(cb, hook, out)
                    ctx = None

    def _next_batches(self, it: Any) -> tuple[PyTree, int]:
        """K batches stacked on a leading axis (host arrays) and the per-step batch size; at K = 1 the
        batch as the loader gave it (the compiled call adds the axis)."""
        if self._loader_stacks:
            batch = next(it)
            batch, size = self._pop_size(batch, stacked=True)
            return batch, size
        items = [self._pop_size(next(it), stacked=False) for _ in range(self.steps_per_call)]
        if len(items) == 1:  # no copy, and device arrays (a prefetching loader) stay on the device
            return items[0]

        def stack(*xs: Any) -> Any:
            return jnp.stack(xs) if isinstance(xs[0], jax.Array) else np.stack([np.asarray(x) for x in xs])

        batches = jax.tree.map(stack, *[b for b, _ in items])
        return batches, sum(s for _, s in items) // len(items)

    def _pop_size(self, batch: Any, stacked: bool) -> tuple[Any, int]:
        if isinstance(batch, dict) and self.batch_size_key in batch:
            batch = dict(batch)
            size = batch.pop(self.batch_size_key)
            return batch, int(np.asarray(size).reshape(-1)[0])
        leaves = jax.tree.leaves(batch)
        if not leaves:
            return batch, 0
        shape = np.shape(leaves[0])
        return batch, int(shape[1] if stacked else shape[0]) if len(shape) > int(stacked) else 1

    def train(self, shutdown_signal: Callable[[], bool] | None = None, *, handle_signals: bool = True) -> Context:
        """Run the loop until the dataloader ends, a shutdown is signalled, or an error.

        ``shutdown_signal`` is polled before every compiled call; when it returns True, or when a
        callback or the dataloader raises :class:`TrainingShutdownException`, every ``end_training``
        runs and ``train`` returns. Any other error runs every ``end_training`` and then propagates
        (as a :class:`CallbackError` naming the callback when it came from a hook).
        Returns the final host context.

        With ``handle_signals`` (on the main thread), a first SIGINT/SIGTERM is a shutdown too: the
        loop stops at the next step boundary, every ``end_training`` runs (a Checkpointer writes its
        final checkpoint) and ``train`` returns with :attr:`interrupted_by` set; a second signal raises
        :class:`~emote_jax.faults.TrainingAborted` at once, without ``end_training``.
        A step flagged non-finite (a ``<name>/nonfinite`` metric, see :mod:`emote_jax.faults`) raises
        :class:`~emote_jax.faults.NonFiniteError` naming the callback and the step, before any
        ``end_cycle`` hook of that call runs.
        """
        self.interrupted_by = None
        self._begun: list[_Base] = []
        signals = SignalShutdown(enabled=handle_signals)
        try:
            with signals:
                return self._train(shutdown_signal or (lambda: False), signals)
        finally:
            self.interrupted_by = signals.received

    def _train(self, shutdown_signal: Callable[[], bool], signals: SignalShutdown) -> Context:
        """The loop of :meth:`train`."""
        try:
            for cb in self.callbacks:
                self._host_hook(cb, "restore_state")
            for cb in self.callbacks:
                self._begun.append(cb)  # its end_training runs even if this begin_training raises
                self._host_hook(cb, "begin_training")
            it = iter(self.dataloader)
            k = self.steps_per_call
            call = self._step_call
            self._warm = False
            begin_hooks, end_hooks = self._hook_schedule("begin_cycle"), self._hook_schedule("end_cycle")
            while True:
                if signals.received:  # before sampling, so that a resumed run samples what this one would
                    break
                try:
                    batches, size = self._next_batches(it)
                except StopIteration:
                    break
                if shutdown_signal() or signals.received:
                    break
                first = self.bp_step
                if begin_hooks:
                    self._run_host_hooks(begin_hooks, "begin_cycle", first, k)
                # NumPy batches go straight into the compiled call, which moves them in its own dispatch:
                # an explicit jax.device_put first costs ~0.2 ms per call on the CPU for nothing
                compilations = self.num_compilations
                with contextlib.nullcontext() if self._warm else _quiet_donation():  # a call that may compile
                    state, key, metrics = call(self._ctx.state, self._ctx.key, batches)
                self._warm = self.num_compilations == compilations
                self._ctx = self._ctx.replace(state=state, key=key)
                self._host_step = first + k  # the compiled step counts exactly k steps
                self.bp_samples += size * k
                self._fetch_metrics(metrics, first)
                if end_hooks:
                    self._run_host_hooks(end_hooks, "end_cycle", first, k)
        except TrainingShutdownException:
            pass
        except TrainingAborted:
            raise
        except BaseException:
            self._end_training(raising=True)
            raise
        self._end_training(raising=False)
        return self._host_ctx()

    def _end_training(self, raising: bool) -> None:
        """Run the end_training hook of every callback whose begin_training was called (a shutdown or an
        error in an earlier begin_training leaves the later ones unstarted, and they are not ended);
        when already raising, errors here must not mask the first."""
        begun, self._begun = self._begun, []
        for cb in begun:
            try:
                self._host_hook(cb, "end_training")
            except TrainingShutdownException:
                pass
            except Exception:
                if not raising:
                    raise
