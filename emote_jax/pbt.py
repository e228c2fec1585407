"""Population-based training (Jaderberg et al., 2017) over a :class:`~emote_jax.population.Population`.

Every ``interval`` backprop steps, between two compiled calls, the members are ranked by a fitness (by
default the mean return of each member's last 10 episodes). Each of the ``n`` worst members takes a copy
of the whole training state of one of the ``n`` best members (*exploit*): parameters, optimizer states,
target networks, every slot except the ones in ``keep``. By default ``keep`` is the device collector's slot,
so each member keeps its own envs and replay, and each keeps its own PRNG key. Then each of the named
hyperparameters of each copied member is multiplied by a factor drawn from ``factors`` (*explore*).

Every exploit is one call of one jitted function over the stacked state, with the same shapes each time.
The hyperparameters live in the state (``inject_hyperparams`` learning rates, a target's ``hparams``), so
neither the exploit nor the population's step is ever compiled again. :attr:`PopulationBasedTraining.history`
is the schedule of exploits: for each, the step, who copied whom, the fitness and the new values.

    pbt = PopulationBasedTraining(["q1/learning_rate", "q2/learning_rate", "policy/learning_rate"], interval=5_000)
    pop.train(100_000, pbt=pbt)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from emote_jax.context import PyTree


def last10_returns(pop: Any) -> np.ndarray:
    """The default fitness: each member's mean return over its last 10 episodes, (P,); NaN before any."""
    pop.sync_monitors()
    return np.array([np.mean(list(r.collector.episode_returns)[-10:]) if r.collector.episode_returns else np.nan
                     for r in pop.runs], dtype=np.float64)


def _hyperparam_home(slot: Any, slot_name: str, key: str) -> str:
    """Where hyperparameter ``key`` lives in ``slot``: "opt_state" (an injected optimizer hyperparameter) or
    "hparams" (a callback's own hyperparameters); a ValueError naming what the slot has otherwise."""
    opt = slot.get("opt_state") if isinstance(slot, Mapping) else None
    if opt is not None and key in getattr(opt, "hyperparams", {}):
        return "opt_state"
    if isinstance(slot, Mapping) and isinstance(slot.get("hparams"), Mapping) and key in slot["hparams"]:
        return "hparams"
    have = sorted([*getattr(opt, "hyperparams", {}), *(slot.get("hparams", {}) if isinstance(slot, Mapping) else {})])
    raise ValueError(f"PopulationBasedTraining: slot {slot_name!r} has no hyperparameter {key!r} in the state; it "
                     f"has {have or 'none'}")


def _scaled(slot: PyTree, home: str, key: str, scale: jax.Array) -> PyTree:
    """``slot`` with hyperparameter ``key`` (in ``home``) multiplied by ``scale`` (same dtype)."""
    if home == "opt_state":
        opt = slot["opt_state"]
        hp = dict(opt.hyperparams)
        hp[key] = (hp[key] * scale).astype(hp[key].dtype)
        return {**slot, "opt_state": opt._replace(hyperparams=hp)}
    hp = dict(slot["hparams"])
    hp[key] = (hp[key] * scale).astype(hp[key].dtype)
    return {**slot, "hparams": hp}


