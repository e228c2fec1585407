"""The checks the trainer makes of what callbacks give it: the callback list (types, unique names, the
trainer's reserved slot, no per-step hooks on host callbacks) and the states that hooks return (same
structure, shapes and dtypes as they were given). :mod:`emote_jax.trainer` re-exports these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from emote_jax.callback import Callback, HostCallback, _Base, host_per_step_hooks
from emote_jax.context import PyTree

TRAINER_SLOT = "trainer"


class StateMismatchError(TypeError):
    """A device hook returned a state whose structure, shapes or dtypes differ from what it was given."""


def _describe(leaf: Any) -> str:
    return f"{leaf.dtype}{list(leaf.shape)}"


def _check_same_state(before: PyTree, after: PyTree, cb_name: str, hook: str) -> PyTree:
    """Check that ``after`` has the structure, shapes and dtypes of ``before``; drop weak types."""
    if jax.tree.structure(before) != jax.tree.structure(after):
        raise StateMismatchError(
            f"callback {cb_name!r} {hook} returned a state of another structure.\n"
            f"  expected: {jax.tree.structure(before)}\n  got:      {jax.tree.structure(after)}"
        )
    paths_before = jax.tree_util.tree_flatten_with_path(before)[0]
    out = []
    for (path, b), a in zip(paths_before, jax.tree.leaves(after)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise StateMismatchError(
                f"callback {cb_name!r} {hook} put a {type(a).__name__} at state{jax.tree_util.keystr(path)}, "
                f"expected an array {_describe(b)}"
            )
        if a.shape != b.shape or a.dtype != b.dtype:
            raise StateMismatchError(
                f"callback {cb_name!r} {hook} changed state{jax.tree_util.keystr(path)}: "
                f"expected {_describe(b)}, got {_describe(a)}"
            )
        out.append(jax.lax.convert_element_type(a, b.dtype) if getattr(a, "weak_type", False) else a)
    return jax.tree.unflatten(jax.tree.structure(before), out)


def _sorted_callbacks(callbacks: Sequence[_Base]) -> list[_Base]:
    for cb in callbacks:
        if not isinstance(cb, (Callback, HostCallback)):
            raise TypeError(f"expected Callback or HostCallback instances, got {type(cb).__name__}: {cb!r}")
    names = [cb.name for cb in callbacks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"callback names must be unique (they name state slots); duplicated: {dupes}")
    if TRAINER_SLOT in names:
        raise ValueError(f"the name {TRAINER_SLOT!r} is reserved for the trainer's own slot")
    for cb in callbacks:
        hooks = host_per_step_hooks(cb)
        if hooks:
            raise TypeError(
                f"HostCallback {cb.name!r} ({type(cb).__name__}) defines {', '.join(hooks)}: a host callback has no "
                "per-step hooks (the steps run inside one compiled call), so it would never be called. Put per-step "
                "device work in a Callback (its begin_batch/backward/end_batch are traced into the step); for host "
                "work, use begin_cycle/end_cycle with cycle=1 (with steps_per_call=1, every step)")
    return sorted(callbacks, key=lambda cb: cb.order)
