"""TfliteModel over the bundled model: spec checks, batching, scores on simulated data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeloop.errors import ModelError
from edgeloop.edge.inference import TfliteModel, load_interpreter_class

BUNDLED = Path(__file__).resolve().parents[2] / "runtime" / "models" / "vibration_ae.tflite"


@pytest.fixture(scope="module")
def model() -> TfliteModel:
    return TfliteModel(BUNDLED, max_batch=256)


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 30)).astype(np.float32)


def test_an_interpreter_is_found():
    cls, name = load_interpreter_class()
    assert name in {"ai-edge-litert", "tflite-runtime", "tensorflow"} and callable(cls)


def test_model_exposes_its_metadata(model: TfliteModel):
    assert (model.name, model.version, model.input_shape, model.n_outputs) == (
        "vibration_ae",
        "1.0.0",
        (30,),
        1,
    )
    assert len(model.sha256) == 64 and model.threshold > 0 and model.score_output == 0
    assert model.labels == ["normal", "anomaly"]
    assert set(model.normalization) == {"mean", "std"} and len(model.normalization["mean"]) == 30


@pytest.mark.parametrize("batch", [1, 3, 17, 300])
def test_a_batch_scores_like_single_rows(model: TfliteModel, batch: int):
    rows = _rows(batch, seed=batch)
    together = model.run(rows)
    assert together.shape == (batch, 1) and together.dtype == np.float32
    one_by_one = np.concatenate([model.run(rows[i : i + 1]) for i in range(batch)])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-5)


def test_scores_are_deterministic_finite_and_non_negative(model: TfliteModel):
    rows = _rows(64, seed=1)
    first, second = model.run(rows), model.run(rows)
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all() and (first >= 0).all()
    # the score is a mean squared error: it grows as the input moves away from normal data
    assert (
        model.run(np.zeros((1, 30), np.float32))[0, 0] < model.run(np.full((1, 30), 50.0, np.float32))[0, 0]
    )


def test_empty_and_misshapen_batches(model: TfliteModel):
    assert model.run(np.zeros((0, 30), np.float32)).shape == (0, 1)
    with pytest.raises(ValueError, match=r"rows of shape \(31,\)"):
        model.run(np.zeros((2, 31), np.float32))


def test_pipeline_shape_check(model: TfliteModel):
    model.check_pipeline_shape((30,))
    with pytest.raises(
        ModelError, match=r"^pipeline produces \(32,\) but model vibration_ae 1\.0\.0 expects \(30,\)$"
    ):
        model.check_pipeline_shape((32,))


def test_metadata_that_disagrees_with_the_tensor_is_refused(tmp_path: Path):
    tflite = tmp_path / BUNDLED.name
    shutil.copy(BUNDLED, tflite)
    meta = json.loads(BUNDLED.with_suffix(".json").read_text())
    meta["input"]["shape"] = [None, 32]
    meta.pop("normalization")
    tflite.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(
        ModelError, match=r"input tensor is \(30,\) float32 but its metadata says \(32,\) float32"
    ):
        TfliteModel(tflite)


def test_tampered_model_is_refused_before_the_interpreter_sees_it(tmp_path: Path):
    tflite = tmp_path / BUNDLED.name
    tflite.write_bytes(BUNDLED.read_bytes()[:-8] + b"\0" * 8)
    shutil.copy(BUNDLED.with_suffix(".json"), tflite.with_suffix(".json"))
    with pytest.raises(ModelError, match="sha256"):
        TfliteModel(tflite)


def test_bundled_model_separates_faults_from_healthy_machines(model: TfliteModel):
    """Simulator -> edge pipeline -> model, on a fleet the model was not trained on."""
    from lab.models import simulate_windows

    from edgeloop.bridge.training.autoencoder import DEFAULT_VIBRATION_PIPELINE, model_features
    from edgeloop.devices.simulator import FleetSimulator

    windows, faulty = simulate_windows(
        FleetSimulator(12, seed=4242, anomaly_rate=0.01), 12.0, DEFAULT_VIBRATION_PIPELINE
    )
    scores = model.run(model_features(windows, DEFAULT_VIBRATION_PIPELINE, model.normalization))[:, 0]
    flagged = scores > model.threshold
    assert faulty.sum() > 20
    assert flagged[faulty].mean() > 0.9
    assert flagged[~faulty].mean() < 0.05
