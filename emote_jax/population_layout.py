"""Where a :class:`~emote_jax.population.Population` lives: its devices, its mesh, and a sharding per leaf.

The members are split over the mesh axis :data:`POPULATION_AXIS` (each leaf's leading axis P). With
``env_shards`` E > 1 (``emote-jax train --population P --shard-envs E``) the mesh gets a second axis,
:data:`~emote_jax.collectors.device.ENV_AXIS`, of E devices: the devices form groups of E, the members are
split over the groups, and each member's envs and replay buffer are split over the E devices of its group
(:meth:`~emote_jax.collectors.device.DeviceCollector.partition_specs`, behind the population axis). Every
other array of a member is whole on each device of its group.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from emote_jax.collectors.device import ENV_AXIS
from emote_jax.context import PyTree

POPULATION_AXIS = "population"


def population_devices(size: int, devices: int | Sequence[Any] | None = None, env_shards: int = 1) -> list[Any]:
    """The devices a population of ``size`` members is sharded over: ``devices`` given as a list is used as
    it is, as a number ``n`` the first ``n`` of ``jax.devices()``; None: the most of ``jax.devices()`` that
    divide ``size`` (times ``env_shards``). Each group of ``env_shards`` devices holds ``size / groups``
    members, so that number must be whole; with ``env_shards`` E > 1 the count must be a multiple of E."""
    e = max(1, int(env_shards))
    found = jax.devices()
    if devices is None:
        if len(found) < e:
            raise ValueError(f"Population: each member's envs split over {e} devices, but this process sees "
                             f"{len(found)} device(s) ({found[0].platform}); expected at least {e}")
        groups = max(g for g in range(1, len(found) // e + 1) if size % g == 0)
        return list(found[:groups * e])
    if isinstance(devices, int):
        if not 1 <= devices <= len(found):
            raise ValueError(f"Population: devices={devices}, but this process sees {len(found)} device(s) "
                             f"({found[0].platform}); expected 1..{len(found)}")
        devices = found[:devices]
    devices = list(devices)
    if e > 1 and (not devices or len(devices) % e):
        raise ValueError(f"Population: {len(devices)} device(s) cannot be cut into groups of {e} (each member's envs "
                         f"split over {e} devices); use a device count that is a multiple of {e}")
    if not devices or size % (len(devices) // e):
        raise ValueError(f"Population: {size} members cannot be split evenly over {len(devices) // e} "
                         + ("device(s)" if e == 1 else f"groups of {e} devices") + "; use a population that is a "
                         f"multiple of the device count or a device count that divides {size}")
    return devices


def population_mesh(devices: Sequence[Any], env_shards: int = 1) -> Mesh:
    """The population's mesh: one axis :data:`POPULATION_AXIS` over ``devices``, or with ``env_shards`` E > 1
    two, ``(len(devices) / E, E)`` named (:data:`POPULATION_AXIS`, :data:`~emote_jax.collectors.device.ENV_AXIS`)."""
    e = max(1, int(env_shards))
    if e == 1:
        return Mesh(np.array(devices), (POPULATION_AXIS,))
    return Mesh(np.array(devices).reshape(len(devices) // e, e), (POPULATION_AXIS, ENV_AXIS))


def state_shardings(state: PyTree, mesh: Mesh, collector: Any = None) -> PyTree:
    """A ``NamedSharding`` per leaf of the stacked ``state`` (leading axis P): the members split over
    :data:`POPULATION_AXIS`; with a mesh that has :data:`~emote_jax.collectors.device.ENV_AXIS`, the slot of
    ``collector`` (a :class:`~emote_jax.collectors.device.DeviceCollector`) also has its env axes split as
    its :meth:`partition_specs` say (which look at the slot's structure only, so the stacked one serves)."""
    members = NamedSharding(mesh, PartitionSpec(POPULATION_AXIS))
    out = {name: jax.tree.map(lambda _: members, slot) for name, slot in state.items()}
    if ENV_AXIS in mesh.axis_names and collector is not None:
        out[collector.name] = jax.tree.map(lambda spec: NamedSharding(mesh, PartitionSpec(POPULATION_AXIS, *spec)),
                                           collector.partition_specs(state[collector.name]),
                                           is_leaf=lambda x: isinstance(x, PartitionSpec))
    return out
