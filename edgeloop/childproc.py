"""Run untrusted work (loading a model someone sent) in a child process with a time limit.

Why a process and not a thread: an interpreter that segfaults on a crafted
``.tflite`` takes its whole process down, and one that loops forever cannot be
stopped from another thread. A child (``python -m MODULE``, the same
interpreter and packages as the caller) can crash or be killed while the
caller keeps serving. The edge tries every deployed artifact this way before it
loads it itself (``edgeloop.edge.model_trial``); the cloud side does the same
before it signs one (``edgeloop.bridge.training.selftest``).

Protocol: the request goes to the child's stdin, the answer comes back on its
stdout; stderr is kept (its tail) for the error message. The child gets its
own session, so a kill reaches anything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

MAX_ANSWER_BYTES = 16 * 1024 * 1024
STDERR_TAIL = 600


class ChildFailed(Exception):
    """The child did not answer: ``reason`` is ``crashed`` (killed by a signal), ``timeout`` or ``failed``
    (exited non-zero); ``detail`` says how, printable (no control characters from the child's output)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def printable(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, every control character escaped: safe in one log line."""
    text = text[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_module(module: str, request: bytes, timeout_s: float, env: dict[str, str] | None = None) -> bytes:
    """Run ``python -m module`` with ``request`` on stdin; its stdout if it exits 0, else ChildFailed.

    The time limit covers the child's start (importing numpy and the
    interpreter takes a few hundred milliseconds here, seconds on a Pi).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, env={**os.environ, **(env or {})},
    )
    try:
        out, err = proc.communicate(request, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ChildFailed("timeout", f"no answer within {timeout_s:g}s (child killed)") from None
    except BaseException:
        _kill(proc)
        raise
    lines = [line for line in err.decode("utf-8", "replace").splitlines()
             if line.strip() and not line.startswith("INFO: ")]  # TFLite's chatter on every load
    tail = printable(" | ".join(lines)[-STDERR_TAIL:], STDERR_TAIL)
    if proc.returncode < 0:
        raise ChildFailed("crashed", f"child killed by {signal_name(proc.returncode)}" + (f": {tail}" if tail else ""))
    if proc.returncode != 0:
        raise ChildFailed("failed", f"child exited with status {proc.returncode}" + (f": {tail}" if tail else ""))
    if len(out) > MAX_ANSWER_BYTES:
        raise ChildFailed("failed", f"child answered {len(out)} bytes (more than {MAX_ANSWER_BYTES})")
    return out


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.communicate()
