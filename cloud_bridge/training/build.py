"""Build the bundled vibration anomaly model: simulator data -> edge pipeline -> Keras AE -> TFLite.

Why it looks like this: the edge scores whatever the TFLite graph outputs, so
the graph ends with the anomaly score itself -- the mean squared
reconstruction error over the normalised features, shape (B, 1) -- and the
edge stays generic. Training features are made by the *edge's own* pipeline
(``edgeloop.edge.stages.build_pipeline`` + ``push`` + ``transform``), so training
and inference cannot disagree about a feature definition.

Data (all from ``edgeloop.devices.simulator``, pre-drift regime, no MQTT). Each split
is a different fleet (its own seed), so the figures are for machines the
model has never seen -- as on a real edge, where the fleet is not the one the
model was trained on:
  train       seed      128 devices x 15 s, no faults
  validation  seed+1     48 devices x 15 s, no faults   -> threshold, reference statistics
  test        seed+2     48 devices x 15 s, no faults   -> false-positive rate
  faults      seed+3     48 devices x 15 s, anomaly_rate 0.02 -> recall on windows overlapping a fault
  drift       seed+4     48 devices x 15 s, drifted from t=0   -> how far scores move under drift
Many machines for a short time beat few machines for long: windows of one
machine are alike, and the edge meets machines it has never seen.

Threshold: the 99.5th percentile of validation scores (target false-positive
rate 0.5% per window on healthy machines). TensorFlow is imported only here
(the ``train`` extra).

    python -m edgeloop.bridge.training.build --out runtime/models --seed 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.devices.simulator import FleetSimulator
from edgeloop.modelfile import (
    InputSpec,
    ModelMetadata,
    Normalization,
    OutputSpec,
    Reference,
    TrainingInfo,
    sha256_bytes,
    write_model_files,
)
from edgeloop.edge.stages import build_pipeline

log = logging.getLogger(__name__)

MODEL_NAME = "vibration_ae"
MODEL_VERSION = "1.0.0"

#: The edge's default vibration pipeline (edgeloop.edge.config.DEFAULT_VIBRATION_STAGES must match).
DEFAULT_VIBRATION_PIPELINE: list[dict[str, Any]] = [
    {"type": "select", "channels": [0, 1, 2]},
    {"type": "window", "size": 128, "hop": 64},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]

THRESHOLD_QUANTILE = 0.995
SCORE_QUANTILES = (0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999)
#: Levels of the per-feature quantiles kept in the reference (the drift monitor's bins and CDFs).
FEATURE_QUANTILE_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
HIDDEN = (16, 8, 16)
ACTIVATION = "relu"
_STD_FLOOR = 1e-6


def _quantile_key(q: float) -> str:
    return f"{q:g}"


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


def raw_features(windows: list[np.ndarray], pipeline_stages: list[dict[str, Any]]) -> np.ndarray:
    pipeline = build_pipeline([s for s in pipeline_stages if s["type"] != "normalize"], in_channels=3)
    return pipeline.transform(windows)


def model_features(
    windows: list[np.ndarray], pipeline_stages: list[dict[str, Any]], stats: dict
) -> np.ndarray:
    """The model's input exactly as the edge computes it (including ``normalize from_model``)."""
    return build_pipeline(pipeline_stages, in_channels=3, model_stats=stats).transform(windows)


def configure_tensorflow() -> Any:
    """Import TensorFlow single-threaded and deterministic (as far as it allows); return the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    return tf


def fit_normalization(raw: np.ndarray) -> dict[str, list[float]]:
    """Per-feature mean and std (floored) of raw features: the model's ``normalization``."""
    mean = raw.mean(axis=0).astype(np.float64)
    std = np.maximum(raw.std(axis=0).astype(np.float64), _STD_FLOOR)
    return {"mean": mean.tolist(), "std": std.tolist()}


def normalize(raw: np.ndarray, stats: dict[str, list[float]]) -> np.ndarray:
    """What ``{type: normalize, from_model: true}`` does on the edge."""
    mean = np.asarray(stats["mean"], dtype=np.float32)
    inv_std = (1.0 / np.asarray(stats["std"], dtype=np.float32)).astype(np.float32)
    return ((raw.astype(np.float32) - mean) * inv_std).astype(np.float32)


