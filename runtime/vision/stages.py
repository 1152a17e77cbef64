"""Image stages declared in config: decode, color, crop, resize, normalize, layout.

Each stage is a frozen pydantic config (``extra="forbid"``, ``type``
discriminator) whose ``build(state, target)`` checks it against the image it
will receive (colour space, size when known, dtype) and the model it feeds,
and returns the op that runs per frame (``edgeloop.edge.vision.ops``):
``apply(image) -> image``. Building updates ``state``, so the pipeline knows
its output shape and dtype at startup. ``normalize`` maps pixels through one
256-entry lookup table per channel (``(p * scale - mean) / std``, then the
model's int8/uint8 quantization when its input tensor is quantized), built
here with numpy.

Why the ops live apart: they are OpenCV calls, and this module is imported by
every edge that parses its config (``vision:`` in edge.yaml), cameras or not;
OpenCV (the ``vision`` extra) loads only when a pipeline is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from edgeloop.modelfile import ImageInput

if TYPE_CHECKING:
    from edgeloop.edge.vision import ops as _ops_module

_FROZEN = ConfigDict(extra="forbid", frozen=True)

Color = Literal["bgr", "rgb", "gray"]
Pixels = Annotated[int, Field(ge=1, le=16384)]


def _ops() -> _ops_module:
    """The per-frame ops: imported (with OpenCV) when a pipeline is built, never when a config is parsed."""
    from edgeloop.edge.vision import ops

    return ops


@dataclass(frozen=True)
class ModelInput:
    """What the stages must produce: the model's input tensor (one row) and its image spec."""

    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: dict[str, float] | None = None
    image: ImageInput | None = None
    layout: Literal["nhwc", "nchw"] = "nhwc"

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the input tensor in its layout."""
        if len(self.shape) != 3:
            raise ValueError(f"an image model needs a (H, W, C) input, this one takes {self.shape}")
        return (self.shape[1], self.shape[2]) if self.layout == "nchw" else (self.shape[0], self.shape[1])


@dataclass
class ImageState:
    """The image as it flows through the stages at build time."""

    color: Color = "bgr"
    size: tuple[int, int] | None = None  # (width, height) when fixed, else None (frame-dependent)
    reduce: int = 1
    auto_reduce: bool = False
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.uint8))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3


# --------------------------------------------------------------------------- decode


class DecodeConfig(BaseModel):
    """JPEG bytes -> BGR (or gray) ``uint8``; must be the first stage.

    ``reduce`` decodes at 1/2, 1/4 or 1/8 scale inside libjpeg (much cheaper
    for large frames feeding a small model); ``auto`` picks, per frame, the
    largest factor whose image still covers the resize stage's size (so
    nothing is upsampled), and cannot be combined with a crop (whose pixel
    coordinates need a fixed scale). Frames larger than ``max_width``
    x ``max_height``, or not ``expect_size`` when set, are refused
    (``wrong_size``) before their pixels are decoded.
    """

    model_config = _FROZEN
    type: Literal["decode"] = "decode"
    reduce: Literal[1, 2, 4, 8, "auto"] = Field(
        default=1, description="decode at 1/reduce scale (libjpeg DCT scaling); auto: the most that still covers the resize"
    )
    gray: bool = Field(default=False, description="decode to one gray channel")
    max_width: Pixels = 4096
    max_height: Pixels = 4096
    expect_size: tuple[Pixels, Pixels] | None = Field(default=None, description="[width, height] of every frame")

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Decode:
        state.color = "gray" if self.gray else "bgr"
        state.reduce = 1 if self.reduce == "auto" else self.reduce
        state.auto_reduce = self.reduce == "auto"
        if self.expect_size is not None and self.reduce != "auto":
            w, h = self.expect_size
            state.size = (-(-w // self.reduce), -(-h // self.reduce))
        return _ops().Decode(self)


# --------------------------------------------------------------------------- color


class ColorConfig(BaseModel):
    """Convert to ``rgb``, ``bgr`` or ``gray`` (a no-op when the image already is)."""

    model_config = _FROZEN
    type: Literal["color"] = "color"
    to: Color

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Convert | None:
        source, state.color = state.color, self.to
        return None if source == self.to else _ops().Convert(source, self.to)


# --------------------------------------------------------------------------- crop


class CropConfig(BaseModel):
    """A region of interest in pixels of the full-size frame (scaled when ``decode.reduce`` > 1)."""

    model_config = _FROZEN
    type: Literal["crop"] = "crop"
    x: Annotated[int, Field(ge=0)] = 0
    y: Annotated[int, Field(ge=0)] = 0
    width: Pixels
    height: Pixels

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Crop:
        if state.auto_reduce:
            raise ValueError("crop: pixel coordinates need a fixed decode.reduce, not auto")
        r = state.reduce
        x0, y0, x1, y1 = self.x // r, self.y // r, (self.x + self.width) // r, (self.y + self.height) // r
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop: {self.width}x{self.height} is empty at decode.reduce {r}")
        if state.size is not None and (x1 > state.size[0] or y1 > state.size[1]):
            raise ValueError(f"crop: region ends at ({x1}, {y1}), outside the {state.size[0]}x{state.size[1]} frame")
        state.size = (x1 - x0, y1 - y0)
        return _ops().Crop(x0, y0, x1, y1)


# --------------------------------------------------------------------------- resize


class ResizeConfig(BaseModel):
    """Resize to ``width`` x ``height`` (default: the model's input size).

    ``letterbox`` keeps the aspect ratio and pads with ``fill`` (default: as
    the model's image spec says, else off). ``area`` interpolation is the
    right choice for shrinking.
    """

    model_config = _FROZEN
    type: Literal["resize"] = "resize"
    width: Pixels | None = None
    height: Pixels | None = None
    letterbox: bool | None = Field(default=None, description="keep the aspect ratio, pad; default: the model's image spec")
    fill: Annotated[int, Field(ge=0, le=255)] | None = Field(default=None, description="letterbox padding value; default 114")
    interpolation: Literal["area", "linear", "nearest", "cubic"] = "area"

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Resize:
        height, width = target.hw
        size = (self.width or width, self.height or height)
        spec = target.image
        letterbox = self.letterbox if self.letterbox is not None else bool(spec and spec.letterbox)
        fill = self.fill if self.fill is not None else (spec.fill if spec else 114)
        state.size = size
        return _ops().Resize(size, letterbox, fill, self.interpolation)


# --------------------------------------------------------------------------- normalize


class NormalizeConfig(BaseModel):
    """Pixels to model input: ``(p * scale - mean[c]) / std[c]``, then the model's quantization.

    ``from_model: true`` takes scale, mean and std from the model's image spec;
    otherwise the values given here apply (defaults map pixels to [0, 1]).
    With ``quantize: true`` (default) and an int8/uint8 input tensor, values
    are quantized with the tensor's scale and zero point, so the model gets
    its native dtype and no float image is ever made.
    """

    model_config = _FROZEN
    type: Literal["normalize"] = "normalize"
    from_model: bool = Field(default=False, description="scale, mean and std from the model's image spec")
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(default=1.0 / 255.0, description="pixel multiplier before mean/std")
    mean: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None
    std: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = None
    quantize: bool = Field(default=True, description="quantize with an int8/uint8 input tensor's scale and zero point")

    @model_validator(mode="after")
    def _either(self) -> NormalizeConfig:
        if self.from_model and (self.mean is not None or self.std is not None):
            raise ValueError("give either from_model: true or mean/std, not both")
        return self

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Normalize:
        c = state.channels
        if self.from_model:
            if target.image is None:
                raise ValueError("normalize: from_model needs a model with an image spec in its metadata")
            scale, mean, std = target.image.scale, target.image.mean, target.image.std
        else:
            scale, mean, std = self.scale, self.mean or [0.0] * c, self.std or [1.0] * c
        if len(mean) != c or len(std) != c:
            raise ValueError(f"normalize: mean and std need {c} value(s) for a {state.color} image")
        pixels = np.arange(256, dtype=np.float64)[:, None]
        values = (pixels * scale - np.asarray(mean)) / np.asarray(std)  # (256, C)
        dtype = np.dtype(np.float32)
        if self.quantize and target.dtype != np.float32:
            q = target.quantization
            if not q:
                raise ValueError(f"normalize: the model's {target.dtype} input has no quantization parameters")
            info = np.iinfo(target.dtype)
            values = np.clip(np.round(values / q["scale"] + q["zero_point"]), info.min, info.max)
            dtype = target.dtype
        state.dtype = dtype
        return _ops().Normalize(values.astype(dtype), c)


# --------------------------------------------------------------------------- layout


class LayoutConfig(BaseModel):
    """``nhwc`` (TFLite's usual layout) or ``nchw``; must be the last stage."""

    model_config = _FROZEN
    type: Literal["layout"] = "layout"
    order: Literal["nhwc", "nchw"] = "nhwc"

    def build(self, state: ImageState, target: ModelInput) -> _ops_module.Layout:
        return _ops().Layout(self.order == "nchw")


# --------------------------------------------------------------------------- the declared list

ImageStageConfig = Annotated[
    DecodeConfig | ColorConfig | CropConfig | ResizeConfig | NormalizeConfig | LayoutConfig,
    Field(discriminator="type"),
]
_STAGES = TypeAdapter(list[ImageStageConfig])


def parse_image_stages(raw: list[dict[str, Any]]) -> list[ImageStageConfig]:
    return _STAGES.validate_python(raw)
