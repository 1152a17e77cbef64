"""``make model``'s recipe (lab/models.py, lab/vision_model.py), at toy size: it trains, converts and
writes models that ``edgeloop model info`` accepts (TensorFlow: the train extra, as test_retrain)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lab.models import build_model
from lab.procs import run_cli
from lab.vision_model import build_vision_models

from edgeloop.modelfile import load_model_files


def info(path: Path) -> subprocess.CompletedProcess:
    return run_cli("model", "info", str(path))


def test_the_vibration_recipe_writes_a_model_the_edge_accepts(tmp_path):
    path, evaluation = build_model(tmp_path, 7, duration_s=3.0, train_devices=4, eval_devices=4, epochs=1,
                                   version="1.1.0")  # a second version for a registry that holds 1.0.0
    _, meta = load_model_files(path)
    assert meta.name == "vibration_ae" and meta.created_by == "python -m lab.models" and meta.version == "1.1.0"
    assert meta.training.data["source"] == "edgeloop.devices.simulator.FleetSimulator"
    assert 0.0 <= evaluation["false_positive_rate_test"] <= 1.0
    run = info(path)
    assert run.returncode == 0 and "ok, matches the metadata" in run.stdout, run.stderr


def test_the_vision_recipe_writes_float_and_int8_models_the_edge_accepts(tmp_path):
    paths, figures = build_vision_models(tmp_path, 7, train_frames=300, eval_frames=24, epochs=1, version="1.1.0")
    assert [p.name for p in paths] == ["parts_cnn.tflite", "parts_cnn_int8.tflite"]
    assert 0.0 <= figures["int8_float_agreement"] <= 1.0
    for path in paths:
        meta = load_model_files(path)[1]
        assert meta.created_by == "python -m lab.models --vision" and meta.version == "1.1.0"
        run = info(path)
        assert run.returncode == 0 and "ok, matches the metadata" in run.stdout, run.stderr


def test_the_climate_recipe_writes_a_model_the_edge_accepts(tmp_path):
    from lab.climate_model import build_climate_model

    path, evaluation = build_climate_model(tmp_path, 7, readings=200, train_devices=4, eval_devices=4, epochs=1,
                                           version="1.1.0")
    _, meta = load_model_files(path)
    assert meta.name == "climate_ae" and meta.created_by == "python -m lab.models --climate"
    assert meta.training.data["source"] == "edgeloop.devices.climate.ClimateSimulator"
    assert 0.0 <= evaluation["false_positive_rate_test"] <= 1.0
    run = info(path)
    assert run.returncode == 0 and "ok, matches the metadata" in run.stdout, run.stderr
