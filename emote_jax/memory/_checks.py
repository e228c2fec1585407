"""Argument checks shared by the table and the proxy, with messages that say expected/got/where."""

from __future__ import annotations

from typing import Any

import numpy as np

Shape = tuple[int, ...]


def positive_int(value: Any, name: str, where: str) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` and ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where}: expected {name} to be an int >= 1, got {value!r}")
    return int(value)


def array_like(value: Any, name: str, shape: Shape, dtype: np.dtype, where: str) -> np.ndarray:
    """``value`` as an array of exactly ``shape`` whose dtype can be cast to ``dtype`` (same kind).

    Raises ValueError (shape) or TypeError (dtype) with what was expected, what came, and where.
    The array is returned uncast; the caller writes it into a column of ``dtype``.
    """
    try:
        arr = np.asarray(value)
    except Exception as err:  # e.g. ragged lists
        raise ValueError(f"{where}: {name} could not be converted to an array: {err}") from None
    if arr.shape != tuple(shape):
        raise ValueError(f"{where}: expected {name} of shape {tuple(shape)}, got shape {arr.shape}")
    if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
        raise TypeError(
            f"{where}: expected {name} with a dtype castable to {np.dtype(dtype)} (same kind), "
            f"got {arr.dtype}"
        )
    return arr


def finite(arr: np.ndarray, name: str, where: str) -> None:
    """A ValueError if a floating or complex ``arr`` holds NaN or infinity."""
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        first = tuple(int(i) for i in bad[0]) if bad.size else ()
        raise ValueError(
            f"{where}: expected finite values in {name}, got {int(len(bad))} non-finite "
            f"(first at index {first}: {arr[first] if first else arr})"
        )
