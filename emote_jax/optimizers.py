"""``modified_adamw``: the reference's ``ModifiedAdamW`` as an optax transformation.

AdamW whose decoupled weight decay applies to dense and conv kernels only: never to biases, LayerNorm
scales or a parameter under a module named in ``exclude`` (the reference's ``layers_to_exclude``).
Usable wherever an optax optimizer factory is, e.g. ``LossCallback(optimizer=modified_adamw,
optimizer_kwargs={"weight_decay": 0.01})`` (the weight decay is then a hyperparameter in the state).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax


def kernel_mask(params: Any, exclude: Sequence[str] = ()) -> Any:
    """A tree like ``params`` of bools: True for a leaf named ``kernel`` under no module named in ``exclude``."""
    excluded = set(exclude)

    def decays(path: tuple[Any, ...], _leaf: Any) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return bool(names) and names[-1] == "kernel" and not excluded.intersection(names[:-1])

    return jax.tree_util.tree_map_with_path(decays, params)


def modified_adamw(learning_rate: Any, weight_decay: float = 0.01, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, exclude: Sequence[str] = ()) -> optax.GradientTransformation:
    """``optax.adamw`` with weight decay on kernels only (:func:`kernel_mask`)."""
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=lambda params: kernel_mask(params, tuple(exclude)))
