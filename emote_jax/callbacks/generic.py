"""``BackPropStepsTerminator``: end training after a number of backprop steps (the reference's)."""

from __future__ import annotations

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context


class BackPropStepsTerminator(HostCallback):
    """Ends training (every ``end_training`` runs, ``train`` returns) once ``bp_steps`` backprop steps ran.

    Host callbacks run between compiled calls: with ``steps_per_call`` K that does not divide
    ``bp_steps``, training ends after the call that contains step ``bp_steps`` (at most K - 1 steps later).
    """

    def __init__(self, bp_steps: int, *, name: str = "bp_steps_terminator"):
        if isinstance(bp_steps, bool) or not isinstance(bp_steps, int) or bp_steps < 1:
            raise ValueError(f"{name}: expected bp_steps an int >= 1, got {bp_steps!r}")
        super().__init__(bp_steps, name=name)
        self.bp_steps = bp_steps

    def end_cycle(self, ctx: Context) -> None:
        raise TrainingShutdownException(f"{self.name}: {self.bp_steps} backprop steps done")
