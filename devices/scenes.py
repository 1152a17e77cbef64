"""Synthetic camera scenes: parts on a conveyor belt, some with a visible defect, with ground truth.

Why synthetic: tests, the demo and the bundled image model need frames whose
true label is known, in any number, on any machine, without a camera or a
data set download. Every frame is a pure function of ``(seed, index)``, so a
test can regenerate the frame a device published and check what the edge
said about it.

A scene is a dark belt with moving slats between two metal rails, under
lighting that varies in brightness and colour, with sensor noise. An *item*
occupies ``frames_per_item`` consecutive frames and travels left to right
across the middle of the frame (fully visible, so the label never depends on
what is out of view). Items are one of

  empty   the belt alone
  ok      an intact part: a washer, a plate with holes, or a gear
  defect  a part with a crack, a bite out of its edge, or a burn mark

Images are BGR ``uint8`` (OpenCV's order). ``write_video`` writes an MJPG
``.avi`` (works with opencv-python-headless) plus a ``.labels.json`` sidecar
that ``edgeloop devices camera --labels`` attaches to the published frames.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LABELS = ("empty", "ok", "defect")
SHAPES = ("washer", "plate", "gear")
DEFECTS = ("crack", "bite", "burn")

_METALS = (  # BGR base colours: steel, aluminium, brass, blue anodised, dark steel
    (168, 170, 172),
    (205, 205, 200),
    (70, 150, 190),
    (170, 110, 50),
    (110, 112, 115),
)


@dataclass(frozen=True)
class Item:
    """What one item on the belt is; everything about its look derives from ``seed`` and its index."""

    label: str
    shape: str | None
    defect: str | None


class SceneSimulator:
    """Renders frame ``index`` of a belt scene: ``render(index) -> (bgr image, label)``."""

    def __init__(
        self,
        width: int = 320,
        height: int = 240,
        seed: int = 1,
        *,
        p_empty: float = 0.2,
        p_defect: float = 0.35,
        frames_per_item: int = 1,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError("scenes need at least 32x32 pixels")
        if not (0 <= p_empty <= 1 and 0 <= p_defect <= 1 and p_empty + p_defect <= 1):
            raise ValueError("p_empty and p_defect must be probabilities that sum to at most 1")
        if frames_per_item < 1:
            raise ValueError("frames_per_item must be >= 1")
        self.width = width
        self.height = height
        self.seed = seed
        self.p_empty = p_empty
        self.p_defect = p_defect
        self.frames_per_item = frames_per_item
        # Sensor noise comes from a small seeded bank (drawing fresh noise costs more than the rest).
        self._noise = np.random.default_rng([seed, 3]).standard_normal((4, height, width), np.float32)

    def item(self, index: int) -> Item:
        """The item visible in frame ``index``."""
        rng = np.random.default_rng([self.seed, index // self.frames_per_item, 0])
        u = rng.random()
        if u < self.p_empty:
            return Item("empty", None, None)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        if u < self.p_empty + self.p_defect:
            return Item("defect", shape, DEFECTS[int(rng.integers(len(DEFECTS)))])
        return Item("ok", shape, None)

    def label(self, index: int) -> str:
        return self.item(index).label

    def labels(self, count: int, start: int = 0) -> list[str]:
        return [self.label(i) for i in range(start, start + count)]

    def render(self, index: int) -> tuple[np.ndarray, str]:
        item_no, step = divmod(index, self.frames_per_item)
        item = self.item(index)
        look = np.random.default_rng([self.seed, item_no, 1])  # the item's look: same on all its frames
        frame_rng = np.random.default_rng([self.seed, index, 2])  # per-frame noise and lighting flicker
        w, h = self.width, self.height
        scale = h / 240.0
        img = self._belt(index, look, scale)
        if item.shape is not None:
            radius = look.uniform(0.17, 0.24) * h
            travel = (step + 0.5) / self.frames_per_item if self.frames_per_item > 1 else look.uniform(0, 1)
            cx = (0.22 + 0.56 * travel) * w
            cy = h * (0.51 + look.uniform(-0.06, 0.06))
            angle = look.uniform(0, 2 * math.pi) + 0.15 * step
            _part(img, item, look, cx, cy, radius, angle, scale)
        noise = np.roll(self._noise[int(frame_rng.integers(4))], int(frame_rng.integers(w)), axis=1)
        img = _lighting(img, look, frame_rng, noise)
        return img, item.label

    def frames(self, count: int, start: int = 0):
        """Yield ``(index, image, label)`` for ``count`` frames."""
        for index in range(start, start + count):
            image, label = self.render(index)
            yield index, image, label

    def _belt(self, index: int, rng: np.random.Generator, scale: float) -> np.ndarray:
        w, h = self.width, self.height
        img = np.empty((h, w, 3), np.uint8)
        img[:] = np.array([58, 60, 62], np.uint8) + rng.integers(-8, 9, 3).astype(np.uint8)
        top, bottom = int(0.14 * h), int(0.88 * h)
        belt = int(rng.integers(40, 70))
        img[top:bottom] = (belt, belt, belt + 2)
        pitch = max(6, int(22 * scale))
        offset = int(index * 5 * scale) % pitch
        for x in range(-pitch + offset, w, pitch):
            cv2.line(img, (x, top), (x, bottom - 1), (belt - 14,) * 3, max(1, int(2 * scale)))
        rail = int(rng.integers(120, 170))
        cv2.rectangle(img, (0, top - int(8 * scale)), (w - 1, top), (rail, rail, rail + 5), -1)
        cv2.rectangle(img, (0, bottom), (w - 1, bottom + int(8 * scale)), (rail - 20,) * 3, -1)
        return img


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if shape == "gear":
        teeth = 10
        t = np.linspace(0, 2 * math.pi, teeth * 4, endpoint=False)
        radii = np.where((np.arange(teeth * 4) // 2) % 2 == 0, r, r * 0.82)
    elif shape == "plate":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        radii = np.full(4, r * 1.05)
        t = np.concatenate([t, t + 0.12, t - 0.12])
        radii = np.concatenate([radii, radii * 0.97, radii * 0.97])
        order = np.argsort(t)
        t, radii = t[order], radii[order]
    else:
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        radii = np.full(48, r)
    pts = np.stack([cx + radii * np.cos(t + angle), cy + radii * np.sin(t + angle)], axis=1)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits for cv2's subpixel drawing


def _holes(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float, float]]:
    if shape == "washer":
        return [(cx, cy, r * 0.42)]
    if shape == "gear":
        return [(cx, cy, r * 0.25)]
    return [
        (cx + r * 0.55 * math.cos(angle + k * math.pi / 2 + math.pi / 4),
         cy + r * 0.55 * math.sin(angle + k * math.pi / 2 + math.pi / 4), r * 0.13)
        for k in range(4)
    ]


def _part(img: np.ndarray, item: Item, rng: np.random.Generator, cx: float, cy: float, r: float,
          angle: float, scale: float) -> None:
    """Draw the part into ``img`` in place; all work happens in the part's bounding box."""
    h, w = img.shape[:2]
    pad = int(r * 1.15 + 10 * scale)
    x0, y0 = max(0, int(cx) - pad), max(0, int(cy) - pad)
    x1, y1 = min(w, int(cx) + pad + 1), min(h, int(cy) + pad + 1)
    roi = img[y0:y1, x0:x1]
    rh, rw = roi.shape[:2]
    cx, cy = cx - x0, cy - y0
    base = np.array(_METALS[int(rng.integers(len(_METALS)))], np.float32) * rng.uniform(0.85, 1.1)
    mask = np.zeros((rh, rw), np.uint8)
    cv2.fillPoly(mask, [_outline(item.shape, cx, cy, r, angle)], 255, cv2.LINE_AA, shift=4)
    for hx, hy, hr in _holes(item.shape, cx, cy, r, angle):
        cv2.circle(mask, (int(hx * 16), int(hy * 16)), int(hr * 16), 0, -1, cv2.LINE_AA, shift=4)
    if item.defect == "bite":
        a = angle + rng.uniform(0, 2 * math.pi)
        bite_r = r * rng.uniform(0.45, 0.6)
        bx, by = cx + 0.9 * r * math.cos(a), cy + 0.9 * r * math.sin(a)
        cv2.circle(mask, (int(bx * 16), int(by * 16)), int(bite_r * 16), 0, -1, cv2.LINE_AA, shift=4)
    # A soft shadow below the part, then the part with a light-to-dark metallic gradient.
    shadow = cv2.GaussianBlur(np.roll(mask, (int(4 * scale), int(3 * scale)), axis=(0, 1)), (0, 0), 3 * scale)
    out = roi.astype(np.float32) * (1 - 0.45 * shadow[..., None] / 255.0)
    yy, xx = np.mgrid[0:rh, 0:rw].astype(np.float32)
    g = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.25 * (((xx - cx) * math.cos(g) + (yy - cy) * math.sin(g)) / r)
    part = base[None, None, :] * shade[..., None]
    alpha = mask[..., None].astype(np.float32) / 255.0
    out = out * (1 - alpha) + part * alpha
    if item.defect == "crack":
        a = angle + rng.uniform(0, math.pi)
        n = 7
        t = np.linspace(-0.95, 0.3, n)
        jitter = rng.normal(0, 0.1 * r, n)
        pts = np.stack([cx + t * r * math.cos(a) - jitter * math.sin(a),
                        cy + t * r * math.sin(a) + jitter * math.cos(a)], axis=1)
        thickness = max(2, round(rng.uniform(3.0, 4.5) * scale))
        crack = np.zeros((rh, rw), np.uint8)
        cv2.polylines(crack, [np.round(pts * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=4)
        crack = cv2.bitwise_and(crack, mask)
        out *= 1 - 0.85 * crack[..., None].astype(np.float32) / 255.0
    elif item.defect == "burn":
        a = rng.uniform(0, 2 * math.pi)
        d = r * rng.uniform(0.3, 0.7)
        bx, by = cx + d * math.cos(a), cy + d * math.sin(a)
        spot = np.zeros((rh, rw), np.uint8)
        axes = (int(r * rng.uniform(0.3, 0.45) * 16), int(r * rng.uniform(0.22, 0.35) * 16))
        cv2.ellipse(spot, (int(bx * 16), int(by * 16)), axes, math.degrees(a), 0, 360, 255, -1, cv2.LINE_AA, shift=4)
        spot = cv2.bitwise_and(cv2.GaussianBlur(spot, (0, 0), 2 * scale), mask)
        burn = np.array([20, 30, 45], np.float32)  # dark brown
        k = 0.9 * spot[..., None].astype(np.float32) / 255.0
        out = out * (1 - k) + burn * k
    roi[:] = np.clip(out, 0, 255).astype(np.uint8)


def _lighting(img: np.ndarray, look: np.random.Generator, frame: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    gain = look.uniform(0.75, 1.25) * frame.uniform(0.97, 1.03)
    tint = look.uniform(0.9, 1.1, 3)
    out = img.astype(np.float32)
    out *= (gain * tint).astype(np.float32)
    out += (noise * np.float32(look.uniform(1.5, 5.0)))[..., None]
    return np.clip(out, 0, 255, out=out).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def labels_path(video: str | Path) -> Path:
    """The ground-truth sidecar of a video: ``belt.avi`` -> ``belt.labels.json``."""
    return Path(video).with_suffix(".labels.json")


def write_video(
    path: str | Path,
    count: int,
    *,
    fps: float = 10.0,
    width: int = 320,
    height: int = 240,
    seed: int = 1,
    frames_per_item: int = 1,
    p_empty: float = 0.2,
    p_defect: float = 0.35,
) -> list[str]:
    """Write ``count`` frames as an MJPG ``.avi`` and the labels sidecar; return the labels."""
    path = Path(path)
    sim = SceneSimulator(width, height, seed, p_empty=p_empty, p_defect=p_defect, frames_per_item=frames_per_item)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot open a video writer for {path}")
    labels = []
    try:
        for _, image, label in sim.frames(count):
            writer.write(image)
            labels.append(label)
    finally:
        writer.release()
    sidecar = {"labels": labels, "seed": seed, "fps": fps, "width": width, "height": height,
               "frames_per_item": frames_per_item, "source": "edgeloop.devices.scenes.SceneSimulator"}
    labels_path(path).write_text(json.dumps(sidecar) + "\n", encoding="utf-8")
    return labels


def read_labels(path: str | Path) -> list[str]:
    """Labels from a sidecar written by ``write_video`` (the sidecar path or the video path)."""
    path = Path(path)
    if path.suffix != ".json":
        path = labels_path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    labels = data["labels"] if isinstance(data, dict) else data
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise ValueError(f"{path}: labels must be a list of non-empty strings")
    return labels
