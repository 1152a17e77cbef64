"""A camera publisher: OpenCV capture (or synthetic scenes) -> JPEG -> ``frames/{device}/{camera}``.

Sources (``--source``):
  ``0``, ``1``, ...          a local camera by index (V4L2 on Linux)
  ``/dev/videoN``            a local camera by device path
  ``rtsp://...``, ``http://...``  a network camera or stream (OpenCV's FFmpeg backend)
  ``path/to/file.avi``       a video file; ``--loop`` starts it again at the end
  ``sim`` or ``sim:SEED``    rendered belt scenes (devices/scenes.py), with ground truth

Why it behaves as it does:
- Frames are live data. The publisher paces to ``--fps`` on an absolute
  schedule but never bursts to catch up: a late frame is skipped, not sent
  twice as fast. While the broker is unreachable, or the previous frame has
  not left the socket yet, the frame is dropped and counted instead of queued
  (newest wins here too, as on the edge).
- A camera or stream that goes away (read fails, unplugged, network camera
  restarts) is reopened with exponential backoff (0.5 s .. 10 s) until it is
  back or the publisher is stopped; a file ends (or loops).
- Metadata (capture ``ts``, ``seq``, optional ground-truth ``label``) travels
  as MQTT v5 user properties, or as the EFRM header in front of the JPEG with
  MQTT 3.1.1 (``--header`` forces the header on v5 too); see edgeloop/contract.py.
- Ground truth for a video file comes from its ``.labels.json`` sidecar
  (``--labels``; written by ``edgeloop.devices.scenes.write_video``), indexed by the
  frame's position in the file.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from edgeloop.mqtt import MqttLink, MqttSettings, PublishProperties
from edgeloop.contract import FrameMeta, check_level, encode_frame, frame_topic

log = logging.getLogger(__name__)

REOPEN_MIN_S = 0.5
REOPEN_MAX_S = 10.0


@dataclass
class CameraReport:
    """What a run did; ``summary()`` is what the CLI prints."""

    device: str
    camera: str
    source: str
    fps: float
    published: int = 0
    bytes: int = 0
    dropped_offline: int = 0
    dropped_backpressure: int = 0
    skipped_late: int = 0
    reopens: int = 0
    loops: int = 0
    read_failures: int = 0
    elapsed_s: float = 0.0
    labels: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        out = asdict(self)
        out["rate_fps"] = round(self.published / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0
        out["mean_frame_bytes"] = round(self.bytes / self.published) if self.published else 0
        return out


def parse_source(source: str) -> int | str:
    """``"0"`` -> camera index 0; anything else is passed to OpenCV as a path or URL."""
    return int(source) if source.isdigit() else source


def is_file_source(source: str) -> bool:
    return not source.isdigit() and "://" not in source and not source.startswith(("/dev/", "sim"))


class FrameSource:
    """``read() -> (frame, position)`` or None at the end; reopens live sources that fail."""

    def __init__(self, source: str, *, loop: bool = False, width: int | None = None, height: int | None = None,
                 stop: threading.Event | None = None, report: CameraReport | None = None) -> None:
        self.source = source
        self.loop = loop
        self.width = width
        self.height = height
        self.stop = stop or threading.Event()
        self.report = report or CameraReport("", "", source, 0.0)
        self.is_file = is_file_source(source)
        self.position = 0  # index of the next frame within the file (ground-truth lookup)
        self.sim = None
        if source.startswith("sim"):
            from edgeloop.devices.scenes import SceneSimulator

            seed = int(source.split(":", 1)[1]) if ":" in source else 1
            self.sim = SceneSimulator(width or 320, height or 240, seed=seed, frames_per_item=4)
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> bool:
        if self.sim is not None:
            return True
        if self.is_file and not Path(self.source).is_file():
            raise FileNotFoundError(f"video file {self.source} not found")
        cap = cv2.VideoCapture(parse_source(self.source))
        if not cap.isOpened():
            cap.release()
            return False
        if not self.is_file and self.width and self.height:  # ask a camera for its native mode near this size
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        self.cap = cap
        return True

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def label(self, index: int) -> str | None:
        return self.sim.label(index) if self.sim is not None else None

    def read(self) -> tuple[np.ndarray, int] | None:
        if self.sim is not None:
            image, _ = self.sim.render(self.position)
            self.position += 1
            return image, self.position - 1
        delay = REOPEN_MIN_S
        while not self.stop.is_set():
            if self.cap is None and not self.open():
                if self.is_file:
                    raise OSError(f"OpenCV cannot open video file {self.source}")
                self.report.reopens += 1
                log.warning("camera %s unavailable; retrying in %.1fs", self.source, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, REOPEN_MAX_S)
                continue
            ok, frame = self.cap.read()
            if ok and frame is not None:
                self.position += 1
                return frame, self.position - 1
            if self.is_file:
                if not self.loop or self.position == 0:
                    return None  # the end (or an unreadable file)
                self.report.loops += 1
                self.close()
                self.position = 0
                continue
            self.report.read_failures += 1  # a live source went away: reopen it
            log.warning("camera %s stopped delivering frames; reopening", self.source)
            self.close()
        return None


def load_labels(path: str | Path | None) -> list[str] | None:
    if path is None:
        return None
    from edgeloop.devices.scenes import read_labels

    return read_labels(path)


def run_camera(
    *,
    broker_url: str,
    device: str,
    camera: str = "cam",
    source: str = "sim",
    fps: float = 10.0,
    width: int | None = None,
    height: int | None = None,
    jpeg_quality: int = 85,
    loop: bool = False,
    count: int | None = None,
    duration_s: float | None = None,
    protocol: str = "5",
    header: bool = False,
    labels_file: str | Path | None = None,
    qos: int = 0,
    stop: threading.Event | None = None,
    connect_timeout_s: float = 10.0,
) -> CameraReport:
    """Capture, encode and publish until the source ends, ``count`` frames, ``duration_s`` or ``stop``."""
    topic = frame_topic(check_level(device, "device"), check_level(camera, "camera"))
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("jpeg_quality must be 1..100")
    if fps < 0:
        raise ValueError("fps must be >= 0 (0: as fast as possible)")
    stop = stop or threading.Event()
    report = CameraReport(device, camera, source, fps)
    truth = load_labels(labels_file)
    frames = FrameSource(source, loop=loop, width=width, height=height, stop=stop, report=report)
    if frames.is_file and not frames.open():  # a missing or unreadable file is an error now, not a retry loop
        raise OSError(f"OpenCV cannot open video file {source}")
    use_header = header or protocol == "3.1.1"
    link = MqttLink(MqttSettings(url=broker_url, protocol=protocol), client_id=f"edgeloop-camera-{device}-{camera}")
    link.start(wait_s=connect_timeout_s)
    encode = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    interval = 1.0 / fps if fps > 0 else 0.0
    started = time.monotonic()
    next_at = started
    last_info = None
    seq = 0
    try:
        while not stop.is_set():
            if count is not None and report.published + _dropped(report) >= count:
                break
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            got = frames.read()
            if got is None:
                break
            image, position = got
            ts = time.time()
            if interval:
                now = time.monotonic()
                if now < next_at:
                    stop.wait(next_at - now)
                    ts = time.time()
                elif now - next_at > interval:  # late by a whole frame: skip ahead, never burst
                    report.skipped_late += int((now - next_at) / interval)
                    next_at = now
                next_at += interval
            if width and height and (image.shape[1], image.shape[0]) != (width, height):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            label = truth[position % len(truth)] if truth else frames.label(position)
            meta = FrameMeta(ts=ts, seq=seq, label=label)
            seq += 1
            if not link.connected.is_set():
                report.dropped_offline += 1
                continue
            if last_info is not None and qos == 0 and not last_info.is_published() and last_info.error is None:
                report.dropped_backpressure += 1  # the previous frame is still in the socket buffer
                continue
            ok, buf = cv2.imencode(".jpg", image, encode)
            if not ok:
                report.read_failures += 1
                continue
            payload = encode_frame(meta, buf.tobytes(), header=use_header)
            props = None if use_header else PublishProperties(user_properties=tuple(meta.user_properties()))
            last_info = link.publish(topic, payload, qos=qos, properties=props)
            report.published += 1
            report.bytes += len(payload)
            if label is not None:
                report.labels[label] = report.labels.get(label, 0) + 1
        if last_info is not None:
            last_info.wait(5.0)
    finally:
        report.elapsed_s = round(time.monotonic() - started, 3)
        frames.close()
        link.stop()
    return report


def _dropped(report: CameraReport) -> int:
    """Frames that were captured and stamped with a seq but not sent (they count towards ``count``)."""
    return report.dropped_offline + report.dropped_backpressure
