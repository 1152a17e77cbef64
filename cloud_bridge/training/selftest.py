"""Self-test vectors for a deployment: inputs and the outputs this exact artifact gives for them.

Why through the edge's own interpreter path (``edgeloop.edge.inference``): the edge
runs the same rows through the same code after loading the artifact, so a
mismatch means the device's interpreter, or the bytes, do not behave like the
model that was evaluated -- not that the two sides compute differently. Lives
under ``training`` because, like the trainer, it needs an interpreter on the
cloud side (LiteRT, tflite-runtime or TensorFlow).

Before the deployer signs an artifact it computes them in a child process
(:func:`tried_selftest`, ``python -m edgeloop.bridge.training.selftest``) with
a time limit: an artifact that crashes or hangs the interpreter fails there,
not in the bridge, and is never signed. The child loads it several times and
allocates every batch size, as the edge's own trial does.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from edgeloop.childproc import ChildFailed, run_module
from edgeloop.deploy_contract import SelfTest
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ModelMetadata

DEFAULT_ROWS = 8
TRIAL_LOADS = 3
TRIAL_MAX_BATCH = 256


class TrialFailed(Exception):
    """The artifact crashed, hung or could not be loaded in the trial child; ``reason`` as the edge reports it
    (``load_failed``, ``timeout``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def make_selftest(
    content: bytes, metadata: ModelMetadata, rows: int = DEFAULT_ROWS, atol: float = 1e-3, rtol: float = 1e-3
) -> SelfTest:
    """Standard-normal rows (the scale of normalised features), seeded by the artifact's sha256.

    A quantized model may round differently under another build of the
    interpreter (a tflite-runtime wheel on a Pi), so its absolute tolerance
    grows to 2% of the outputs' magnitude: still far below what a different
    model or corrupted weights produce.
    """
    model = TfliteModel.from_bytes(content, metadata)
    rng = np.random.default_rng(int(metadata.sha256[:16], 16))
    inputs = rng.standard_normal((rows, *model.input_shape)).astype(np.float32)
    outputs = model.run(inputs)
    if metadata.input.dtype != "float32" and outputs.size:
        atol = max(atol, 0.02 * float(np.abs(outputs).max()))
    return SelfTest(
        inputs=inputs.reshape(rows, -1).astype(float).tolist(),
        expected=outputs.reshape(rows, -1).astype(float).tolist(),
        atol=atol,
        rtol=rtol,
    )


def tried_selftest(content: bytes, metadata: ModelMetadata, timeout_s: float = 60.0) -> SelfTest:
    """:func:`make_selftest` in a child process with a time limit; TrialFailed if the child crashes, hangs
    or cannot load the artifact."""
    header = json.dumps({"metadata": metadata.model_dump(mode="json")}).encode()
    try:
        answer = run_module(__name__, header + b"\n" + content, timeout_s)
    except ChildFailed as exc:
        raise TrialFailed("timeout" if exc.reason == "timeout" else "load_failed", exc.detail) from None
    verdict = json.loads(answer.decode().strip().splitlines()[-1])
    if not verdict.get("ok"):
        raise TrialFailed("load_failed", str(verdict.get("detail"))[:1000])
    return SelfTest.model_validate(verdict["selftest"])


def _main() -> int:
    from edgeloop.errors import ModelError

    header, _, content = sys.stdin.buffer.read().partition(b"\n")
    metadata = ModelMetadata.model_validate(json.loads(header)["metadata"])
    try:
        for _ in range(TRIAL_LOADS - 1):
            TfliteModel.from_bytes(content, metadata, max_batch=TRIAL_MAX_BATCH).allocate_every_batch()
        vectors = make_selftest(content, metadata)
    except (ModelError, ValueError) as exc:
        verdict = {"ok": False, "detail": str(exc)}
    else:
        verdict = {"ok": True, "selftest": vectors.model_dump(mode="json")}
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
