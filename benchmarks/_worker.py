"""The JSON-lines worker protocol shared by ``ours_side.py`` and ``reference_side.py``.

A side is a long-lived subprocess. The driver (``run.py``) writes one JSON command per line to its
stdin, ``{"cmd": name, **kwargs}``, and reads exactly one JSON line back on the *protocol* stream
(the original stdout): ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "...", "traceback": "..."}``.
Everything else a library prints to stdout is redirected to stderr, so it cannot corrupt the protocol.
This file imports nothing but the standard library: both virtual environments run it.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any


def rss_mb() -> float:
    """The current resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """The peak resident set size of this process so far in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(commands: dict[str, Callable[..., Any]]) -> None:
    """Answer commands from stdin until EOF or ``{"cmd": "exit"}``."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries go to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "exit":
            break
        try:
            if cmd not in commands:
                raise KeyError(f"unknown command {cmd!r}; have {sorted(commands)}")
            reply = {"ok": True, "result": commands[cmd](**msg)}
        except Exception as e:  # noqa: BLE001 - reported to the driver
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
