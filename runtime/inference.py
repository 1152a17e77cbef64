"""Run a TFLite model over micro-batches of feature rows.

Why this shape: per-message Python overhead, not the model, is what costs on
an edge box (a small dense model invokes in microseconds), so the engine
hands the model whole batches. Resizing the input tensor and re-allocating
on every call would eat that gain, so batches are padded up to power-of-two
buckets (at most ``max_batch``), the current allocation is cached, and larger
batches are cut into ``max_batch`` chunks.

Interpreter, in order of preference: LiteRT (``ai-edge-litert``), the legacy
``tflite-runtime`` wheel (older Pi images), TensorFlow's ``tf.lite``. Every
model is verified before use: sha256 of the bytes against the metadata, and
the input tensor spec (shape without batch, dtype) against the metadata.
Interpreter exceptions are translated into ModelError here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from edgeloop.errors import ModelError
from edgeloop.modelfile import ModelMetadata, load_model_files, sha256_bytes

_CANDIDATES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "Interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter", "Interpreter"),
    ("tensorflow", "tensorflow.lite", "Interpreter"),
)


@functools.lru_cache(maxsize=1)
def load_interpreter_class() -> tuple[type, str]:
    """The first available interpreter class and its package name (for logs and status)."""
    import importlib

    errors = []
    for name, module, attr in _CANDIDATES:
        try:
            return getattr(importlib.import_module(module), attr), name
        except Exception as exc:  # noqa: BLE001 -- a broken wheel (ImportError, OSError) means "try the next"
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise ModelError(
        "no TFLite interpreter available; install edgeloop with the 'edge' extra (LiteRT) or 'tflite' "
        "(tflite-runtime), e.g. edgeloop[edge] (README, Installing on a device). Tried: " + "; ".join(errors)
    )


def _tensor_info(detail: dict[str, Any]) -> dict[str, Any]:
    signature = detail.get("shape_signature")
    shape = [int(d) for d in (signature if signature is not None and len(signature) else detail["shape"])]
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return {
        "name": detail["name"],
        "index": int(detail["index"]),
        "shape": [None if d < 0 else d for d in shape],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


def tensor_details(interpreter: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an interpreter as plain data.

    Each: name, index, shape (None for a dynamic batch), dtype, quantization.
    """
    return (
        [_tensor_info(d) for d in interpreter.get_input_details()],
        [_tensor_info(d) for d in interpreter.get_output_details()],
    )


def _fmt(shape: tuple[int, ...] | list[Any]) -> str:
    return str(tuple(shape))


