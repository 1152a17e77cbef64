"""Image stages declared in config: decode, color, crop, resize, normalize, layout.

Each stage is a frozen pydantic config (``extra="forbid"``, ``type``
discriminator) whose ``build(state, target)`` checks it against the image it
will receive (colour space, size when known, dtype) and the model it feeds,
and returns the op that runs per frame: ``apply(image) -> image``. Building
updates ``state``, so the pipeline knows its output shape and dtype at
startup. Ops are OpenCV calls on ``uint8`` images until ``normalize``, which
maps pixels through one 256-entry lookup table per channel
(``(p * scale - mean) / std``, then the model's int8/uint8 quantization when
its input tensor is quantized): a single ``cv2.LUT`` pass instead of float
arithmetic per pixel. Runtime problems with one frame raise PayloadError.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeloop.errors import PayloadError
from edgeloop.modelfile import ImageInput
from edgeloop.edge.vision.frames import check_complete, jpeg_dimensions

_FROZEN = ConfigDict(extra="forbid", frozen=True)

Color = Literal["bgr", "rgb", "gray"]
Pixels = Annotated[int, Field(ge=1, le=16384)]

_INTERPOLATION = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}
_REDUCED = {
    (1, False): cv2.IMREAD_COLOR,
    (2, False): cv2.IMREAD_REDUCED_COLOR_2,
    (4, False): cv2.IMREAD_REDUCED_COLOR_4,
    (8, False): cv2.IMREAD_REDUCED_COLOR_8,
    (1, True): cv2.IMREAD_GRAYSCALE,
    (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4,
    (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
_CONVERSIONS = {
    ("bgr", "rgb"): cv2.COLOR_BGR2RGB,
    ("rgb", "bgr"): cv2.COLOR_RGB2BGR,
    ("bgr", "gray"): cv2.COLOR_BGR2GRAY,
    ("rgb", "gray"): cv2.COLOR_RGB2GRAY,
    ("gray", "rgb"): cv2.COLOR_GRAY2RGB,
    ("gray", "bgr"): cv2.COLOR_GRAY2BGR,
}


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

    def build(self, state: ImageState, target: ModelInput) -> Decode:
        state.color = "gray" if self.gray else "bgr"
        state.reduce = 1 if self.reduce == "auto" else self.reduce
        state.auto_reduce = self.reduce == "auto"
        if self.expect_size is not None and self.reduce != "auto":
            w, h = self.expect_size
            state.size = (-(-w // self.reduce), -(-h // self.reduce))
        return Decode(self)


class Decode:
    def __init__(self, cfg: DecodeConfig) -> None:
        self.cfg = cfg
        self.auto = cfg.reduce == "auto"
        self.flag = _REDUCED[(1 if self.auto else cfg.reduce, cfg.gray)]
        self.cover: tuple[int, int] | None = None  # (width, height) the image must still cover with reduce: auto

    def _flag(self, width: int, height: int) -> int:
        if self.cover is None:
            return self.flag
        w, h = self.cover
        factor = next((f for f in (8, 4, 2) if width // f >= w and height // f >= h), 1)
        return _REDUCED[(factor, self.cfg.gray)]

    def apply(self, jpeg: bytes) -> np.ndarray:
        width, height, _ = jpeg_dimensions(jpeg)
        cfg = self.cfg
        if cfg.expect_size is not None and (width, height) != tuple(cfg.expect_size):
            raise PayloadError("wrong_size", f"frame is {width}x{height}, expected {cfg.expect_size[0]}x{cfg.expect_size[1]}")
        if width > cfg.max_width or height > cfg.max_height:
            raise PayloadError("wrong_size", f"frame is {width}x{height}, larger than {cfg.max_width}x{cfg.max_height}")
        check_complete(jpeg)
        try:
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), self._flag(width, height) if self.auto else self.flag)
        except cv2.error as exc:
            raise PayloadError("corrupt_image", f"JPEG decoding failed: {str(exc).strip()[-200:]}") from None
        if image is None:
            raise PayloadError("corrupt_image", "JPEG decoding failed")
        return image


# --------------------------------------------------------------------------- color


class ColorConfig(BaseModel):
    """Convert to ``rgb``, ``bgr`` or ``gray`` (a no-op when the image already is)."""

    model_config = _FROZEN
    type: Literal["color"] = "color"
    to: Color

    def build(self, state: ImageState, target: ModelInput) -> Convert | None:
        source, state.color = state.color, self.to
        return None if source == self.to else Convert(_CONVERSIONS[(source, self.to)])


class Convert:
    def __init__(self, code: int) -> None:
        self.code = code

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(image, self.code)


# --------------------------------------------------------------------------- crop


class CropConfig(BaseModel):
    """A region of interest in pixels of the full-size frame (scaled when ``decode.reduce`` > 1)."""

    model_config = _FROZEN
    type: Literal["crop"] = "crop"
    x: Annotated[int, Field(ge=0)] = 0
    y: Annotated[int, Field(ge=0)] = 0
    width: Pixels
    height: Pixels

    def build(self, state: ImageState, target: ModelInput) -> Crop:
        if state.auto_reduce:
            raise ValueError("crop: pixel coordinates need a fixed decode.reduce, not auto")
        r = state.reduce
        x0, y0, x1, y1 = self.x // r, self.y // r, (self.x + self.width) // r, (self.y + self.height) // r
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop: {self.width}x{self.height} is empty at decode.reduce {r}")
        if state.size is not None and (x1 > state.size[0] or y1 > state.size[1]):
            raise ValueError(f"crop: region ends at ({x1}, {y1}), outside the {state.size[0]}x{state.size[1]} frame")
        state.size = (x1 - x0, y1 - y0)
        return Crop(x0, y0, x1, y1)


class Crop:
    def __init__(self, x0: int, y0: int, x1: int, y1: int) -> None:
        self.box = (x0, y0, x1, y1)

    def apply(self, image: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        if image.shape[1] < x1 or image.shape[0] < y1:
            raise PayloadError("wrong_size", f"crop region ends at ({x1}, {y1}), the frame is {image.shape[1]}x{image.shape[0]}")
        return image[y0:y1, x0:x1]


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

    def build(self, state: ImageState, target: ModelInput) -> Resize:
        height, width = target.hw
        size = (self.width or width, self.height or height)
        spec = target.image
        letterbox = self.letterbox if self.letterbox is not None else bool(spec and spec.letterbox)
        fill = self.fill if self.fill is not None else (spec.fill if spec else 114)
        state.size = size
        return Resize(size, letterbox, fill, _INTERPOLATION[self.interpolation])


class Resize:
    def __init__(self, size: tuple[int, int], letterbox: bool, fill: int, interpolation: int) -> None:
        self.size = size
        self.letterbox = letterbox
        self.fill = fill
        self.interpolation = interpolation

    def apply(self, image: np.ndarray) -> np.ndarray:
        w, h = self.size
        ih, iw = image.shape[:2]
        if (iw, ih) == (w, h):
            return image
        if not self.letterbox:
            return cv2.resize(image, (w, h), interpolation=self.interpolation)
        s = min(w / iw, h / ih)
        nw, nh = max(1, min(w, round(iw * s))), max(1, min(h, round(ih * s)))
        out = np.full((h, w) + image.shape[2:], self.fill, np.uint8)
        x, y = (w - nw) // 2, (h - nh) // 2
        out[y : y + nh, x : x + nw] = cv2.resize(image, (nw, nh), interpolation=self.interpolation)
        return out


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

    def build(self, state: ImageState, target: ModelInput) -> Normalize:
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
        return Normalize(values.astype(dtype), c)


class Normalize:
    def __init__(self, table: np.ndarray, channels: int) -> None:
        self.channels = channels
        self.lut = table[:, 0].reshape(1, 256) if channels == 1 else table.reshape(1, 256, channels)

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.LUT(image, self.lut)


# --------------------------------------------------------------------------- layout


class LayoutConfig(BaseModel):
    """``nhwc`` (TFLite's usual layout) or ``nchw``; must be the last stage."""

    model_config = _FROZEN
    type: Literal["layout"] = "layout"
    order: Literal["nhwc", "nchw"] = "nhwc"

    def build(self, state: ImageState, target: ModelInput) -> Layout:
        return Layout(self.order == "nchw")


class Layout:
    def __init__(self, channels_first: bool) -> None:
        self.channels_first = channels_first

    def apply(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = image[:, :, None]
        return np.ascontiguousarray(image.transpose(2, 0, 1)) if self.channels_first else image
