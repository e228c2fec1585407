"""``python -m emote_jax``: the same as the ``emote-jax`` command."""

import sys

from emote_jax.cli import main

sys.exit(main())
