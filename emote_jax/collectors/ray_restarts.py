"""Starting and restarting the Ray actors, seen from the learner: beginning an actor's epoch, telling an
actor's death (Ray restarts its process) from an error of its code, closing a dead actor's running episodes
as interrupted, starting its next epoch once Ray has brought it back (or dropping it past ``max_restarts``
or ``restart_timeout``), and the lines that say so.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from emote_jax.collectors.ray_slots import RayCollectorBase, _Slot, actor_seed

#: The actor-death errors of Ray that mean "restart": anything else an actor raises is the user's error.
_DEATH_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorUnschedulableError",
                 "WorkerCrashedError", "NodeDiedError", "OwnerDiedError")


def _is_death(e: BaseException) -> bool:
    """Whether ``e`` says the actor's process is gone (Ray restarts it), not that its code raised."""
    return any(cls.__name__ in _DEATH_ERRORS for cls in type(e).__mro__)


class RayRestarts(RayCollectorBase):
    """The actor starts and the fault handling of :class:`~emote_jax.collectors.ray.RayCollector`."""

    def _start_actor(self, s: _Slot) -> Any:
        """Begin a new epoch of actor ``s`` (fresh seed, no episode carried over); the start call's ref."""
        s.seq, s.inflight, s.inflight_steps = 0, None, 0
        return s.handle.start.remote(s.epoch, actor_seed(self.seed, s.index, s.epoch))

    def _say(self, line: str) -> None:
        print(f"emote_jax: {self.name}: {line}", file=self.out or sys.stderr, flush=True)

    def _lost(self, s: _Slot, e: BaseException) -> None:
        """Actor ``s``'s process died: close its episodes, count the restart (or drop it past
        ``max_restarts``) and wait for Ray to bring it back (:meth:`_recover`)."""
        ids = list(s.running.values())
        self.memory.interrupt(ids)
        s.running.clear()
        s.inflight, s.inflight_steps = None, 0
        s.restarts += 1
        self.restarts += 1
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if s.restarts > self.max_restarts:
            self._drop(s, f"died and has used its {self.max_restarts} restarts ({len(ids)} running episodes closed "
                          f"as interrupted; {type(e).__name__}: {detail[:200]})", e)
            return
        s.epoch, s.seq = s.epoch + 1, 0
        s.lost_at = s.retry_at = time.monotonic()
        s.starting = None
        self._say(f"actor {s.index} died ({type(e).__name__}); Ray restarts it (restart {s.restarts} of "
                  f"{self.max_restarts}); {len(ids)} running episodes closed as interrupted")

    def _drop(self, s: _Slot, why: str, e: BaseException | None = None) -> None:
        s.alive, s.starting = False, None
        self._say(f"actor {s.index} {why}; dropped")
        if not any(x.alive for x in self._slots):
            raise RuntimeError(f"{self.name}: all {self.num_actors} Ray actors are gone; the last: "
                               f"actor {s.index} {why}") from e

    def _recover(self) -> None:
        """Ask each actor Ray is restarting to start its new epoch, until one call succeeds; a restart that
        takes longer than ``restart_timeout`` drops the actor."""
        now = time.monotonic()
        for s in self._slots:
            if not s.alive or s.lost_at == 0.0:
                continue
            if s.starting is not None:
                ready, _ = self._ray.wait([s.starting], timeout=0)
                if not ready:
                    continue
                try:
                    self._ray.get(ready[0])
                    s.starting, s.lost_at = None, 0.0  # back: it gets a batch to collect below
                    continue
                except Exception as e:  # noqa: BLE001  (still restarting, or gone for good)
                    if getattr(e, "actor_init_failed", False):
                        raise RuntimeError(f"{self.name}: ray actor {s.index} could not be recreated: {e}") from e
                    s.starting, s.retry_at = None, now + 0.5
            if now - s.lost_at > self.restart_timeout:
                self._drop(s, f"was not back {self.restart_timeout:.0f} s after it died")
            elif s.starting is None and now >= s.retry_at:
                s.starting = self._start_actor(s)