class TfliteModel:
    """A verified model ready to score batches: ``run((B, *input_shape)) -> (B, n_outputs)``.

    Output columns are the model's output tensors, flattened per row and
    concatenated in the interpreter's output order; ``score_output`` indexes
    that row. Not thread-safe: one inference worker owns an instance.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None, max_batch: int = 256) -> None:
        self.path = Path(path)
        content, meta = load_model_files(self.path)
        self._load(content, meta, num_threads, max_batch)

    @classmethod
    def from_bytes(
        cls, content: bytes, metadata: ModelMetadata, num_threads: int | None = None, max_batch: int = 256
    ) -> TfliteModel:
        """A model from bytes in memory (a deployment received over MQTT); same checks as from files."""
        if sha256_bytes(content) != metadata.sha256:
            raise ModelError(f"model {metadata.name} {metadata.version}: sha256 of the bytes differs from its metadata")
        self = cls.__new__(cls)
        self.path = Path(f"<{metadata.name} {metadata.version}>")
        self._load(content, metadata, num_threads, max_batch)
        return self

    def _load(self, content: bytes, meta: ModelMetadata, num_threads: int | None, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.metadata: ModelMetadata = meta
        cls, self.interpreter_name = load_interpreter_class()
        try:
            self._interp = cls(model_content=content, num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{self.path}: the interpreter cannot load this model: {exc}") from exc
        inputs, outputs = tensor_details(self._interp)
        if len(inputs) != 1:
            raise ModelError(
                f"model {self.label} has {len(inputs)} input tensors; edgeloop feeds exactly one"
            )
        self._in = inputs[0]
        self._outs = outputs
        self.input_shape: tuple[int, ...] = meta.input.item_shape
        tensor_shape = tuple(self._in["shape"][1:])
        if tensor_shape != self.input_shape or self._in["dtype"] != meta.input.dtype:
            raise ModelError(
                f"model {self.label}: input tensor is {_fmt(tensor_shape)} {self._in['dtype']} "
                f"but its metadata says {_fmt(self.input_shape)} {meta.input.dtype}"
            )
        self.n_outputs = sum(int(np.prod([d or 1 for d in o["shape"][1:]])) for o in outputs)
        declared = sum(int(np.prod([d or 1 for d in o.shape[1:]])) for o in meta.outputs)
        if self.n_outputs != declared:
            raise ModelError(
                f"model {self.label}: outputs give {self.n_outputs} values per row "
                f"but its metadata declares {declared}"
            )
        self.max_batch = max_batch
        self._allocated = 0
        self._buffer = np.zeros((0, *self.input_shape), dtype=np.float32)
        self._in_dtype = np.dtype(self._in["dtype"])
        self._resize(1)

    # ------------------------------------------------------------------ metadata views

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def sha256(self) -> str:
        return self.metadata.sha256

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    @property
    def score_output(self) -> int:
        return self.metadata.score_output

    @property
    def labels(self) -> list[str]:
        return self.metadata.labels

    @property
    def normalization(self) -> dict[str, list[float]] | None:
        """``{"mean": [...], "std": [...]}`` for ``build_pipeline(model_stats=...)``, or None."""
        norm = self.metadata.normalization
        return None if norm is None else {"mean": list(norm.mean), "std": list(norm.std)}

    @property
    def label(self) -> str:
        return f"{self.metadata.name} {self.metadata.version}"

    @property
    def input_dtype(self) -> np.dtype:
        return self._in_dtype

    @property
    def input_quantization(self) -> dict[str, float] | None:
        """``{"scale", "zero_point"}`` of an int8/uint8 input tensor (None for float input)."""
        return None if self._in_dtype == np.float32 else self._in["quantization"]

    def check_pipeline_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a pipeline whose per-window output is not this model's input."""
        if tuple(shape) != self.input_shape:
            raise ModelError(
                f"pipeline produces {_fmt(shape)} but model {self.label} expects {_fmt(self.input_shape)}"
            )

    # ------------------------------------------------------------------ inference

    def _resize(self, rows: int) -> None:
        index = self._in["index"]
        try:
            self._interp.resize_tensor_input(index, [rows, *self.input_shape], strict=False)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.label}: cannot allocate a batch of {rows}: {exc}") from exc
        self._allocated = rows
        self._buffer = np.zeros((rows, *self.input_shape), dtype=self._in_dtype)

    def allocate_every_batch(self) -> None:
        """Allocate each batch size ``run`` may use (1, 2, 4, ... ``max_batch``). Allocation is where a
        malformed model crashes the interpreter, so a trial (``edgeloop.edge.model_trial``) does it all."""
        rows = 1
        while rows < self.max_batch:
            rows = min(rows * 2, self.max_batch)
            self._resize(rows)

    def _bucket(self, rows: int) -> int:
        return min(1 << (rows - 1).bit_length(), self.max_batch)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        q = self._in["quantization"]
        if self._in_dtype == np.float32 or x.dtype == self._in_dtype:
            return x  # float model, or rows already quantized (e.g. by an image normalize stage)
        if q is None:
            raise ModelError(f"model {self.label}: {self._in_dtype} input without quantization parameters")
        info = np.iinfo(self._in_dtype)
        return np.clip(np.round(x / q["scale"] + q["zero_point"]), info.min, info.max).astype(self._in_dtype)

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        rows = chunk.shape[0]
        bucket = self._bucket(rows)
        if bucket != self._allocated:
            self._resize(bucket)
        self._buffer[:rows] = self._quantize(chunk)
        self._interp.set_tensor(self._in["index"], self._buffer)
        self._interp.invoke()
        columns = []
        for out in self._outs:
            value = self._interp.get_tensor(out["index"])[:rows]
            q = out["quantization"]
            if value.dtype != np.float32:
                value = (
                    (value.astype(np.float32) - q["zero_point"]) * q["scale"]
                    if q
                    else value.astype(np.float32)
                )
            columns.append(value.reshape(rows, -1))
        return columns[0] if len(columns) == 1 else np.concatenate(columns, axis=1)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Score ``(B, *input_shape)`` float32 rows; returns ``(B, n_outputs)`` float32.

        Rows already in an int8/uint8 input tensor's dtype are taken as quantized.
        """
        batch = np.asarray(batch)
        if batch.dtype != self._in_dtype:
            batch = batch.astype(np.float32, copy=False)
        if batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"batch has rows of shape {_fmt(batch.shape[1:])}, "
                f"model {self.label} expects {_fmt(self.input_shape)}"
            )
        total = batch.shape[0]
        if total == 0:
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        try:
            if total <= self.max_batch:
                return self._invoke(batch)
            return np.concatenate(
                [self._invoke(batch[i : i + self.max_batch]) for i in range(0, total, self.max_batch)]
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"model {self.label}: inference failed: {exc}") from exc
