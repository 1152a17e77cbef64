"""Try a received model in a child process before the edge loads it: load, allocate, self-test, time limit.

Why: the artifact is signed, but a signature proves who sent it, not that the
interpreter survives it. A ``.tflite`` with two int32 fields rewritten
segfaults LiteRT inside ``allocate_tensors``; loaded in the edge process it
would take the edge down, and the retained manifest would do it again on every
start. In a child (``edgeloop.childproc``) a crash or a hang only refuses the
deployment (``load_failed``, ``timeout``) while the edge keeps serving.

The child does what serving will do: it loads the artifact ``TRIAL_LOADS``
times (a crash that depends on the heap layout shows up in one of them),
allocates every batch size the worker can use (1, 2, 4, ... ``max_batch``),
and runs the manifest's self-test rows. Run as ``python -m
edgeloop.edge.model_trial``: a JSON header line (the verified manifest and the
interpreter settings), then the artifact bytes, on stdin; one JSON line
``{"ok": bool, "reason", "detail"}`` on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from edgeloop.childproc import ChildFailed, run_module
from edgeloop.deploy_contract import DeployRefused, ModelManifest
from edgeloop.errors import ModelError

TRIAL_LOADS = 3


def trial(content: bytes, manifest: ModelManifest, *, num_threads: int | None, max_batch: int,
          timeout_s: float) -> None:
    """Return if the artifact loads, allocates and passes its self-test in a child; else DeployRefused
    (``load_failed`` with the signal for a crash, ``timeout``, ``selftest_failed``)."""
    header = json.dumps({"manifest": manifest.model_dump(mode="json"), "num_threads": num_threads,
                         "max_batch": max_batch}).encode()
    try:
        answer = run_module(__name__, header + b"\n" + content, timeout_s)
    except ChildFailed as exc:
        if exc.reason == "timeout":
            raise DeployRefused("timeout", f"trial load and self-test: {exc.detail}") from None
        raise DeployRefused("load_failed", f"trial load in a child process: {exc.detail}") from None
    try:
        verdict = json.loads(answer.decode().strip().splitlines()[-1])
    except (ValueError, IndexError, UnicodeDecodeError):
        raise DeployRefused("load_failed", "trial child gave no verdict") from None
    if not verdict.get("ok"):
        reason = verdict.get("reason")
        raise DeployRefused(reason if reason in ("load_failed", "selftest_failed") else "load_failed",
                            str(verdict.get("detail"))[:1000])


def run_selftest(model: Any, manifest: ModelManifest) -> str | None:
    """None if ``model`` (a TfliteModel) reproduces the manifest's self-test outputs, else what differs."""
    test = manifest.selftest
    inputs = np.asarray(test.inputs, dtype=np.float32)
    expected = np.asarray(test.expected, dtype=np.float32)
    rows = inputs.shape[0]
    if inputs.size != rows * int(np.prod(model.input_shape)):
        return f"self-test rows have {inputs.shape[1]} values, the model takes {model.input_shape}"
    try:
        actual = model.run(inputs.reshape(rows, *model.input_shape))
    except (ModelError, ValueError) as exc:
        return f"self-test inference failed: {exc}"
    if actual.shape != expected.shape:
        return f"self-test outputs have shape {actual.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(actual)):
        return "self-test outputs are not finite"
    close = np.isclose(actual, expected, atol=test.atol, rtol=test.rtol)
    if not close.all():
        worst = float(np.max(np.abs(actual - expected)))
        return f"{int((~close).sum())} of {close.size} self-test outputs outside tolerance (max |diff| {worst:.3g})"
    return None


def _check(content: bytes, manifest: ModelManifest, num_threads: int | None, max_batch: int) -> dict[str, Any]:
    from edgeloop.edge.inference import TfliteModel

    for _ in range(TRIAL_LOADS):
        try:
            model = TfliteModel.from_bytes(content, manifest.metadata, num_threads=num_threads, max_batch=max_batch)
            model.allocate_every_batch()
        except ModelError as exc:
            return {"ok": False, "reason": "load_failed", "detail": str(exc)}
        problem = run_selftest(model, manifest)
        if problem:
            return {"ok": False, "reason": "selftest_failed", "detail": problem}
    return {"ok": True}


def _main() -> int:
    header, _, content = sys.stdin.buffer.read().partition(b"\n")
    request = json.loads(header)
    manifest = ModelManifest.model_validate(request["manifest"])
    verdict = _check(content, manifest, request.get("num_threads"), int(request.get("max_batch") or 1))
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
