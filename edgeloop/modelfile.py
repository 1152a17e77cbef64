"""Model files: ``NAME.tflite`` plus ``NAME.json`` metadata (see docs/INTERFACES.md).

Why a module of its own: the edge, the registry and the trainer all read or
write the same metadata, and the edge must refuse a model whose bytes are not
the ones the metadata describes (sha256) before handing them to an
interpreter. This module needs pydantic and the standard library only: what
needs an interpreter (``edgeloop model info``'s tensor list) is the edge's,
``edgeloop.edge.modelinfo``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeloop.errors import ModelError
from edgeloop.contract import TOPIC_LEVEL_PATTERN

_STRICT = ConfigDict(extra="forbid", frozen=True)

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Dim = Annotated[int, Field(ge=1)] | None
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
DType = Literal["float32", "int8", "uint8"]


class InputSpec(BaseModel):
    """Input tensor: ``shape`` includes the batch dimension first (``null`` = any batch size)."""

    model_config = _STRICT

    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]
    dtype: DType = "float32"

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one row, batch dimension excluded."""
        dims = self.shape[1:]
        if any(d is None for d in dims):
            raise ModelError(f"input shape {self.shape} has an unknown non-batch dimension")
        return tuple(int(d) for d in dims)  # type: ignore[arg-type]


class OutputSpec(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=64)]
    shape: Annotated[list[Dim], Field(min_length=1, max_length=8)]


class Normalization(BaseModel):
    """Feature standardisation applied by ``{type: normalize, from_model: true}``."""

    model_config = _STRICT

    mean: list[FiniteFloat]
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]]

    @model_validator(mode="after")
    def _same_length(self) -> Normalization:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std has {len(self.std)}")
        return self


class ImageInput(BaseModel):
    """How an image model's input is made from a decoded frame (the edge's default image stages).

    ``width``/``height``/``channels`` repeat the input tensor's ``(H, W, C)``;
    a pixel ``p`` (0..255, in ``color`` order) becomes ``(p * scale - mean[c]) / std[c]``
    before any int8/uint8 quantization of the input tensor. ``letterbox``:
    resize keeping the aspect ratio and pad with ``fill``.
    """

    model_config = _STRICT

    width: Annotated[int, Field(ge=1, le=4096)]
    height: Annotated[int, Field(ge=1, le=4096)]
    channels: Literal[1, 3] = 3
    color: Literal["rgb", "bgr", "gray"] = "rgb"
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0 / 255.0
    mean: list[FiniteFloat] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    letterbox: bool = False
    fill: Annotated[int, Field(ge=0, le=255)] = 114

    @model_validator(mode="after")
    def _per_channel(self) -> ImageInput:
        if (self.color == "gray") != (self.channels == 1):
            raise ValueError(f"color {self.color} does not fit {self.channels} channel(s)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} value(s) each")
        return self


class Reference(BaseModel):
    """Statistics of the training data, kept for a drift monitor to compare live data against."""

    model_config = _STRICT

    score_quantiles: dict[str, FiniteFloat] = Field(default_factory=dict)
    score_mean: FiniteFloat | None = None
    score_std: FiniteFloat | None = None
    feature_mean: list[FiniteFloat] = Field(default_factory=list)
    feature_std: list[FiniteFloat] = Field(default_factory=list)
    samples: Annotated[int, Field(ge=0)] | None = None
    quantile_levels: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        default_factory=list, description="cumulative probabilities of the rows of feature_quantiles"
    )
    feature_quantiles: list[list[FiniteFloat]] = Field(
        default_factory=list, description="per raw feature (before normalize), its values at quantile_levels"
    )

    @model_validator(mode="after")
    def _quantiles_fit(self) -> Reference:
        if any(len(q) != len(self.quantile_levels) for q in self.feature_quantiles):
            raise ValueError("each feature_quantiles row needs one value per quantile_levels entry")
        if self.quantile_levels != sorted(self.quantile_levels):
            raise ValueError("quantile_levels must be increasing")
        return self


class TrainingInfo(BaseModel):
    """How the model was made. ``evaluation`` holds held-out figures (e.g. false_positive_rate)."""

    model_config = _STRICT

    created: str
    samples: Annotated[int, Field(ge=0)]
    window: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    parent: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        default=None, description="version this model was retrained from"
    )
    pipeline: list[dict[str, Any]] = Field(default_factory=list)
    threshold_method: str | None = Field(default=None, max_length=512)
    evaluation: dict[str, FiniteFloat] = Field(default_factory=dict)
    duration_s: Annotated[float, Field(ge=0)] | None = None
    framework: str | None = Field(default=None, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict, description="how the training data was generated")


