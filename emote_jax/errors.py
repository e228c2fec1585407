"""Errors about what the user asked for, kept apart from failures at run time.

``emote-jax`` maps a :class:`ConfigError` to exit status 2 ("change a setting"), anything else that
escapes a run to exit status 1. Library users catch it like the ``ValueError`` it is.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work: the message names the setting (its CLI option where it has one),
    what it expected and what it got. Raised before anything is compiled."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        #: The ``emote-jax train`` option to change (e.g. ``"--rollout-length"``), when there is one.
        self.option = option


class UnsupportedSpaceError(ConfigError, TypeError):
    """An env whose observation or action space the chosen algorithm or network cannot take
    (a ``TypeError`` too, as a wrong space type is)."""
