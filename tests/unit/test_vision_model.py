"""The bundled image classifiers: verified files, consistent metadata, float and int8 agree on new frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeloop.devices.scenes import LABELS, SceneSimulator, encode_jpeg
from edgeloop.cli import main
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import load_metadata, metadata_path, sha256_file
from edgeloop.edge.vision.config import BUNDLED_VISION_MODEL
from edgeloop.edge.vision.pipeline import build_image_pipeline

INT8 = BUNDLED_VISION_MODEL
FLOAT = BUNDLED_VISION_MODEL.with_name("parts_cnn.tflite")


@pytest.mark.parametrize("path, dtype", [(FLOAT, "float32"), (INT8, "int8")])
def test_bundled_model_files_are_verified_and_described(path, dtype):
    meta = load_metadata(metadata_path(path))
    assert sha256_file(path) == meta.sha256
    assert meta.task == "classification" and meta.labels == list(LABELS) and meta.anomaly_labels == ["defect"]
    assert meta.input.dtype == dtype and meta.image is not None
    assert meta.input.shape[1:] == [meta.image.height, meta.image.width, 3]
    assert meta.training.pipeline[0] == {"type": "decode", "reduce": "auto"} and meta.training.evaluation[f"{'int8' if dtype == 'int8' else 'float'}_accuracy"] > 0.9
    model = TfliteModel(path)
    assert model.input_dtype == np.dtype(dtype) and (model.input_quantization is None) == (dtype == "float32")


def test_model_info_command_checks_the_bundled_int8_model(capsys):
    assert main(["model", "info", "--json", str(INT8)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sha256_ok"] and info["input_spec_ok"]
    assert info["inputs"][0]["dtype"] == "int8" and info["inputs"][0]["quantization"]


def test_float_and_int8_models_agree_and_are_accurate_on_unseen_frames():
    sim = SceneSimulator(seed=1234)  # a seed the trainer never used
    float_model, int8_model = TfliteModel(FLOAT), TfliteModel(INT8)
    p_float, p_int8 = build_image_pipeline(None, float_model), build_image_pipeline(None, int8_model)
    frames = [sim.render(i) for i in range(120)]
    jpegs = [encode_jpeg(image, 85) for image, _ in frames]
    truth = np.array([LABELS.index(label) for _, label in frames])
    probs_f = float_model.run(np.stack([p_float.process(j) for j in jpegs]))
    probs_q = int8_model.run(np.stack([p_int8.process(j) for j in jpegs]))
    assert np.mean(probs_f.argmax(1) == truth) >= 0.9
    assert np.mean(probs_q.argmax(1) == truth) >= 0.9
    assert np.mean(probs_f.argmax(1) == probs_q.argmax(1)) >= 0.95
    assert np.abs(probs_f - probs_q).mean() < 0.03
