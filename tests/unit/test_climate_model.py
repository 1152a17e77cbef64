"""The bundled climate model (climate_ae) through the edge's own pipeline, on rooms it was not trained on.

The recipe is lab/climate_model.py; the data edgeloop.devices.climate (stuck and spiking sensors as faults).
"""

from __future__ import annotations

import numpy as np
import pytest

from lab.climate_model import climate_windows

from edgeloop.bridge.training.autoencoder import model_features
from edgeloop.devices.climate import ClimateSimulator
from edgeloop.edge.config import CLIMATE_MODEL, DEFAULT_CLIMATE_STAGES
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.stages import build_pipeline


@pytest.fixture(scope="module")
def model() -> TfliteModel:
    return TfliteModel(CLIMATE_MODEL, max_batch=256)


def scores(model: TfliteModel, windows: list[np.ndarray]) -> np.ndarray:
    return model.run(model_features(windows, DEFAULT_CLIMATE_STAGES, model.normalization))[:, model.score_output]


def test_the_model_is_small_and_fits_the_default_climate_pipeline(model: TfliteModel):
    assert CLIMATE_MODEL.stat().st_size < 32 * 1024
    assert model.name == "climate_ae"
    pipeline = build_pipeline(DEFAULT_CLIMATE_STAGES, in_channels=3, model_stats=model.normalization)
    assert pipeline.output_shape == (15,) and model.metadata.input.shape == [None, 15]
    assert model.metadata.training.pipeline == DEFAULT_CLIMATE_STAGES


@pytest.mark.parametrize("mode", ["stuck", "spike"])
def test_faulty_sensors_are_flagged_and_healthy_rooms_pass(model: TfliteModel, mode: str):
    sim = ClimateSimulator(12, seed=4242, anomaly_rate=0.004, fault_modes=(mode,))
    windows, fault_share = climate_windows(sim, 1440)  # 12 rooms x 12 hours, one message per 30 s
    flagged = scores(model, windows) > model.threshold
    inside, healthy = fault_share == 1.0, fault_share == 0.0
    assert inside.sum() > 50
    assert flagged[inside].mean() > 0.9, f"{mode}: recall {flagged[inside].mean():.3f}"
    assert flagged[healthy].mean() < 0.02, f"{mode}: false positives {flagged[healthy].mean():.3f}"


def test_a_healthy_fleet_is_quiet(model: TfliteModel):
    windows, _ = climate_windows(ClimateSimulator(16, seed=999), 2880)  # 16 rooms x one day
    assert (scores(model, windows) > model.threshold).mean() < 0.02
