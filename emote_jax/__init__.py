"""emote_jax: Emote's modular reinforcement learning, made functional in JAX."""

from emote_jax.callback import Callback, CallbackError, HostCallback, TrainingShutdownException
from emote_jax.context import Context
from emote_jax.faults import NonFiniteError, TrainingAborted
from emote_jax.loss import LossCallback
from emote_jax.trainer import StateMismatchError, Trainer

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "CallbackError",
    "Context",
    "HostCallback",
    "LossCallback",
    "NonFiniteError",
    "StateMismatchError",
    "Trainer",
    "TrainingAborted",
    "TrainingShutdownException",
    "__version__",
]
