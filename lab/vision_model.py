"""The recipe for the bundled image classifier: synthetic belt scenes -> edge image stages -> small CNN -> TFLite.

Two files come out, both verified through the edge's own interpreter path:

  parts_cnn.tflite       float32 input and output
  parts_cnn_int8.tflite  full-integer post-training quantization (int8 input
                         and output tensors, calibrated on a representative
                         set of training frames)

Why it looks like this: frames are rendered by ``edgeloop.devices.scenes`` (labels
empty / ok / defect), JPEG-encoded at a random quality (sometimes twice, as a
frame from an MJPG video re-encoded by the camera publisher is), and turned
into model input by the edge's own ``ImagePipeline`` with the stages the
model's metadata declares -- so training and serving cannot disagree about
resizing, colour order or normalisation. The input is 96x72 RGB (the 4:3
of the camera frame): large enough to see a crack on a part that spans a
third of a 320x240 frame, small enough that the int8 model runs in well under
a millisecond. Training flips frames at random (a defect is a defect
mirrored) and decays the learning rate on a cosine schedule. The graph ends
in a softmax, so ``outputs`` are class probabilities.

Splits come from different scene seeds (train seed, validation seed+1, test
seed+2): the figures are on frames the model has never seen.

    python -m lab.models --vision [--out DIR] [--seed 7]     (make model)

Here, not in the product: it renders scenes with ``edgeloop.devices.scenes``,
which the bridge must not import; the closed loop does not retrain it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgeloop.devices.scenes import LABELS, SceneSimulator, encode_jpeg
from edgeloop.modelfile import (
    ImageInput,
    InputSpec,
    ModelMetadata,
    OutputSpec,
    Reference,
    TrainingInfo,
    sha256_bytes,
    write_model_files,
)
from edgeloop.edge.vision.pipeline import ImagePipeline, default_image_stages, parse_image_stages
from edgeloop.edge.vision.stages import ModelInput

log = logging.getLogger(__name__)

FLOAT_NAME = "parts_cnn"
INT8_NAME = "parts_cnn_int8"
MODEL_VERSION = "1.0.0"
FRAME_SIZE = (320, 240)
IMAGE = ImageInput(width=96, height=72, channels=3, color="rgb", scale=1.0 / 255.0, mean=[0.0] * 3, std=[1.0] * 3)
ANOMALY_LABELS = ["defect"]
#: Top-1 probability below which a result counts as low-confidence (sample upload candidates).
CONFIDENCE_THRESHOLD = 0.6
FILTERS = (16, 24, 32, 48)
SCORE_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)


def make_dataset(seed: int, count: int, *, quality: tuple[int, int] = (50, 95)) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames of scene ``seed`` as model input (float32, N x H x W x 3) and label indices."""
    sim = SceneSimulator(*FRAME_SIZE, seed=seed)
    target = ModelInput(shape=(IMAGE.height, IMAGE.width, IMAGE.channels), dtype=np.dtype(np.float32), image=IMAGE)
    pipeline = ImagePipeline(parse_image_stages(default_image_stages(IMAGE)), target)
    rng = np.random.default_rng([seed, 99])
    x = np.empty((count, *pipeline.output_shape), np.float32)
    y = np.empty(count, np.int64)
    for i in range(count):
        image, label = sim.render(i)
        jpeg = encode_jpeg(image, int(rng.integers(*quality)))
        if rng.random() < 0.3:  # an MJPG video frame re-encoded by the camera publisher
            jpeg = encode_jpeg(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), int(rng.integers(*quality)))
        x[i] = pipeline.process(jpeg)
        y[i] = LABELS.index(label)
    return x, y


