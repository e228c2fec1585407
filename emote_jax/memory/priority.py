"""Prioritized replay's feedback loop: TD errors come back with the step's metrics, priorities follow.

No extra host round trip: the rows a batch was drawn from travel with the batch (``indices``, put there
by a :class:`~emote_jax.memory.samplers.PrioritizedSampler`), the losses report per-window ``td_error``
(per-sample metrics, :meth:`~emote_jax.context.Context.log_samples`), and both come back in the packed
metrics that the trainer fetches once per compiled call anyway.

* :class:`PriorityFeedback` (device, ``end_batch``): replaces every ``<loss>/td_error`` (B,) of the step by
  their mean ``priority/td_error`` (B,) and adds the batch's ``priority/indices`` (B,).
* :class:`PriorityUpdater` (host, after each call): writes the call's ``(K, B)`` TD errors to the table's
  sampler for the ``(K, B)`` rows they came from, in step order (a row drawn twice keeps the later value).

Because the rows travel with the batch, a prefetched batch (drawn before the previous call's update)
is paired with its own rows whatever the prefetch depth; it was only drawn from slightly older
priorities (docs/decisions/0009-pluggable-sampling.md).
"""

from __future__ import annotations

import jax.numpy as jnp

from emote_jax.callback import Callback, HostCallback
from emote_jax.context import Context
from emote_jax.memory.table import ReplayTable

#: The suffix of the per-sample metrics PriorityFeedback collects (QLoss logs ``<name>/td_error``).
TD_SUFFIX = "/td_error"


class PriorityFeedback(Callback):
    """Device side: the step's TD errors and the batch's rows into the metrics, as ``<name>/td_error``
    and ``<name>/indices`` (B,).

    The TD error of a window is the mean of the ``*/td_error`` per-sample metrics of the step (the
    twin critics of SAC: the mean of both). Raises at trace time when the batch has no ``indices`` (the
    table's sampler is not prioritized) or no loss reported a TD error.
    """

    def __init__(self, *, data_group: str = "default", name: str = "priority", order: int = 0):
        super().__init__(name=name, order=order)
        self.data_group = data_group

    def end_batch(self, ctx: Context) -> Context:
        batch = ctx.batch[self.data_group]
        if "indices" not in batch:
            raise ValueError(f"{self.name}: expected the batch's {self.data_group!r} group to hold 'indices' "
                             f"(a table with a PrioritizedSampler), got keys {sorted(batch)}")
        tds = {k: v for k, v in ctx.metrics.items() if k.endswith(TD_SUFFIX) and jnp.ndim(v) == 1}
        if not tds:
            raise ValueError(f"{self.name}: expected a loss to report a per-sample '*{TD_SUFFIX}' metric (QLoss "
                             f"does when the batch has 'weights'), got metrics {sorted(ctx.metrics)}")
        metrics = {k: v for k, v in ctx.metrics.items() if k not in tds}
        td = jnp.mean(jnp.stack(list(tds.values())), axis=0) if len(tds) > 1 else next(iter(tds.values()))
        return ctx.replace(metrics=metrics).log_samples(**{f"{self.name}/td_error": td,
                                                          f"{self.name}/indices": batch["indices"]})


class PriorityUpdater(HostCallback):
    """Host side: after each compiled call, ``table.update_priorities`` with the call's ``(K, B)`` rows and
    TD errors (the metrics :class:`PriorityFeedback` named ``<feedback>/...``).

    Order -10: before the collectors' ``end_cycle`` writes new rows (which may overwrite rows of the
    batch) and before checkpoints, so a checkpoint holds the priorities after the call.
    """

    def __init__(self, table: ReplayTable, *, feedback: str = "priority", name: str = "priority_updater",
                 order: int = -10):
        super().__init__(name=name, order=order, cycle=1)
        self.table, self.feedback = table, feedback
        self._seen: object | None = None
        self.updates = 0  # calls whose priorities were written

    def end_cycle(self, ctx: Context) -> None:
        metrics = ctx.metrics
        if metrics is self._seen:  # the K steps of one call share its metrics: update once
            return
        self._seen = metrics
        try:
            rows, td = metrics[f"{self.feedback}/indices"], metrics[f"{self.feedback}/td_error"]
        except KeyError:
            raise KeyError(f"{self.name}: expected the metrics '{self.feedback}/indices' and "
                           f"'{self.feedback}/td_error' (add a PriorityFeedback named {self.feedback!r}), "
                           f"got {sorted(metrics)}") from None
        self.table.update_priorities(rows.reshape(-1), td.reshape(-1))
        self.updates += 1
