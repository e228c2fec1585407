"""``emote-jax``'s errors and warnings as one line each, and the exit status they give.

Every failure reaches the user as ``emote-jax: error: <message>`` on stderr (:func:`error_message`), with
the exit status :func:`exit_status` picks (:data:`EXIT_STATUSES`); warnings issued from emote_jax's own code
come as ``emote-jax: warning: <message>``. ``--debug`` or ``EMOTE_JAX_DEBUG=1`` lets exceptions through
with their traceback instead (:func:`debug_requested`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium

from emote_jax.callback import CallbackError
from emote_jax.checkpoint import CheckpointError
from emote_jax.errors import ConfigError

PROG = "emote-jax"
#: The environment variable that, set to 1, shows tracebacks as ``--debug`` does.
DEBUG_ENV = "EMOTE_JAX_DEBUG"
DEBUG_HINT = f"(run with --debug, or {DEBUG_ENV}=1, for the traceback)"
EXIT_STATUSES = f"""exit status:
  0    done (train: also after a first Ctrl+C/SIGTERM, which writes a final checkpoint)
  1    a failure at run time: no intact checkpoint to resume from, a non-finite loss, a callback
       error, an unreadable policy, ... (one line; --debug or {DEBUG_ENV}=1 shows the traceback)
  2    a bad setting or argument: an invalid option value, an env id gymnasium does not know, an env
       whose spaces SAC cannot take, a RUN_DIR that does not exist or is not a run directory, a
       --resume without checkpoints, a --resume-step with no such checkpoint
  130  aborted (a second Ctrl+C/SIGTERM, or one before training began)
"""
#: gymnasium's errors for an env id it does not know: a bad --env, so exit status 2.
_UNKNOWN_ENV_ERRORS = (gymnasium.error.UnregisteredEnv, gymnasium.error.DeprecatedEnv)
_PACKAGE_DIR = Path(__file__).resolve().parent


class UsageError(Exception):
    """A bad command line or argument (exit status 2): the message says what was expected and what came."""


def _one_line(text: str) -> str:
    """``text`` on one line: its lines stripped and joined with a space."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def print_error(message: str) -> None:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr, flush=True)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from (a callback error's ``original``, ``__cause__``),
    outermost first."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.original if isinstance(exc, CallbackError) else exc.__cause__  # type: ignore[assignment]


def exit_status(exc: BaseException) -> int:
    """2 for a bad setting (a :class:`~emote_jax.errors.ConfigError`, an env id gymnasium does not know,
    also when a callback error was raised from one), 1 for any other failure."""
    return 2 if any(isinstance(e, (ConfigError, *_UNKNOWN_ENV_ERRORS)) for e in _causes(exc)) else 1


def error_message(exc: BaseException) -> str:
    """What to print for ``exc``: the setting error's own message (it names the option); for a failure at
    run time its type and message, a callback error that came from a checkpoint unwrapped (the
    checkpoint's message names it)."""
    setting = next((e for e in _causes(exc) if isinstance(e, (ConfigError, *_UNKNOWN_ENV_ERRORS))), None)
    if setting is not None:
        return str(setting) if isinstance(setting, ConfigError) else f"--env: {setting}"
    if isinstance(exc, CallbackError) and isinstance(exc.original, CheckpointError):
        exc = exc.original
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def debug_requested(args: dict[str, Any]) -> bool:
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return bool(args.get("debug")) or env not in ("", "0", "false", "no", "off")


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show warnings issued from emote_jax's own code as one line ``emote-jax: warning: ...``."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     file: Any = None, line: str | None = None) -> None:
            if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
                print(f"{PROG}: warning: {_one_line(str(message))}", file=sys.stderr, flush=True)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = one_line
        yield


def quiet_library_noise() -> None:
    """Keep what Orbax and TensorStore print around a damaged checkpoint off the terminal, for the rest of
    the process (the exit comes after ``main`` returns): absl warnings (e.g. on a half-written step it
    lists), asyncio's "Future exception was never retrieved", and the "Event loop is closed" errors of
    reads abandoned after the first failure. The failure itself reaches the user as one line."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if getattr(sys.unraisablehook, "_emote_jax_filter", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            previous(unraisable)

    hook._emote_jax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
