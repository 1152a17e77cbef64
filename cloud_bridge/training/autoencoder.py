"""The vibration anomaly model family: edge features -> dense autoencoder -> TFLite that outputs the score.

Why it looks like this: the edge scores whatever the TFLite graph outputs, so
the graph ends with the anomaly score itself -- the mean squared
reconstruction error over the normalised features, shape (B, 1) -- and the
edge stays generic. Features are made by the *edge's own* pipeline
(``edgeloop.edge.stages.build_pipeline`` + ``push`` + ``transform``), so training
and inference cannot disagree about a feature definition.

The pieces (normalisation, the Keras model, conversion to float or int8
TFLite, scoring through the edge's interpreter, reference statistics for the
drift monitor, metadata) are used by the closed loop's retrain
(``edgeloop.bridge.training.retrain``) and by the recipe that builds the
bundled model from simulated machines (``lab/models.py``, ``make model``).
TensorFlow is imported only when a function here trains or converts (the
``train`` extra).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

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

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already ran in this process: its thread pools stay as they are
        pass
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


class FittedAutoencoder:
    """An autoencoder fitted on windows, converted, and the means to score more windows with it.

    Why one place: every recipe (the bundled vibration and climate models) normalizes the same
    way, trains the same way and scores its held-out fleets with the converted model."""

    def __init__(self, train_windows: list[np.ndarray], stages: list[dict[str, Any]], seed: int, *,
                 epochs: int, batch_size: int) -> None:
        self.stages = stages
        self.stats = fit_normalization(raw_features(train_windows, stages))
        x_train = model_features(train_windows, stages, self.stats)
        self.n_features = int(x_train.shape[1])
        started = time.perf_counter()
        self.scorer = train_autoencoder(x_train, seed, epochs=epochs, batch_size=batch_size)
        self.fit_s = time.perf_counter() - started
        self.content = to_tflite(self.scorer, self.n_features)

    def scores(self, windows: list[np.ndarray]) -> np.ndarray:
        """Scores of the converted (.tflite) model, as the edge computes them."""
        return score_tflite(self.content, model_features(windows, self.stages, self.stats))


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
    created_by: str = "python -m lab.models",
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