def _keras_models(seed: int):
    """(model to serve, model to train: the same layers behind random flips)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(IMAGE.height, IMAGE.width, IMAGE.channels), name="image")
    x = inputs
    for i, filters in enumerate(FILTERS):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"conv_{i}")(x)
        x = layers.BatchNormalization(name=f"bn_{i}")(x)
        x = layers.ReLU(name=f"relu_{i}")(x)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    outputs = layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=FLOAT_NAME)
    raw = keras.Input(shape=(IMAGE.height, IMAGE.width, IMAGE.channels), name="raw")
    trainer = keras.Model(raw, model(layers.RandomFlip("horizontal_and_vertical", seed=seed)(raw)))
    return model, trainer


def _converter(model: Any):
    import tensorflow as tf

    shape = [None, IMAGE.height, IMAGE.width, IMAGE.channels]

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="image")])
    def serve(image):
        return {"probs": model(image, training=False)}

    # Concrete functions freeze the weights into constants (Keras 3 variables would stay resources).
    return tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])


def to_tflite_float(model: Any) -> bytes:
    return _converter(model).convert()


def to_tflite_int8(model: Any, representative: np.ndarray) -> bytes:
    """Full-integer PTQ: int8 weights, activations, input and output, calibrated on ``representative``."""
    import tensorflow as tf

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def metadata(name: str, content: bytes, dtype: str, reference: Reference | None = None,
             training: TrainingInfo | None = None, version: str = MODEL_VERSION) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=version,
        sha256=sha256_bytes(content),
        task="classification",
        input=InputSpec(shape=[None, IMAGE.height, IMAGE.width, IMAGE.channels], dtype=dtype),
        outputs=[OutputSpec(name="probs", shape=[None, len(LABELS)])],
        score_output=0,
        threshold=CONFIDENCE_THRESHOLD,
        labels=list(LABELS),
        anomaly_labels=ANOMALY_LABELS,
        image=IMAGE,
        reference=reference,
        training=training,
        created_by="python -m lab.models --vision",
    )


def evaluate_frames(path: Path, seed: int, count: int) -> dict[str, float]:
    """Accuracy of a written model on fresh scene frames, through the edge's pipeline and interpreter."""
    from edgeloop.edge.inference import TfliteModel
    from edgeloop.edge.vision.pipeline import build_image_pipeline

    model = TfliteModel(path, max_batch=64)
    pipeline = build_image_pipeline(None, model)
    sim = SceneSimulator(*FRAME_SIZE, seed=seed)
    rows, truth = [], []
    for i in range(count):
        image, label = sim.render(i)
        rows.append(pipeline.process(encode_jpeg(image, 85)))
        truth.append(LABELS.index(label))
    probs = model.run(np.stack(rows))
    return _figures(probs, np.asarray(truth))


