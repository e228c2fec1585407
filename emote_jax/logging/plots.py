"""The learning curve: episode return against env steps, drawn with matplotlib.

:func:`plot_learning_curve` draws on a given axes (a notebook's ``plt.subplots()``) or on a fresh
figure with the Agg canvas (no display, no pyplot state: safe in scripts, threads and CI), and saves
it when given a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emote_jax.logging.sources import read_episodes_csv, write_episodes_csv


def moving_average(values: Sequence[float], n: int) -> np.ndarray:
    """Trailing mean over up to ``n`` values (shorter at the start): same length as ``values``."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_learning_curve(
    env_steps: Sequence[float],
    returns: Sequence[float],
    path: str | Path | None = None,
    *,
    ax: Any = None,
    smooth: int = 10,
    title: str | None = None,
    label: str = "episode return",
    dpi: int = 100,
) -> Any:
    """Plot ``returns`` (one per episode) against the ``env_steps`` at which each episode ended.

    Each episode is a faint dot; the line is the mean of the last ``smooth`` episodes. Returns the
    matplotlib Figure. With ``path`` it is saved there as PNG (parents created).
    """
    x = np.asarray(env_steps, np.float64)
    y = np.asarray(returns, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"expected env_steps and returns of one equal length, got shapes {x.shape} and {y.shape}")
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    if x.size:
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        ax.plot(x, y, ".", alpha=0.3, color="C0", label=label)
        ax.plot(x, moving_average(y, smooth), "-", color="C1", lw=2, label=f"mean of last {smooth}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no episode finished", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    return fig


def write_learning_curve(run_dir: str | Path, episodes: Any, title: str | None = None) -> list[Any]:
    """Write ``run_dir/episodes.csv`` and ``run_dir/learning_curve.png`` from an
    :class:`~emote_jax.logging.sources.EpisodeMetrics` after training; returns the episodes written.

    A run resumed from a checkpoint (``episodes.start_step > 1``) keeps the episodes of the existing
    ``episodes.csv`` seen before its first step, so the curve covers the whole run.
    """
    run_dir = Path(run_dir)
    history = list(episodes.history)
    path = run_dir / "episodes.csv"
    if episodes.start_step > 1 and path.is_file():
        history = [e for e in read_episodes_csv(path) if e.bp_step < episodes.start_step] + history
    write_episodes_csv(history, path)
    plot_learning_curve([e.env_steps for e in history], [e.ret for e in history], run_dir / "learning_curve.png",
                        title=title)
    return history
