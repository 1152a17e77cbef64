"""The recipe for the bundled models, trained on simulated machines and scenes (``make model``).

    python -m lab.models [--out DIR] [--seed 7]      the vibration autoencoder (vibration_ae)
    python -m lab.models --vision                    the camera classifier (parts_cnn, parts_cnn_int8)
    python -m lab.models --climate                   the room climate autoencoder (climate_ae, lab/climate_model.py)
    python -m lab.models --out DIR --version 1.1.0   a new version to add to a registry (default 1.0.0, the
                                                     bundled one: a rebuild under the same version has other
                                                     bytes, which a registry holding 1.0.0 refuses)

Why here and not in the product: it needs the device simulators
(``edgeloop.devices``), which the bridge must not import; the bridge keeps the
model family and its training and conversion code
(``edgeloop.bridge.training.autoencoder``), which its closed-loop retrain uses
on field samples.

Vibration data (all from ``edgeloop.devices.simulator``, pre-drift regime, no
MQTT). Each split is a different fleet (its own seed), so the figures are for
machines the model has never seen -- as on a real edge, where the fleet is not
the one the model was trained on:
  train       seed      128 devices x 15 s, no faults
  validation  seed+1     48 devices x 15 s, no faults   -> threshold, reference statistics
  test        seed+2     48 devices x 15 s, no faults   -> false-positive rate
  faults      seed+3     48 devices x 15 s, anomaly_rate 0.02 -> recall on windows overlapping a fault
  drift       seed+4     48 devices x 15 s, drifted from t=0   -> how far scores move under drift
Many machines for a short time beat few machines for long: windows of one
machine are alike, and the edge meets machines it has never seen.

Threshold: the 99.5th percentile of validation scores (target false-positive
rate 0.5% per window on healthy machines). Needs the ``train`` extra
(TensorFlow); the camera classifier's recipe is ``lab/vision_model.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.bridge.training import autoencoder as ae
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.stages import build_pipeline
from edgeloop.modelfile import Normalization, TrainingInfo, write_model_files

log = logging.getLogger("lab.models")

MODELS_DIR = Path(__file__).resolve().parents[1] / "runtime" / "models"


def simulate_windows(
    sim: FleetSimulator, duration_s: float, pipeline_stages: list[dict[str, Any]]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Windows of every device's vibration as the edge would cut them, with fault ground truth.

    Each device's signal is pushed one published chunk (rounded like the
    payload) at a time. Returns (window arrays, overlaps_fault per window).
    """
    pipeline = build_pipeline([s for s in pipeline_stages if s["type"] != "normalize"], in_channels=3)
    chunk = sim.chunk_size
    n_chunks = int(duration_s / sim.chunk_s)
    windows: list[np.ndarray] = []
    faulty: list[bool] = []
    for device in sim.devices:
        block = sim.vibration_samples(device.index, 0, n_chunks * chunk)
        samples = np.round(block.samples.astype(np.float64), sim.decimals).astype(np.float32)
        fault = block.fault
        key = (device.device, "vibration")
        for k in range(n_chunks):
            lo = k * chunk
            ts = sim.start_ts + float(block.t[lo])
            for w in pipeline.push(key, samples[lo : lo + chunk], ts, sim.rate_hz, k):
                windows.append(w.data)
                last = lo + chunk  # windows end at the end of the completing chunk
                faulty.append(bool(fault[max(0, last - w.data.shape[0]) : last].any()))
    return windows, np.array(faulty, dtype=bool)