class PopulationBasedTraining:
    """Exploit and explore between a population's compiled calls (see the module docstring).

    Args:
        hyperparams: ``"slot/name"`` of each hyperparameter to perturb, e.g. ``"q1/learning_rate"`` (an
            optimizer's injected hyperparameter) or ``"q_target/tau"`` (a callback's ``hparams``).
        interval: backprop steps between exploits (checked after each compiled call).
        fitness: ``Population -> (P,)``, higher is better; NaN counts as the worst. Default:
            :func:`last10_returns`.
        fraction: the share of members replaced each time, and the share they copy from: ``n =
            max(1, floor(P * fraction))`` worst take the state of the ``n`` best (``fraction <= 0.5``).
        factors: each perturbed hyperparameter of a copied member is multiplied by one of these, drawn
            uniformly and independently.
        keep: slots every member keeps as its own (default: the collector's slot: envs and replay).
        seed: the seed of the draws (which donor, which factor).
        out: where a line per exploit is printed (None: nowhere).
    """

    def __init__(self, hyperparams: Sequence[str], interval: int,
                 fitness: Callable[[Any], np.ndarray] | None = None, fraction: float = 0.25,
                 factors: Sequence[float] = (0.8, 1.2), keep: Sequence[str] | None = None, seed: int = 0,
                 out: TextIO | None = None):
        if interval < 1:
            raise ValueError(f"PopulationBasedTraining: interval must be >= 1 backprop step, got {interval}")
        if not 0.0 < fraction <= 0.5:
            raise ValueError(f"PopulationBasedTraining: fraction must be in (0, 0.5], got {fraction}")
        if not factors or any(not np.isfinite(f) or f <= 0 for f in factors):
            raise ValueError(f"PopulationBasedTraining: factors must be finite numbers > 0, got {list(factors)}")
        bad = [h for h in hyperparams if h.count("/") != 1 or not all(h.split("/"))]
        if bad:
            raise ValueError(f"PopulationBasedTraining: hyperparams are 'slot/name' (e.g. 'q1/learning_rate'), got {bad}")
        self.hyperparams = [tuple(h.split("/")) for h in hyperparams]
        self.interval, self.fitness = int(interval), fitness or last10_returns
        self.fraction, self.factors = float(fraction), np.asarray(factors, np.float32)
        self.keep, self.out = None if keep is None else list(keep), out
        self.rng = np.random.default_rng(seed)
        self.history: list[dict[str, Any]] = []
        self.num_compilations = 0
        self._next: int | None = None
        self._exploit: Callable[..., PyTree] | None = None

    def _build(self, pop: Any) -> None:
        if pop.size < 2:
            raise ValueError(f"PopulationBasedTraining: needs a population of at least 2 members, got {pop.size}")
        keep = self.keep if self.keep is not None else [pop.runs[0].collector.collector.name]
        missing = [k for k in keep if k not in pop.state]
        if missing:
            raise ValueError(f"PopulationBasedTraining: keep names slots {missing} that the state does not have "
                             f"(it has {sorted(pop.state)})")
        homes = {}
        for slot, key in self.hyperparams:
            if slot not in pop.state:
                raise ValueError(f"PopulationBasedTraining: no slot {slot!r} in the state (it has {sorted(pop.state)})")
            homes[(slot, key)] = _hyperparam_home(pop.state[slot], slot, key)
        keep_set = set(keep)

        def exploit(state: PyTree, src: jax.Array, scales: jax.Array) -> PyTree:
            self.num_compilations += 1  # runs only while tracing
            new = {name: slot if name in keep_set else jax.tree.map(lambda x: x[src], slot)
                   for name, slot in state.items()}
            for j, (slot, key) in enumerate(self.hyperparams):
                new[slot] = _scaled(new[slot], homes[(slot, key)], key, scales[:, j])
            return new

        self._exploit = jax.jit(exploit, donate_argnums=0, out_shardings=pop.state_sharding)  # the members stay put
        if self._next is None:  # the first exploit at backprop step `interval` (or the first call past it)
            self._next = self.interval

    def after_call(self, pop: Any) -> dict[str, Any] | None:
        """Exploit and explore if ``interval`` backprop steps have passed since the last exploit (the first:
        once the population has run ``interval`` steps); returns the event (also appended to
        :attr:`history`), or None."""
        if self._exploit is None:
            self._build(pop)
        done = pop.bp_step - 1
        if done < self._next:
            return None
        self._next = done + self.interval
        fit = np.asarray(self.fitness(pop), np.float64)
        if fit.shape != (pop.size,):
            raise ValueError(f"PopulationBasedTraining: fitness must return one number per member, shape "
                             f"({pop.size},); got shape {fit.shape}")
        if np.all(np.isnan(fit)):  # nothing to rank yet (no episode finished): try again next interval
            return None
        order = np.argsort(np.where(np.isnan(fit), -np.inf, fit), kind="stable")  # worst first
        n = max(1, int(pop.size * self.fraction))
        receivers, best = order[:n], order[-n:]
        donors = self.rng.choice(best, size=n)
        src = np.arange(pop.size)
        src[receivers] = donors
        scales = np.ones((pop.size, len(self.hyperparams)), np.float32)
        scales[receivers] = self.rng.choice(self.factors, size=(n, len(self.hyperparams)))
        pop.state = self._exploit(pop.state, jnp.asarray(src, jnp.int32), jnp.asarray(scales))
        values = {f"{slot}/{key}": self._values(pop.state[slot], slot, key) for slot, key in self.hyperparams}
        event = {"bp_step": done, "receivers": receivers.tolist(), "donors": donors.tolist(),
                 "fitness": [None if np.isnan(f) else float(f) for f in fit], "hyperparams": values}
        self.history.append(event)
        if self.out is not None:
            pairs = ", ".join(f"{r} <- {d}" for r, d in zip(event["receivers"], event["donors"]))
            print(f"pbt at bp step {done}: {pairs}", file=self.out, flush=True)
        return event

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to go on as this one would (JSON-serialisable): the draws' generator
        state, the next exploit's step and the :attr:`history`."""
        return {"rng": self.rng.bit_generator.state, "next": self._next, "history": self.history}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over :meth:`state_dict` of a saved run; a state of another generator is refused."""
        want = type(self.rng.bit_generator).__name__
        if state["rng"].get("bit_generator") != want:
            raise ValueError(f"PopulationBasedTraining.load_state_dict: expected a {want} generator state, got "
                             f"{state['rng'].get('bit_generator')!r}")
        self.rng.bit_generator.state = state["rng"]
        self._next = None if state["next"] is None else int(state["next"])
        self.history = list(state["history"])

    @staticmethod
    def _values(slot: PyTree, slot_name: str, key: str) -> list[float]:
        home = _hyperparam_home(slot, slot_name, key)
        x = slot["opt_state"].hyperparams[key] if home == "opt_state" else slot["hparams"][key]
        return np.asarray(x, np.float64).tolist()
