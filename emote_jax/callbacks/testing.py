"""The reference's test checks: end training at ``test_length`` backprop steps and fail the test if a
loss is too high (:class:`FinalLossTestCheck`) or the reward too low (:class:`FinalRewardTestCheck`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emote_jax.callback import HostCallback, TrainingShutdownException
from emote_jax.context import Context


class TestCheckError(AssertionError):
    """A test check failed: a loss above its cutoff or a reward below it, at the end of the test."""

    __test__ = False  # not a pytest test class


def _last(ctx: Context, metric: str, where: str) -> float:
    """The value of ``metric`` at the current step (the last of the call's ``(K,)`` values)."""
    if metric not in ctx.metrics:
        raise KeyError(f"{where}: no metric {metric!r} in the last call; have {sorted(ctx.metrics)}")
    return float(np.asarray(ctx.metrics[metric]).reshape(-1)[-1])


class FinalLossTestCheck(HostCallback):
    """At ``test_length`` backprop steps: raise :class:`TestCheckError` if the loss of any of ``callbacks``
    (their ``<name>/loss`` metric at that step) is above its cutoff, else end training.

    Args:
        callbacks: the loss callbacks (or their names) to check.
        cutoffs: one cutoff per callback.
        test_length: the backprop step of the check.
    """

    def __init__(self, callbacks: Sequence[object], cutoffs: Sequence[float], test_length: int,
                 *, name: str = "final_loss_test_check"):
        names = [c if isinstance(c, str) else getattr(c, "name") for c in callbacks]
        if len(names) != len(cutoffs):
            raise ValueError(f"{name}: {len(names)} callbacks but {len(cutoffs)} cutoffs; expected one cutoff each")
        super().__init__(test_length, name=name)
        self.checks = list(zip(names, (float(c) for c in cutoffs)))

    def end_cycle(self, ctx: Context) -> None:
        for loss_name, cutoff in self.checks:
            loss = _last(ctx, f"{loss_name}/loss", self.name)
            if not loss <= cutoff:
                raise TestCheckError(f"{self.name}: the loss of {loss_name!r} is {loss:.6g} at bp step {ctx.bp_step}, "
                                     f"above its cutoff {cutoff:.6g}")
        raise TrainingShutdownException(f"{self.name}: every loss under its cutoff at bp step {ctx.bp_step}")


class FinalRewardTestCheck(HostCallback):
    """At ``test_length`` backprop steps: raise :class:`TestCheckError` if ``metric`` (default SAC's mean
    batch reward, the reference's ``training/scaled_reward``) is below ``cutoff``, else end training."""

    def __init__(self, cutoff: float, test_length: int, metric: str = "q_target/reward_mean",
                 *, name: str = "final_reward_test_check"):
        super().__init__(test_length, name=name)
        self.cutoff, self.metric = float(cutoff), metric

    def end_cycle(self, ctx: Context) -> None:
        reward = _last(ctx, self.metric, self.name)
        if not reward >= self.cutoff:
            raise TestCheckError(f"{self.name}: {self.metric} is {reward:.6g} at bp step {ctx.bp_step}, below the "
                                 f"cutoff {self.cutoff:.6g}")
        raise TrainingShutdownException(f"{self.name}: {self.metric} {reward:.6g} >= {self.cutoff:.6g}")
