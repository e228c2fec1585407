"""Test-session set-up: one JAX persistent compilation cache for the whole session.

Most tests build the same small SAC or DQN step (HitTheMiddle, 8x8 networks), each time from new ``jax.jit``
objects, so each would compile it again; subprocess tests (resume, the CLI) compile it again in each new
interpreter. A persistent cache keyed by the compiled program's fingerprint turns the repeats into
disk reads (~12 s -> ~2 s per repeat on one CPU core). It lives in a temporary directory made for this
session and removed after it, and reaches subprocesses through the environment; a cache the user
configured (``JAX_COMPILATION_CACHE_DIR`` already set) is used as it is. The cache changes no numbers:
a hit loads the executable the same program compiled to.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_OWN_CACHE: str | None = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="emote-jax-test-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # cache every program, however small or quick to compile: the repeats add up
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment above, which jax reads when it is imported)

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ.get("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")))


def pytest_unconfigure(config) -> None:
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
