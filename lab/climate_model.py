"""The recipe for the bundled climate model (``climate_ae``): simulated room sensors -> edge pipeline -> autoencoder.

    python -m lab.models --climate [--out DIR] [--seed 7]      (make model)

Readings arrive one message at a time (temperature, humidity, pressure every
30 s, ``edgeloop.devices.climate``), so the pipeline's window stage collects 16
consecutive messages of one device (8 minutes) and emits a window every 4
(every 2 minutes); features are per channel mean, std and kurtosis plus two
FFT bands; the model is the same dense autoencoder family as ``vibration_ae``
(``edgeloop.bridge.training.autoencoder``), its score the reconstruction error.

Splits are different fleets (seeds): train seed (96 rooms x 1 day, no faults),
validation seed+1 (32 rooms, threshold at the 99.5th percentile), test seed+2
(32 rooms, false-positive rate), faults seed+3 (32 rooms, stuck and spiking
sensors: recall on windows at least half inside a fault).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.bridge.training import autoencoder as ae
from edgeloop.devices.climate import ClimateSimulator
from edgeloop.edge.config import DEFAULT_CLIMATE_STAGES
from edgeloop.edge.stages import build_pipeline
from edgeloop.modelfile import Normalization, TrainingInfo, write_model_files

log = logging.getLogger("lab.climate_model")

MODEL_NAME = "climate_ae"


def climate_windows(
    sim: ClimateSimulator, readings: int, stages: list[dict[str, Any]] = DEFAULT_CLIMATE_STAGES
) -> tuple[list[np.ndarray], np.ndarray]:
    """Windows as the edge cuts them from one message per reading, and the share of each inside a fault."""
    pipeline = build_pipeline([s for s in stages if s["type"] != "normalize"], in_channels=3)
    windows: list[np.ndarray] = []
    fault_share: list[float] = []
    for device in range(sim.n_devices):
        block = sim.block(device, 0, readings)
        values = block.values.astype(np.float32)
        key = (sim.names[device], "climate")
        for k in range(readings):
            for w in pipeline.push(key, values[k : k + 1], sim.start_ts + float(block.t[k]), None, k):
                windows.append(w.data)
                size = w.data.shape[0]
                fault_share.append(float(block.fault[k + 1 - size : k + 1].mean()))
    return windows, np.array(fault_share)


def build_climate_model(
    out_dir: str | Path,
    seed: int = 7,
    *,
    readings: int = 2880,
    train_devices: int = 96,
    eval_devices: int = 32,
    epochs: int = 60,
    batch_size: int = 256,
    version: str = ae.MODEL_VERSION,
) -> tuple[Path, dict[str, float]]:
    """Train, convert, evaluate and write ``climate_ae.tflite`` + ``.json`` into ``out_dir``."""
    tf = ae.configure_tensorflow()
    stages = DEFAULT_CLIMATE_STAGES
    started = time.perf_counter()

    def fleet(offset: int, devices: int, rate: float = 0.0) -> ClimateSimulator:
        return ClimateSimulator(devices, seed=seed + offset, anomaly_rate=rate)

    train_w, _ = climate_windows(fleet(0, train_devices), readings)
    val_w, _ = climate_windows(fleet(1, eval_devices), readings)
    test_w, _ = climate_windows(fleet(2, eval_devices), readings)
    fault_w, share = climate_windows(fleet(3, eval_devices, 0.005), readings)

    fitted = ae.FittedAutoencoder(train_w, stages, seed, epochs=epochs, batch_size=batch_size)
    scores, stats, n_features, content = fitted.scores, fitted.stats, fitted.n_features, fitted.content

    s_val, s_test, s_fault = scores(val_w), scores(test_w), scores(fault_w)
    threshold = float(np.quantile(s_val, ae.THRESHOLD_QUANTILE))
    inside, clean = share >= 0.5, share == 0.0
    evaluation = {
        "threshold_quantile": ae.THRESHOLD_QUANTILE,
        "false_positive_rate_test": float(np.mean(s_test > threshold)),
        "false_positive_rate_faultfleet_normal": float(np.mean(s_fault[clean] > threshold)),
        "recall_fault_windows_half_inside": float(np.mean(s_fault[inside] > threshold)) if inside.any() else 0.0,
        "fault_windows_half_inside": float(inside.sum()),
        "normal_score_median": float(np.median(s_test)),
        "fault_score_median": float(np.median(s_fault[inside])) if inside.any() else 0.0,
    }
    elapsed = time.perf_counter() - started
    window = next(s for s in stages if s["type"] == "window")
    training = TrainingInfo(
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        samples=len(train_w),
        window={"size": window["size"], "hop": window["hop"], "rate_hz": None, "channels": 3,
                "interval_s": 30.0},
        seed=seed,
        pipeline=stages,
        threshold_method=(
            f"{ae.THRESHOLD_QUANTILE * 100:g}th percentile of scores on held-out rooms "
            f"(validation fleet, seed {seed + 1}, {len(val_w)} windows)"
        ),
        evaluation=evaluation,
        duration_s=round(elapsed, 2),
        framework=f"tensorflow {tf.__version__}",
        data={
            "source": "edgeloop.devices.climate.ClimateSimulator",
            "channels": ["temperature", "humidity", "pressure"],
            "train": {"seed": seed, "devices": train_devices, "readings": readings, "anomaly_rate": 0.0},
            "validation": {"seed": seed + 1, "devices": eval_devices},
            "test": {"seed": seed + 2, "devices": eval_devices},
            "faults": {"seed": seed + 3, "devices": eval_devices, "anomaly_rate": 0.005,
                       "modes": ["stuck", "spike"]},
            "architecture": (
                f"dense {n_features}-{'-'.join(map(str, ae.HIDDEN))}-{n_features}, {ae.ACTIVATION}; "
                "score = mean squared reconstruction error"
            ),
            "epochs": epochs,
            "fit_s": round(fitted.fit_s, 2),
        },
    )
    reference = ae.reference_stats(ae.raw_features(val_w, stages), s_val)
    meta = ae.make_metadata(content, n_features, threshold, Normalization(**stats), reference, training,
                            name=MODEL_NAME, version=version, created_by="python -m lab.models --climate")
    path = write_model_files(out_dir, content, meta)
    log.info("wrote %s (%d bytes) in %.1fs: %s", path, len(content), elapsed, evaluation)
    return path, evaluation