def build_model(
    out_dir: str | Path = MODELS_DIR,
    seed: int = 7,
    *,
    duration_s: float = 15.0,
    train_devices: int = 128,
    eval_devices: int = 48,
    epochs: int = 80,
    batch_size: int = 256,
    threshold_quantile: float = ae.THRESHOLD_QUANTILE,
    pipeline_stages: list[dict[str, Any]] | None = None,
    version: str = ae.MODEL_VERSION,
) -> tuple[Path, dict[str, float]]:
    """Train, convert, evaluate and write ``vibration_ae.tflite`` + ``.json`` into ``out_dir``.

    Returns the .tflite path and the evaluation figures (also stored in the
    metadata under ``training.evaluation``). Deterministic for a seed as far
    as TensorFlow allows (single-threaded, op determinism on).
    """
    tf = ae.configure_tensorflow()

    stages = pipeline_stages or ae.DEFAULT_VIBRATION_PIPELINE
    started = time.perf_counter()

    def fleet(offset: int, devices: int, **kw: Any) -> FleetSimulator:
        return FleetSimulator(devices, seed=seed + offset, **kw)

    train_w, _ = simulate_windows(fleet(0, train_devices), duration_s, stages)
    val_w, _ = simulate_windows(fleet(1, eval_devices), duration_s, stages)
    test_w, _ = simulate_windows(fleet(2, eval_devices), duration_s, stages)
    fault_w, fault_mask = simulate_windows(fleet(3, eval_devices, anomaly_rate=0.02), duration_s, stages)
    drift_w, _ = simulate_windows(fleet(4, eval_devices, drift_at_s=0.0), duration_s, stages)
    data_s = time.perf_counter() - started

    fitted = ae.FittedAutoencoder(train_w, stages, seed, epochs=epochs, batch_size=batch_size)
    scores, stats, n_features, content = fitted.scores, fitted.stats, fitted.n_features, fitted.content

    s_train, s_val, s_test = scores(train_w), scores(val_w), scores(test_w)
    s_fault, s_drift = scores(fault_w), scores(drift_w)
    keras_val = np.asarray(fitted.scorer.predict(ae.model_features(val_w, stages, stats), verbose=0))[:, 0]
    threshold = float(np.quantile(s_val, threshold_quantile))
    elapsed = time.perf_counter() - started

    evaluation = {
        "threshold_quantile": threshold_quantile,
        "false_positive_rate_test": float(np.mean(s_test > threshold)),
        "false_positive_rate_faultfleet_normal": float(np.mean(s_fault[~fault_mask] > threshold)),
        "recall_fault_windows": float(np.mean(s_fault[fault_mask] > threshold)),
        "fault_windows": float(fault_mask.sum()),
        "drift_flagged_rate": float(np.mean(s_drift > threshold)),
        "drift_score_median": float(np.median(s_drift)),
        "drift_score_p25": float(np.quantile(s_drift, 0.25)),
        "drift_score_p75": float(np.quantile(s_drift, 0.75)),
        "normal_score_p75": float(np.quantile(s_test, 0.75)),
        "normal_score_median": float(np.median(s_test)),
        "train_score_median": float(np.median(s_train)),
        "fault_score_median": float(np.median(s_fault[fault_mask])) if fault_mask.any() else 0.0,
        "keras_tflite_max_abs_diff": float(np.max(np.abs(keras_val - s_val))),
    }
    reference = ae.reference_stats(ae.raw_features(val_w, stages), s_val)
    window = next(s for s in stages if s["type"] == "window")
    training = TrainingInfo(
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        samples=len(train_w),
        window={"size": window["size"], "hop": window["hop"], "rate_hz": 1000.0, "channels": 3},
        seed=seed,
        pipeline=stages,
        threshold_method=(
            f"{threshold_quantile * 100:g}th percentile of scores on held-out healthy machines "
            f"(validation fleet, seed {seed + 1}, {len(val_w)} windows)"
        ),
        evaluation=evaluation,
        duration_s=round(elapsed, 2),
        framework=f"tensorflow {tf.__version__}",
        data={
            "source": "edgeloop.devices.simulator.FleetSimulator",
            "train": {"seed": seed, "devices": train_devices, "duration_s": duration_s, "anomaly_rate": 0.0},
            "validation": {"seed": seed + 1, "devices": eval_devices},
            "test": {"seed": seed + 2, "devices": eval_devices},
            "faults": {"seed": seed + 3, "devices": eval_devices, "anomaly_rate": 0.02},
            "drift": {"seed": seed + 4, "devices": eval_devices, "drift_at_s": 0.0},
            "architecture": (
                f"dense {n_features}-{'-'.join(map(str, ae.HIDDEN))}-{n_features}, {ae.ACTIVATION}; "
                "score = mean squared reconstruction error"
            ),
            "epochs": epochs,
            "fit_s": round(fitted.fit_s, 2),
            "data_s": round(data_s, 2),
        },
    )
    meta = ae.make_metadata(content, n_features, threshold, Normalization(**stats), reference, training,
                            version=version)
    path = write_model_files(out_dir, content, meta)
    log.info("wrote %s (%d bytes, sha256 %s) in %.1fs", path, len(content), meta.sha256[:12], elapsed)
    return path, evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(MODELS_DIR), help="directory for the .tflite/.json files")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, help="training epochs (default: 80 vibration, 14 vision)")
    parser.add_argument("--vision", action="store_true", help="build the camera classifier (parts_cnn float + int8)")
    parser.add_argument("--climate", action="store_true",
                        help="build the climate autoencoder (climate_ae: temperature, humidity, pressure)")
    parser.add_argument("--version", default="1.0.0",
                        help="the version written into the metadata (default 1.0.0, the bundled models')")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.vision:
        from lab.vision_model import build_vision_models

        paths, figures = build_vision_models(args.out, args.seed, version=args.version,
                                             **({"epochs": args.epochs} if args.epochs else {}))
    elif args.climate:
        from lab.climate_model import build_climate_model

        path, figures = build_climate_model(args.out, args.seed, version=args.version,
                                            **({"epochs": args.epochs} if args.epochs else {}))
        paths = [path]
    else:
        path, figures = build_model(args.out, args.seed, version=args.version,
                                    **({"epochs": args.epochs} if args.epochs else {}))
        paths = [path]
    print(json.dumps({"models": [str(p) for p in paths], "evaluation": figures}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
