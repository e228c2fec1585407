"""Replay memory on the host: a NumPy ring buffer of transitions, episode bookkeeping per agent,
a loader that samples (K stacked) batches, and a warm-up callback.

Data flows collector -> :class:`MemoryProxy` -> :class:`ReplayTable` -> :class:`MemoryLoader` -> trainer.
"""

from emote_jax.memory.export import (
    MemoryExporter,
    MemoryFormatError,
    MemoryImporter,
    export_memory,
    import_memory,
)
from emote_jax.memory.loader import MemoryLoader, MemoryNotReadyError
from emote_jax.memory.proxy import CompletedEpisode, MemoryProxy
from emote_jax.memory.samplers import CoverageSampler, PrioritizedSampler, Sampler, UniformSampler, make_sampler
from emote_jax.memory.table import ReplayTable
from emote_jax.memory.types import AgentId, AgentObservation, EpisodeState
from emote_jax.memory.warmup import MemoryWarmup

__all__ = [
    "AgentId",
    "AgentObservation",
    "CompletedEpisode",
    "CoverageSampler",
    "EpisodeState",
    "MemoryExporter",
    "MemoryFormatError",
    "MemoryImporter",
    "MemoryLoader",
    "MemoryNotReadyError",
    "MemoryProxy",
    "MemoryWarmup",
    "PrioritizedSampler",
    "ReplayTable",
    "Sampler",
    "UniformSampler",
    "export_memory",
    "import_memory",
    "make_sampler",
]
