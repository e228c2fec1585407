"""Checkpoints of a :class:`~emote_jax.population.Population`: the stacked state and the members' keys.

A population collects on the device, so its whole training state is one pytree on the device: every
member's parameters, optimizer states, targets, envs, replay buffer and counters, stacked on a leading
axis P, and the members' PRNG keys. :func:`save_population` writes them with Orbax as a flat mapping
``{path: array}`` (the paths are ``jax.tree_util.keystr`` of the state's leaves, so a reader can see
what is where), with a JSON of the step and the population's shape beside it. :func:`restore_population`
reads them into a population built from the same configs. The next calls then continue exactly as
the saved population would have: same arrays, same keys, same compiled program. Nothing is unpickled.
The arrays are read into the restoring population's sharding, so a checkpoint written with the members
on N devices loads on M (any M that divides P; one included).

    save_population(pop, run_dir / "population-checkpoints")           # -> .../<bp step>
    pop = Population([build_run(SAC, c) for c in configs])
    restore_population(pop, run_dir / "population-checkpoints")        # the newest
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_META, _PBT = "population.json", "pbt.json"


def _flat(tree: Any) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def population_checkpoint_steps(directory: str | Path) -> list[int]:
    """The bp steps of the complete population checkpoints in ``directory``, ascending."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / _META).is_file())


def save_population(pop: Any, directory: str | Path, pbt: Any = None) -> Path:
    """Write ``pop``'s state and keys to ``directory/<bp step>`` (the step done: ``pop.bp_step - 1``) and
    return that path; with ``pbt`` (a :class:`~emote_jax.pbt.PopulationBasedTraining`) its draws, next
    exploit and history too (``pbt.json``). The population JSON is written last, so a directory without it
    is an unfinished save."""
    step = pop.bp_step - 1
    path = Path(directory).resolve() / str(step)
    if path.exists():
        raise FileExistsError(f"save_population: {path} exists already (a checkpoint of bp step {step})")
    tree = {"state": _flat(pop.state), "key": np.asarray(jax.random.key_data(pop.key))}
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path / "arrays", tree)
        ckptr.wait_until_finished()
    meta = {"bp_step": step, "size": pop.size, "steps_per_call": pop.steps_per_call, "devices": len(pop.devices),
            "leaves": len(tree["state"]), "key_impl": str(jax.random.key_impl(pop.key))}
    if pbt is not None:
        (path / _PBT).write_text(json.dumps(pbt.state_dict(), indent=2))
    (path / _META).write_text(json.dumps(meta, indent=2))
    return path


def restore_population(pop: Any, directory: str | Path, step: int | None = None, pbt: Any = None) -> int:
    """Load the checkpoint of bp step ``step`` (default: the newest) in ``directory`` into ``pop`` (built
    from the same configs as the saved one) and return its step; with ``pbt``, PBT's saved draws, next
    exploit and history into it (a checkpoint saved without PBT leaves ``pbt`` as it is). A checkpoint of
    another population (size, state layout, shapes or dtypes) is refused with what differs; ``pop`` is
    unchanged then."""
    steps = population_checkpoint_steps(directory)
    if not steps:
        raise FileNotFoundError(f"restore_population: no population checkpoint in {directory}")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(f"restore_population: no checkpoint of bp step {step} in {directory}; have {steps}")
    path = Path(directory).resolve() / str(step)
    meta = json.loads((path / _META).read_text())
    if meta["size"] != pop.size:
        raise ValueError(f"restore_population: {path} holds a population of {meta['size']} members; this one has "
                         f"{pop.size}")
    live = _flat(pop.state)
    kd = jax.random.key_data(pop.key)
    # Read into this population's layout (its devices), whatever layout wrote it: N devices load on M.
    where = _flat(pop.state_sharding)
    abstract = {"state": {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where[k]) for k, x in live.items()},
                "key": jax.ShapeDtypeStruct(kd.shape, kd.dtype, sharding=pop.sharding)}
    with ocp.StandardCheckpointer() as ckptr:
        saved = ckptr.metadata(path / "arrays")
        saved = getattr(saved, "item_metadata", saved)
        saved = getattr(saved, "tree", saved)
        saved_state = dict(saved["state"])
        if set(saved_state) != set(live):
            missing, extra = sorted(set(live) - set(saved_state)), sorted(set(saved_state) - set(live))
            raise ValueError(f"restore_population: {path} has another state layout: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        bad = [k for k, m in saved_state.items()
               if tuple(m.shape) != live[k].shape or np.dtype(m.dtype) != np.dtype(live[k].dtype)]
        if bad:
            k = bad[0]
            raise ValueError(f"restore_population: {path}: {k} is {tuple(saved_state[k].shape)} "
                             f"{saved_state[k].dtype} there, {live[k].shape} {live[k].dtype} here "
                             f"({len(bad)} leaves differ)")
        tree = ckptr.restore(path / "arrays", abstract)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pop.state)
    pop.state = jax.tree_util.tree_unflatten(treedef, [tree["state"][jax.tree_util.keystr(p)] for p, _ in leaves])
    pop.key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(pop.key))
    pop.sync_monitors()
    if pbt is not None and (path / _PBT).is_file():
        pbt.load_state_dict(json.loads((path / _PBT).read_text()))
    return step


class PopulationCheckpointer:
    """Saves a population every ``interval`` bp steps (and at the end) into ``directory``, keeping the last
    ``keep`` (with PBT's state when ``pbt`` is given); what ``emote-jax train --population P
    --checkpoint-interval N`` uses, and ``--resume`` reads."""

    def __init__(self, directory: str | Path, interval: int, keep: int = 3, pbt: Any = None):
        if interval < 1 or keep < 1:
            raise ValueError(f"PopulationCheckpointer: interval and keep must be >= 1, got {interval} and {keep}")
        self.directory, self.interval, self.keep, self.pbt = Path(directory), int(interval), int(keep), pbt
        self._last: int | None = None

    def after_call(self, pop: Any, force: bool = False) -> Path | None:
        """Save if ``interval`` bp steps have passed since the last save (or ``force``, unless this step is
        saved already); prune to the newest ``keep``."""
        step = pop.bp_step - 1
        if self._last is None:
            saved = population_checkpoint_steps(self.directory)
            self._last = saved[-1] if saved else 0
        if step == self._last or (not force and step - self._last < self.interval):
            return None
        path = save_population(pop, self.directory, self.pbt)
        self._last = step
        for old in population_checkpoint_steps(self.directory)[:-self.keep]:
            shutil.rmtree(self.directory / str(old), ignore_errors=True)
        return path