def train_autoencoder(x_train: np.ndarray, seed: int, *, epochs: int, batch_size: int) -> Any:
    """Fit the autoencoder on normalised features; return the scorer (features -> (B, 1) score)."""
    autoencoder, scorer = keras_models(x_train.shape[1], seed)
    autoencoder.compile(optimizer="adam", loss="mse")
    autoencoder.fit(x_train, x_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return scorer


def keras_models(n_features: int, seed: int):
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    for i, units in enumerate(HIDDEN):
        x = layers.Dense(units, activation=ACTIVATION, name=f"dense_{i}")(x)
    recon = layers.Dense(n_features, name="reconstruction")(x)
    autoencoder = keras.Model(inputs, recon, name="autoencoder")
    score = layers.Lambda(lambda t: ops.mean(ops.square(t[0] - t[1]), axis=-1, keepdims=True), name="score")(
        [inputs, recon]
    )
    scorer = keras.Model(inputs, score, name=MODEL_NAME)
    return autoencoder, scorer


def to_tflite(scorer: Any, n_features: int, representative: np.ndarray | None = None) -> bytes:
    """Convert the scorer to TFLite: float32, or with ``representative`` (normalised feature rows)
    int8 post-training quantization of weights and activations with float input and output,
    so the edge feeds and reads it exactly like the float model."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, n_features], tf.float32, name="features")])
    def serve(features):
        return {"score": scorer(features, training=False)}

    # Without the trackable object the converter freezes the weights into constants
    # (with it, Keras 3 variables stay resource variables that LiteRT reads as NaN).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    if representative is not None:
        rows = np.asarray(representative, dtype=np.float32)

        def dataset():
            for i in range(min(len(rows), 500)):
                yield [rows[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
    return converter.convert()


def score_tflite(content: bytes, features: np.ndarray) -> np.ndarray:
    """Score with the converted bytes through the edge's own interpreter path."""
    import tempfile

    from edgeloop.edge.inference import TfliteModel

    with tempfile.TemporaryDirectory() as tmp:
        meta = make_metadata(content, features.shape[1], 0.0, None, None, None)
        path = write_model_files(tmp, content, meta)
        return TfliteModel(path).run(features)[:, 0]


def reference_stats(raw: np.ndarray, scores: np.ndarray) -> Reference:
    """What the drift monitor compares live data with: score quantiles and moments, raw-feature
    moments and per-feature quantiles, of held-out normal windows."""
    return Reference(
        score_quantiles={_quantile_key(q): float(np.quantile(scores, q)) for q in SCORE_QUANTILES},
        score_mean=float(scores.mean()),
        score_std=float(scores.std()),
        feature_mean=raw.mean(axis=0).astype(np.float64).tolist(),
        feature_std=raw.std(axis=0).astype(np.float64).tolist(),
        samples=len(scores),
        quantile_levels=list(FEATURE_QUANTILE_LEVELS),
        feature_quantiles=np.quantile(raw.astype(np.float64), FEATURE_QUANTILE_LEVELS, axis=0).T.tolist(),
    )


def make_metadata(
    content: bytes,
    n_features: int,
    threshold: float,
    normalization: Normalization | None,
    reference: Reference | None,
    training: TrainingInfo | None,
    *,
    name: str = MODEL_NAME,
    version: str = MODEL_VERSION,
    created_by: str = "edgeloop model build",
) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=version,
        sha256=sha256_bytes(content),
        task="anomaly",
        input=InputSpec(shape=[None, n_features], dtype="float32"),
        outputs=[OutputSpec(name="score", shape=[None, 1])],
        score_output=0,
        threshold=threshold,
        labels=["normal", "anomaly"],
        normalization=normalization,
        reference=reference,
        training=training,
        created_by=created_by,
    )


def build_model(
    out_dir: str | Path = "runtime/models",
    seed: int = 7,
    *,
    duration_s: float = 15.0,
    train_devices: int = 128,
    eval_devices: int = 48,
    epochs: int = 80,
    batch_size: int = 256,
    threshold_quantile: float = THRESHOLD_QUANTILE,
    pipeline_stages: list[dict[str, Any]] | None = None,
) -> tuple[Path, dict[str, float]]:
    """Train, convert, evaluate and write ``vibration_ae.tflite`` + ``.json`` into ``out_dir``.

    Returns the .tflite path and the evaluation figures (also stored in the
    metadata under ``training.evaluation``). Deterministic for a seed as far
    as TensorFlow allows (single-threaded, op determinism on).
    """
    tf = configure_tensorflow()

    stages = pipeline_stages or DEFAULT_VIBRATION_PIPELINE
    started = time.perf_counter()

    def fleet(offset: int, devices: int, **kw: Any) -> FleetSimulator:
        return FleetSimulator(devices, seed=seed + offset, **kw)

    train_w, _ = simulate_windows(fleet(0, train_devices), duration_s, stages)
    val_w, _ = simulate_windows(fleet(1, eval_devices), duration_s, stages)
    test_w, _ = simulate_windows(fleet(2, eval_devices), duration_s, stages)
    fault_w, fault_mask = simulate_windows(fleet(3, eval_devices, anomaly_rate=0.02), duration_s, stages)
    drift_w, _ = simulate_windows(fleet(4, eval_devices, drift_at_s=0.0), duration_s, stages)
    data_s = time.perf_counter() - started

    raw_train = raw_features(train_w, stages)
    stats = fit_normalization(raw_train)
    x_train = model_features(train_w, stages, stats)
    n_features = x_train.shape[1]

    fit_started = time.perf_counter()
    scorer = train_autoencoder(x_train, seed, epochs=epochs, batch_size=batch_size)
    fit_s = time.perf_counter() - fit_started
    content = to_tflite(scorer, n_features)

    def scores(windows: list[np.ndarray]) -> np.ndarray:
        return score_tflite(content, model_features(windows, stages, stats))

    s_train, s_val, s_test = scores(train_w), scores(val_w), scores(test_w)
    s_fault, s_drift = scores(fault_w), scores(drift_w)
    keras_val = np.asarray(scorer.predict(model_features(val_w, stages, stats), verbose=0))[:, 0]
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
    reference = reference_stats(raw_features(val_w, stages), s_val)
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
                f"dense {n_features}-{'-'.join(map(str, HIDDEN))}-{n_features}, {ACTIVATION}; "
                "score = mean squared reconstruction error"
            ),
            "epochs": epochs,
            "fit_s": round(fit_s, 2),
            "data_s": round(data_s, 2),
        },
    )
    meta = make_metadata(content, n_features, threshold, Normalization(**stats), reference, training)
    path = write_model_files(out_dir, content, meta)
    log.info("wrote %s (%d bytes, sha256 %s) in %.1fs", path, len(content), meta.sha256[:12], elapsed)
    return path, evaluation


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runtime/models", help="directory for vibration_ae.tflite/.json")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=80)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, evaluation = build_model(args.out, args.seed, epochs=args.epochs)
    for key, value in evaluation.items():
        print(f"{key:40s} {value:.6g}")
    print(f"model: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
