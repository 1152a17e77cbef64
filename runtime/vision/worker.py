"""The frame worker: newest-wins slots filled by the MQTT thread, drained by a thread of its own.

The edge app calls four things: ``subscriptions()`` when it builds its MQTT
link, ``offer(msg)`` from paho's network thread for every ``frames/...``
message, ``start()`` and ``stop()``. Everything else -- back-pressure,
batching, decoding, inference, samples -- stays here, so the sensor path and
its FIFO queue never see a frame, and a burst of frames can never delay a
sensor reading behind megabytes of JPEG.

Delivery: frames are at-most-once by design. A frame is acknowledged on
receipt (``vision.qos`` 1 only protects the hop from the camera to the
broker); after a restart the next frame is worth more than a stale one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeloop.rejects import Rejects
from edgeloop.edge.vision.config import VisionSettings
from edgeloop.edge.vision.engine import VisionEngine
from edgeloop.edge.vision.slots import LatestFrames, PendingFrame

if TYPE_CHECKING:
    from edgeloop.mqtt import Message

log = logging.getLogger("edgeloop.vision")

Publish = Callable[[list[tuple[str, bytes]]], None]


def user_properties(msg: Message) -> list[tuple[str, str]] | None:
    return list(msg.user_properties) or None


class FrameWorker:
    def __init__(self, settings: VisionSettings, engine: VisionEngine, publish: Publish, rejects: Rejects) -> None:
        self.settings = settings
        self.engine = engine
        self.publish = publish
        self.rejects = rejects
        self.slots = LatestFrames(settings.max_streams)
        self.dropped_oversized = 0
        self._thread = threading.Thread(target=self._run, name="edgeloop-frames", daemon=True)

    def subscriptions(self) -> list[tuple[str, int]]:
        return [(c.subscription, self.settings.qos) for c in self.settings.cameras]

    # ------------------------------------------------------------ network thread

    def offer(self, msg: Message) -> None:
        """Put a frame in its stream's slot (overwriting an older one); refuse oversized frames here."""
        payload = msg.payload
        if len(payload) > self.settings.max_frame_bytes:
            self.dropped_oversized += 1
            self.rejects.reject(
                msg.topic, payload, "oversized", f"frame of {len(payload)} bytes exceeds {self.settings.max_frame_bytes}"
            )
            return
        self.slots.put(PendingFrame(msg.topic, payload, user_properties(msg), time.monotonic()))

    # ------------------------------------------------------------ worker thread

    def _run(self) -> None:
        while True:
            frames = self.slots.take(timeout=0.5, limit=self.settings.max_batch)  # one batch, then publish
            if frames:
                try:
                    messages = self.engine.process(frames)
                except Exception:  # a bug costs one batch, never the worker
                    log.exception("frame batch failed")
                    self.engine.counters["batch_failures"] += 1
                    continue
                if messages:
                    self.publish(messages)
            elif self.slots.closed:
                return

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.settings.opencv_threads:
            import cv2

            cv2.setNumThreads(self.settings.opencv_threads)  # process-wide; only the frame path uses OpenCV
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Refuse new frames, classify and publish the ones waiting, stop. True if the thread ended."""
        self.slots.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def counters(self) -> dict[str, int]:
        out = self.engine.all_counters()
        out["frames_received"] = self.slots.received
        out["frames_dropped_stale"] = self.slots.dropped_stale
        out["frames_dropped_streams"] = self.slots.dropped_streams
        out["frames_dropped_oversized"] = self.dropped_oversized
        out["frames_waiting"] = len(self.slots)
        return out
