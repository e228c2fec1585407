"""Layout and RNG-state helpers of :class:`~emote_jax.memory.table.ReplayTable`: normalising an observation
spec and a shape, and copying/restoring a NumPy bit generator's state (JSON only, never pickled)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ObservationSpec = Mapping[str, tuple[tuple[int, ...], Any]]


def normalise_shape(shape: Any, name: str, where: str) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in shape)
    except TypeError:
        raise ValueError(f"{where}: expected {name} to be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in out):
        raise ValueError(f"{where}: expected {name} with non-negative sizes, got {out}")
    return out


def normalise_spec(spec: ObservationSpec, where: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(f"{where}: expected observation_spec as a non-empty {{key: (shape, dtype)}}, got {spec!r}")
    out = {}
    for key, entry in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: expected observation_spec keys to be str, got {key!r}")
        try:
            shape, dtype = entry
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected observation_spec[{key!r}] = (shape, dtype), got {entry!r}") from None
        out[key] = (normalise_shape(shape, f"observation_spec[{key!r}] shape", where), np.dtype(dtype))
    return out


#: Bit generators a saved sampler state may name (all of NumPy's; nothing else is ever constructed).
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON-like value (dicts, lists, numbers), NumPy ints and arrays made plain."""
    if isinstance(value, Mapping):
        return {str(k): copy_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def rng_from_state(state: Any, where: str) -> np.random.Generator:
    """A ``np.random.Generator`` whose bit generator has the saved ``state`` (a clear error otherwise)."""
    name = state.get("bit_generator") if isinstance(state, Mapping) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"{where}: expected a sampler RNG state of one of {_BIT_GENERATORS}, got {name!r}")
    bit_gen = getattr(np.random, name)()
    try:
        bit_gen.state = copy_json(state)
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{where}: the sampler RNG state is not a valid {name} state: {e}") from None
    return np.random.Generator(bit_gen)
