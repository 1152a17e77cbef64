"""What the image stages run per frame: OpenCV calls on ``uint8`` images, then a lookup table.

Built only by the stage configs (``edgeloop.edge.vision.stages``) when a
camera pipeline is built; importing this module loads OpenCV (the ``vision``
extra). Problems with one frame raise PayloadError.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np

from edgeloop.errors import PayloadError
from edgeloop.edge.vision.frames import check_complete, jpeg_dimensions
from edgeloop.edge.vision.opencv import load_cv2



class DecodeSettings(Protocol):
    """What ``Decode`` reads of its config (``stages.DecodeConfig``), named here so ops never import stages."""

    reduce: Literal[1, 2, 4, 8, "auto"]
    gray: bool
    expect_size: tuple[int, int] | None
    max_width: int
    max_height: int

cv2 = load_cv2()

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


class Decode:
    """JPEG bytes -> image, refusing wrong-sized or incomplete frames before any pixel is decoded."""

    def __init__(self, cfg: DecodeSettings) -> None:
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


class Convert:
    def __init__(self, source: str, to: str) -> None:
        self.code = _CONVERSIONS[(source, to)]

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(image, self.code)


class Crop:
    def __init__(self, x0: int, y0: int, x1: int, y1: int) -> None:
        self.box = (x0, y0, x1, y1)

    def apply(self, image: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        if image.shape[1] < x1 or image.shape[0] < y1:
            raise PayloadError("wrong_size", f"crop region ends at ({x1}, {y1}), the frame is {image.shape[1]}x{image.shape[0]}")
        return image[y0:y1, x0:x1]


class Resize:
    def __init__(self, size: tuple[int, int], letterbox: bool, fill: int, interpolation: str) -> None:
        self.size = size
        self.letterbox = letterbox
        self.fill = fill
        self.interpolation = _INTERPOLATION[interpolation]

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


class Normalize:
    """One ``cv2.LUT`` pass through the table the config built, instead of float arithmetic per pixel."""

    def __init__(self, table: np.ndarray, channels: int) -> None:
        self.channels = channels
        self.lut = table[:, 0].reshape(1, 256) if channels == 1 else table.reshape(1, 256, channels)

    def apply(self, image: np.ndarray) -> np.ndarray:
        return cv2.LUT(image, self.lut)


class Layout:
    def __init__(self, channels_first: bool) -> None:
        self.channels_first = channels_first

    def apply(self, image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = image[:, :, None]
        return np.ascontiguousarray(image.transpose(2, 0, 1)) if self.channels_first else image
