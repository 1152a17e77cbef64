"""int8-quantized models: float rows in, float scores out, through the tensors' quantization params."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from edgeloop.edge.inference import TfliteModel

# A 4-8-2 dense model, full-integer quantized (int8 input and output tensors), made with
# TensorFlow 2.21 from a Keras model whose float outputs for ROWS are EXPECTED.
TINY_INT8 = base64.b64decode(
    "HAAAAFRGTDMUACAAHAAYABQAEAAMAAAACAAEABQAAAAcAAAAHAAAAHQAAAB8AQAAjAEAAGAFAAADAAAAAAAAAAIAAAA0AAAABAAA"
    "ANz///8HAAAABAAAABMAAABDT05WRVJTSU9OX01FVEFEQVRBAAgADAAIAAQACAAAAAYAAAAEAAAAEwAAAG1pbl9ydW50aW1lX3Zl"
    "cnNpb24ACAAAAAQBAAD8AAAA3AAAAKQAAACcAAAAlAAAAHQAAAAEAAAAQv///wQAAABgAAAADAAAAAgADgAIAAQACAAAABAAAAAo"
    "AAAAAAAGAAgABAAGAAAABAAAAAEAAADrAwAADAAYABQAEAAMAAQADAAAAO/Do3feTVcsAwAAAAIAAAAEAAAABgAAADIuMjEuMAAA"
    "rv///wQAAAAQAAAAMS4xNC4wAAAAAAAAAAAAACD///8k////0v///wQAAAAgAAAA/38DL4GT52FVf5Hble78gWzD7n+sQ+1/RH/u"
    "IX8AWjsAAAYACAAEAAYAAAAEAAAAEAAAADXixHlSmoFPwUGe7zGBD054////fP///w8AAABNTElSIENvbnZlcnRlZC4AAQAAABQA"
    "AAAAAA4AGAAUABAADAAIAAQADgAAABQAAAAcAAAAtAAAALgAAAC8AAAABAAAAG1haW4AAAAAAgAAAFwAAAAUAAAAAAAOABQAAAAQ"
    "AAwACwAEAA4AAAAUAAAAAAAACBAAAAAUAAAABAAEAAQAAAABAAAABAAAAAMAAAADAAAAAQAAAP////8AAA4AFgAAABAADAALAAQA"
    "DgAAABgAAAAAAAAIGAAAABwAAAAAAAYACAAHAAYAAAAAAAABAQAAAAMAAAADAAAAAAAAAAIAAAD/////AQAAAAQAAAABAAAAAAAA"
    "AAUAAACAAgAA6AEAAAwBAABwAAAABAAAAKr9//8AAAABGAAAACAAAAA8AAAABQAAAAAAAAlAAAAAAgAAAP////8CAAAAlP3//wgA"
    "AAAQAAAAAQAAAAoAAAAAAAAAAQAAALzYRTwIAAAASWRlbnRpdHkAAAAAAgAAAAEAAAACAAAAEv7//wAAAAEYAAAAIAAAAEAAAAAE"
    "AAAAAAAACXAAAAACAAAA/////wgAAAD8/f//CAAAABQAAAABAAAAgP////////8AAAAAAQAAALOZGTw1AAAAZnVuY3Rpb25hbF8x"
    "L2RlbnNlXzEvTWF0TXVsO2Z1bmN0aW9uYWxfMS9kZW5zZV8xL1JlbHUAAAACAAAAAQAAAAgAAAA+////AAAAARQAAACIAAAAAwAA"
    "AAAAAAmcAAAAhP7//wgAAABMAAAACAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAACAAAAJ+8RTsWorA7KeatO5m0sTuSJq07FmQiO8M9pDtWr4Q7GwAAAGZ1bmN0aW9uYWxfMS9kZW5z"
    "ZV8xL01hdE11bAACAAAACAAAAAQAAAAAABYAHAAYABcAEAAMAAgAAAAAAAAABwAWAAAAAAAAARQAAABAAAAAAgAAAAAAAAlYAAAA"
    "XP///wgAAAAcAAAAAgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAALRGpTsEFcM7HQAAAGZ1bmN0aW9uYWxfMS9kZW5zZV8xXzIv"
    "TWF0TXVsAAAAAgAAAAIAAAAIAAAAAAAWACAAHAAbABQAEAAMAAAAAAAIAAcAFgAAAAAAAAEYAAAALAAAAEgAAAABAAAAAAAACUQA"
    "AAACAAAA/////wQAAAAMAAwAAAAAAAgABAAMAAAACAAAABAAAAABAAAAAAAAAAAAAAABAAAA1BqAPAEAAAB4AAAAAgAAAAEAAAAE"
    "AAAAAQAAABAAAAAMABAADwAAAAgABAAMAAAACQAAAAQAAAAAAAAJ"
)
ROWS = np.array([[0.5, -1.0, 1.5, 0.0], [1.0, 1.0, -1.0, -2.0], [-0.3, 0.2, 0.1, 1.9]], np.float32)
EXPECTED = np.array([[0.5028021, 0.5270925], [-0.6431442, -1.2669425], [-0.0713989, 0.2514406]], np.float32)


@pytest.fixture
def int8_model(tmp_path: Path) -> TfliteModel:
    tflite = tmp_path / "tiny_int8.tflite"
    tflite.write_bytes(TINY_INT8)
    meta = {
        "name": "tiny_int8",
        "version": "0.1.0",
        "sha256": hashlib.sha256(TINY_INT8).hexdigest(),
        "task": "regression",
        "input": {"shape": [None, 4], "dtype": "int8"},
        "outputs": [{"name": "out", "shape": [None, 2]}],
        "threshold": 0.0,
        "labels": ["value"],
    }
    tflite.with_suffix(".json").write_text(json.dumps(meta))
    return TfliteModel(tflite)


def test_int8_model_takes_and_returns_floats(int8_model: TfliteModel):
    out = int8_model.run(ROWS)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    # a few quantization steps (input 0.0156, output 0.0121) of error at most
    np.testing.assert_allclose(out, EXPECTED, atol=0.08)


def test_int8_batches_match_single_rows(int8_model: TfliteModel):
    rows = np.random.default_rng(5).uniform(-2, 2, size=(37, 4)).astype(np.float32)
    together = int8_model.run(rows)
    singles = np.concatenate([int8_model.run(rows[i : i + 1]) for i in range(len(rows))])
    np.testing.assert_array_equal(together, singles)


def test_int8_inputs_saturate_instead_of_wrapping(int8_model: TfliteModel):
    huge = np.full((1, 4), 1e6, np.float32)
    assert np.isfinite(int8_model.run(huge)).all()
    assert int8_model.run(huge).tolist() == int8_model.run(np.full((1, 4), 100.0, np.float32)).tolist()
