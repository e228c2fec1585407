"""``python -m emote_jax``: the same as the ``emote-jax`` command."""

from emote_jax.cli import run

run()