class ModelMetadata(BaseModel):
    """The ``NAME.json`` beside ``NAME.tflite``."""

    model_config = _STRICT

    name: Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    sha256: Sha256
    task: Literal["anomaly", "classification", "regression"] = "anomaly"
    input: InputSpec
    outputs: Annotated[list[OutputSpec], Field(min_length=1)]
    score_output: Annotated[int, Field(ge=0)] = 0
    threshold: FiniteFloat
    labels: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1)] = [
        "normal",
        "anomaly",
    ]
    normalization: Normalization | None = None
    image: ImageInput | None = Field(default=None, description="image models: how frames become the input")
    anomaly_labels: list[str] = Field(default_factory=list, description="classification: labels that mean anomaly")
    reference: Reference | None = None
    training: TrainingInfo | None = None
    created_by: str | None = Field(default=None, max_length=128)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        width = sum(_row_size(o.shape) for o in self.outputs)
        if self.score_output >= width:
            raise ValueError(f"score_output {self.score_output} is outside the {width} output values")
        if self.task == "anomaly" and len(self.labels) != 2:
            raise ValueError("an anomaly model needs exactly two labels: [normal, anomaly]")
        if self.normalization is not None and len(self.input.shape) == 2:
            n = self.input.shape[1]
            if n is not None and len(self.normalization.mean) != n:
                raise ValueError(
                    f"normalization has {len(self.normalization.mean)} values but input has {n} features"
                )
        if self.task == "classification" and width != len(self.labels):
            raise ValueError(f"a classifier needs one label per output value: {width} outputs, {len(self.labels)} labels")
        if not set(self.anomaly_labels) <= set(self.labels):
            raise ValueError(f"anomaly_labels {sorted(set(self.anomaly_labels) - set(self.labels))} are not labels")
        if self.image is not None:
            hwc = [self.image.height, self.image.width, self.image.channels]
            if list(self.input.shape[1:]) != hwc:
                raise ValueError(f"image spec is (H, W, C) = {tuple(hwc)} but the input shape is {self.input.shape}")
        return self


def _row_size(shape: list[int | None]) -> int:
    size = 1
    for dim in shape[1:]:
        size *= dim if dim is not None else 1
    return size


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path(tflite_path: str | Path) -> Path:
    return Path(tflite_path).with_suffix(".json")


def load_metadata(path: str | Path) -> ModelMetadata:
    """Read and validate a metadata JSON file; ModelError names the file and the field."""
    path = Path(path)
    try:
        text = path.read_bytes()  # bytes: invalid UTF-8 is then a validation error, not a crash
    except OSError as exc:
        raise ModelError(f"cannot read model metadata {path}: {exc.strerror}") from None
    try:
        return ModelMetadata.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise ModelError(f"invalid model metadata {path}: {problems}") from None


def load_model_files(tflite_path: str | Path) -> tuple[bytes, ModelMetadata]:
    """Read ``X.tflite`` and ``X.json``; refuse the pair unless the sha256 of the bytes matches."""
    tflite_path = Path(tflite_path)
    try:
        content = tflite_path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model file {tflite_path}: {exc.strerror}") from None
    meta = load_metadata(metadata_path(tflite_path))
    actual = sha256_bytes(content)
    if actual != meta.sha256:
        raise ModelError(
            f"model file {tflite_path} has sha256 {actual[:16]}... but its metadata "
            f"{metadata_path(tflite_path).name} says {meta.sha256[:16]}...: refusing a model "
            "whose bytes are not the ones described"
        )
    return content, meta


def write_model_files(out_dir: str | Path, content: bytes, meta: ModelMetadata) -> Path:
    """Write ``NAME.tflite`` + ``NAME.json`` (sha256 must already match); return the .tflite path."""
    if sha256_bytes(content) != meta.sha256:
        raise ModelError("metadata sha256 does not match the model bytes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tflite = out / f"{meta.name}.tflite"
    tflite.write_bytes(content)
    data = meta.model_dump(mode="json", exclude_none=True)
    metadata_path(tflite).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return tflite
