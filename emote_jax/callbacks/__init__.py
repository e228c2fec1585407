"""The reference's everyday callbacks (``emote.callbacks.generic``, ``emote.callbacks.testing``)."""

from emote_jax.callbacks.generic import BackPropStepsTerminator
from emote_jax.callbacks.testing import FinalLossTestCheck, FinalRewardTestCheck, TestCheckError

__all__ = ["BackPropStepsTerminator", "FinalLossTestCheck", "FinalRewardTestCheck", "TestCheckError"]
