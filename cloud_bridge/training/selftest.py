"""Self-test vectors for a deployment: inputs and the outputs this exact artifact gives for them.

Why through the edge's own interpreter path (``edgeloop.edge.inference``): the edge
runs the same rows through the same code after loading the artifact, so a
mismatch means the device's interpreter, or the bytes, do not behave like the
model that was evaluated -- not that the two sides compute differently. Lives
under ``training`` because, like the trainer, it needs an interpreter on the
cloud side (LiteRT, tflite-runtime or TensorFlow).
"""

from __future__ import annotations

import numpy as np

from edgeloop.deploy_contract import SelfTest
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ModelMetadata

DEFAULT_ROWS = 8


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
