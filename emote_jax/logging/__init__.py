"""What users see of a run: loggers (TensorBoard, CSV, terminal, W&B), metric sources, the progress bar,
the learning curve, and a reader for TensorBoard event files.

See :mod:`emote_jax.logging.loggers` for how metrics travel from the device to the writers.
"""

from emote_jax.logging.events import Histogram, read_histograms, read_images, read_scalars
from emote_jax.logging.loggers import (
    CSVLogger,
    MetricsLogger,
    TensorboardLogger,
    TerminalLogger,
    WBLogger,
    Window,
    default_logger,
)
from emote_jax.logging.plots import plot_learning_curve, write_learning_curve
from emote_jax.logging.progress import Progress, format_duration, is_terminal
from emote_jax.logging.sources import (
    Episode,
    EpisodeMetrics,
    MetricSource,
    SystemMetrics,
    ThroughputMetrics,
    read_episodes_csv,
    write_episodes_csv,
)
from emote_jax.logging.writers import CSVWriter, MetricWriter, TensorboardWriter, TerminalWriter, WandbWriter

__all__ = [
    "CSVLogger",
    "CSVWriter",
    "Episode",
    "EpisodeMetrics",
    "Histogram",
    "MetricSource",
    "MetricWriter",
    "MetricsLogger",
    "Progress",
    "SystemMetrics",
    "TensorboardLogger",
    "TensorboardWriter",
    "TerminalLogger",
    "TerminalWriter",
    "ThroughputMetrics",
    "WBLogger",
    "WandbWriter",
    "Window",
    "default_logger",
    "format_duration",
    "is_terminal",
    "plot_learning_curve",
    "read_episodes_csv",
    "read_histograms",
    "read_images",
    "read_scalars",
    "write_episodes_csv",
    "write_learning_curve",
]
