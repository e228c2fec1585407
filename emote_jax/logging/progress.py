"""Progress of a run: a one-line bar on a terminal, plain periodic lines anywhere else.

On a terminal (``out.isatty()``) the bar is redrawn in place with a carriage return at most every
``refresh_s`` seconds::

     45% |#########-----------| 6750/15000 env steps | return -123.4 | 310 upd/s 305 env/s | 0:21<0:27

Anywhere else (a pipe, a file, a notebook) it prints one line every ``interval`` env steps, with no
control characters::

    env steps     2000/15000 | bp step     1000 | return (last 10 episodes)    -1234.5 | ... | ETA 0:45

Both end with a line over the whole run (``done, overall: ...``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from typing import Any, TextIO

import numpy as np

from emote_jax.callback import HostCallback
from emote_jax.context import Context


def format_duration(seconds: float) -> str:
    """``75 -> '1:15'``, ``3725 -> '1:02:05'``; ``'?'`` when not finite."""
    if not np.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def is_terminal(out: Any) -> bool:
    """Whether ``out`` is an interactive terminal that understands a carriage return."""
    try:
        return bool(out.isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress(HostCallback):
    """Progress in env steps of a collector toward ``total_env_steps``: a bar on a terminal, lines elsewhere.

    Args:
        collector: has ``env_steps`` and ``episode_returns`` (a :class:`~emote_jax.collectors.GymCollector`).
        total_env_steps: the run's budget, for the percentage and the time left.
        interval: env steps between lines (line mode).
        out: the stream.
        tty: force the bar (True) or lines (False); None decides by ``out.isatty()``.
        refresh_s: least seconds between two redraws of the bar.

    ``rows`` holds every printed line's numbers (line mode) for programs that read them.
    """

    def __init__(self, collector: Any, total_env_steps: int, interval: int, out: TextIO = sys.stdout, *,
                 tty: bool | None = None, refresh_s: float = 0.25, name: str = "progress", order: int = 900):
        super().__init__(name=name, cycle=1, order=order)
        if total_env_steps < 1 or interval < 1:
            raise ValueError(f"{name}: expected total_env_steps >= 1 and interval >= 1, got {total_env_steps} "
                             f"and {interval}")
        self.collector, self.total, self.interval, self.out = collector, int(total_env_steps), int(interval), out
        self.tty = is_terminal(out) if tty is None else bool(tty)
        self.refresh_s = float(refresh_s)
        self.rows: list[dict[str, float]] = []

    # ---- shared ----------------------------------------------------------------------------------------
    def _return(self) -> float:
        returns = list(self.collector.episode_returns)[-10:]
        return float(np.mean(returns)) if returns else float("nan")

    def _eta(self, env_rate: float) -> float:
        left = max(self.total - self.collector.env_steps, 0)
        return left / env_rate if env_rate > 0 else float("nan")

    def begin_training(self, ctx: Context) -> None:
        self._t0 = self._t_last = time.perf_counter()
        self._bp_last, self._env_last = ctx.bp_step, self.collector.env_steps
        self._bp_first, self._env_first = self._bp_last, self._env_last
        self._next = (self.collector.env_steps // self.interval + 1) * self.interval
        self._snaps: deque[tuple[float, int, int]] = deque(maxlen=64)
        self._t_draw = 0.0
        self._drawn = 0

    def end_cycle(self, ctx: Context) -> None:
        if self.tty:
            now = time.perf_counter()
            if now - self._t_draw >= self.refresh_s:
                self._draw(ctx.bp_step, now)
        elif self.collector.env_steps >= self._next:
            self._line(ctx.bp_step)
            self._next = (self.collector.env_steps // self.interval + 1) * self.interval

    def end_training(self, ctx: Context) -> None:
        if self.tty:
            self._draw(ctx.bp_step - 1, time.perf_counter())
            print(file=self.out, flush=True)
        self._line(ctx.bp_step - 1, final=True)

    # ---- lines -----------------------------------------------------------------------------------------
    def _line(self, bp_step: int, final: bool = False) -> None:
        """A line over the last interval, or over the whole run when ``final``."""
        now = time.perf_counter()
        env_steps = self.collector.env_steps
        if final:
            self._t_last, self._bp_last, self._env_last = self._t0, self._bp_first, self._env_first
        dt = max(now - self._t_last, 1e-9)
        ret = self._return()
        row = {"env_steps": env_steps, "bp_step": bp_step, "return_last10": ret,
               "updates_per_s": (bp_step - self._bp_last) / dt, "env_steps_per_s": (env_steps - self._env_last) / dt,
               "elapsed_s": now - self._t0}
        first = self._bp_last <= self._bp_first  # the first line's interval holds the compile: no fair rate
        row["eta_s"] = 0.0 if final else float("nan") if first else self._eta(row["env_steps_per_s"])
        self.rows.append(row)
        eta = "" if final else f" | ETA {format_duration(row['eta_s'])}"
        print(
            f"{'done, overall:' if final else 'env steps'} {env_steps:>8}/{self.total} | bp step {bp_step:>8} | "
            f"return (last 10 episodes) {ret:9.1f} | {row['updates_per_s']:7.0f} updates/s | "
            f"{row['env_steps_per_s']:7.0f} env steps/s | {row['elapsed_s']:6.0f} s{eta}",
            file=self.out, flush=True,
        )
        self._t_last, self._bp_last, self._env_last = now, bp_step, env_steps

    # ---- the bar ---------------------------------------------------------------------------------------
    def _rates(self, now: float, bp_step: int, env_steps: int) -> tuple[float, float]:
        """Updates/s and env steps/s over the last ~5 s of redraws."""
        self._snaps.append((now, bp_step, env_steps))
        while len(self._snaps) > 2 and now - self._snaps[1][0] >= 5.0:
            self._snaps.popleft()
        t, bp, env = self._snaps[0]
        if now - t <= 0:
            return float("nan"), float("nan")
        return (bp_step - bp) / (now - t), (env_steps - env) / (now - t)

    def render(self, bp_step: int, now: float, width: int) -> str:
        """The bar's text at ``bp_step`` (no control characters), cut to ``width`` columns."""
        env_steps = self.collector.env_steps
        frac = min(max(env_steps / self.total, 0.0), 1.0)
        upd, env_rate = self._rates(now, bp_step, env_steps)
        ret = self._return()
        def rate(v: float) -> str:
            return f"{v:.0f}" if np.isfinite(v) else "?"

        elapsed, left = format_duration(now - self._t0), format_duration(self._eta(env_rate))
        stats = (f" {env_steps}/{self.total} env steps | return {ret:.1f} | {rate(upd)} upd/s {rate(env_rate)} env/s"
                 f" | {elapsed}<{left}")
        bar_w = max(10, min(25, width - 80))  # fixed for a given width: the bar does not jitter
        if len(stats) + bar_w + 7 > width - 1:  # a narrow terminal: the compact form
            stats = f" {env_steps}/{self.total} | ret {ret:.1f} | {rate(upd)} upd/s | {elapsed}<{left}"
        filled = int(round(frac * bar_w))
        return f"{100 * frac:3.0f}% |{'#' * filled}{'-' * (bar_w - filled)}|{stats}"[:max(width - 1, 20)]

    def _draw(self, bp_step: int, now: float) -> None:
        width = shutil.get_terminal_size((100, 24)).columns
        text = self.render(bp_step, now, width)
        pad = max(self._drawn - len(text), 0)
        self.out.write("\r" + text + " " * pad)
        self.out.flush()
        self._drawn = len(text)
        self._t_draw = now