def _figures(probs: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    out = {"accuracy": float(np.mean(pred == truth))}
    for k, label in enumerate(LABELS):
        mask = truth == k
        out[f"recall_{label}"] = float(np.mean(pred[mask] == k)) if mask.any() else 0.0
    top1 = probs.max(axis=1)
    out["low_confidence_rate"] = float(np.mean(top1 < CONFIDENCE_THRESHOLD))
    return out


def _write_checked(out_dir: Path, name: str, content: bytes, dtype: str, x_test: np.ndarray,
                   reference: Reference | None = None, training: TrainingInfo | None = None,
                   version: str = MODEL_VERSION) -> tuple[Path, np.ndarray]:
    """Write the files and return the test-set probabilities from the edge's interpreter."""
    from edgeloop.edge.inference import TfliteModel

    path = write_model_files(out_dir, content, metadata(name, content, dtype, reference, training, version))
    return path, TfliteModel(path, max_batch=64).run(x_test)


def build_vision_models(
    out_dir: str | Path,
    seed: int = 7,
    *,
    train_frames: int = 6000,
    eval_frames: int = 600,
    epochs: int = 14,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    version: str = MODEL_VERSION,
) -> tuple[list[Path], dict[str, float]]:
    """Train, convert (float + int8), evaluate and write both models (as ``version``); return their paths and figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except RuntimeError:  # TensorFlow already ran in this process (the vibration recipe): keep its pools
        pass
    tf.config.experimental.enable_op_determinism()
    started = time.perf_counter()
    x_train, y_train = make_dataset(seed, train_frames)
    x_val, _ = make_dataset(seed + 1, eval_frames)
    x_test, y_test = make_dataset(seed + 2, eval_frames)
    data_s = time.perf_counter() - started

    import keras

    model, trainer = _keras_models(seed)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * -(-train_frames // batch_size))
    trainer.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    fit_started = time.perf_counter()
    trainer.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    fit_s = time.perf_counter() - fit_started
    keras_test = np.asarray(model.predict(x_test, verbose=0))

    float_bytes = to_tflite_float(model)
    calibration = x_train[np.random.default_rng(seed).choice(len(x_train), 256, replace=False)]
    int8_bytes = to_tflite_int8(model, calibration)

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # probe with the edge's interpreter before writing for real
        _, p_float = _write_checked(Path(tmp), FLOAT_NAME, float_bytes, "float32", x_test)
        _, p_int8 = _write_checked(Path(tmp), INT8_NAME, int8_bytes, "int8", x_test)
        _, v_float = _write_checked(Path(tmp), FLOAT_NAME, float_bytes, "float32", x_val)
        _, v_int8 = _write_checked(Path(tmp), INT8_NAME, int8_bytes, "int8", x_val)
    elapsed = time.perf_counter() - started
    figures = {f"float_{k}": v for k, v in _figures(p_float, y_test).items()}
    figures.update({f"int8_{k}": v for k, v in _figures(p_int8, y_test).items()})
    figures["int8_float_agreement"] = float(np.mean(p_int8.argmax(1) == p_float.argmax(1)))
    figures["keras_tflite_max_abs_diff"] = float(np.max(np.abs(keras_test - p_float)))
    figures["int8_max_abs_prob_diff"] = float(np.max(np.abs(p_int8 - p_float)))

    paths = []
    for name, content, dtype, val in [(FLOAT_NAME, float_bytes, "float32", v_float), (INT8_NAME, int8_bytes, "int8", v_int8)]:
        top1 = val.max(axis=1)
        reference = Reference(
            score_quantiles={f"{q:g}": float(np.quantile(top1, q)) for q in SCORE_QUANTILES},
            score_mean=float(top1.mean()),
            score_std=float(top1.std()),
            samples=len(val),
        )
        training = TrainingInfo(
            created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            samples=train_frames,
            seed=seed,
            pipeline=default_image_stages(IMAGE),
            threshold_method=f"fixed: top-1 probability below {CONFIDENCE_THRESHOLD} is low-confidence",
            evaluation={k: v for k, v in figures.items() if not k.startswith("float_" if dtype == "int8" else "int8_")},
            duration_s=round(elapsed, 2),
            framework=f"tensorflow {tf.__version__}",
            data={
                "source": "edgeloop.devices.scenes.SceneSimulator",
                "frame_size": list(FRAME_SIZE),
                "train": {"seed": seed, "frames": train_frames},
                "validation": {"seed": seed + 1, "frames": eval_frames},
                "test": {"seed": seed + 2, "frames": eval_frames},
                "jpeg_quality": [50, 95],
                "architecture": (
                    f"conv3x3/2 {'-'.join(map(str, FILTERS))} (batch norm, relu), global max pool, "
                    f"dense {len(LABELS)} softmax"
                ),
                "quantization": "float32" if dtype == "float32" else "full-integer PTQ, 256 calibration frames",
                "epochs": epochs,
                "augmentation": "random horizontal and vertical flips",
                "optimizer": f"adam, cosine decay from {learning_rate:g}",
                "fit_s": round(fit_s, 2),
                "data_s": round(data_s, 2),
            },
        )
        path, _ = _write_checked(out, name, content, dtype, x_test[:1], reference, training, version)
        paths.append(path)
        log.info("wrote %s (%d bytes, sha256 %s)", path, len(content), sha256_bytes(content)[:12])
    return paths, figures
