"""Low-confidence frames sent home as training samples, downscaled and within a budget.

Why: the frames a model is unsure about are the ones worth labelling, and a
camera link cannot carry every frame. A frame qualifies when its top-1
probability is below the bar; at most ``max_per_hour`` frames per (device,
camera) in any rolling hour are sent (a sliding log of send times: a hard
cap, not an average); the rest are dropped and counted. The kept frame is
decoded again at reduced scale (libjpeg's DCT scaling), shrunk to at most
``max_width`` pixels wide and re-encoded, so a sample costs a few kilobytes.
"""

from __future__ import annotations

import base64
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

from edgeloop.contract import MAX_FRAME_SAMPLE_BYTES, FrameMeta, FrameSample, InferenceResult, sample_topic
from edgeloop.edge.vision.config import FrameSampleSettings
from edgeloop.edge.vision.opencv import load_cv2

cv2 = load_cv2()

HOUR_S = 3600.0
MAX_TRACKED_STREAMS = 10_000  # (device, camera) budgets kept; see FrameSampler._forget_quiet


class FrameSampler:
    def __init__(self, settings: FrameSampleSettings, threshold: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.below = settings.below_score if settings.below_score is not None else threshold
        self._clock = clock
        self._sent: dict[tuple[str, str], deque[float]] = {}
        self.counters: Counter[str] = Counter()

    def consider(self, result: InferenceResult, meta: FrameMeta, jpeg: bytes) -> tuple[str, bytes] | None:
        """The sample message for this frame, or None (confident, over budget, or not encodable)."""
        if result.score >= self.below:
            return None
        self.counters["frame_samples_candidates"] += 1
        key = (result.device, result.sensor)
        now = self._clock()
        log = self._sent.get(key)
        if log is None:
            if len(self._sent) >= MAX_TRACKED_STREAMS:
                self._forget_quiet(now)
            log = self._sent[key] = deque()
        while log and log[0] <= now - HOUR_S:
            log.popleft()
        if len(log) >= self.settings.max_per_hour:
            self.counters["frame_samples_dropped_budget"] += 1
            return None
        small = self._shrink(jpeg)
        if small is None:
            self.counters["frame_samples_failed"] += 1
            return None
        data, width, height = small
        log.append(now)
        sample = FrameSample(
            device=result.device,
            sensor=result.sensor,
            model=result.model,
            model_version=result.model_version,
            model_sha256=result.model_sha256,
            ts=result.ts,
            seq=result.seq,
            label=result.label,
            score=result.score,
            topk=result.topk,
            truth=meta.label,
            width=width,
            height=height,
            jpeg_b64=base64.b64encode(data).decode("ascii"),
            node=result.node,
            site=result.site,
        )
        self.counters["frame_samples_sent"] += 1
        return sample_topic(result.device, result.model), sample.model_dump_json(exclude_none=True).encode()

    def _forget_quiet(self, now: float) -> None:
        """Bounded memory whatever device ids peers invent: drop streams with nothing sent in the
        last hour; if that is not enough, the half that sent least recently (their budget restarts)."""
        for key in [k for k, log in self._sent.items() if not log or log[-1] <= now - HOUR_S]:
            del self._sent[key]
        if len(self._sent) >= MAX_TRACKED_STREAMS:
            by_age = sorted(self._sent, key=lambda k: self._sent[k][-1])
            for key in by_age[: len(by_age) // 2]:
                del self._sent[key]

    def _shrink(self, jpeg: bytes) -> tuple[bytes, int, int] | None:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
        if image is None:
            return None
        h, w = image.shape[:2]
        if w > self.settings.max_width:
            h = max(1, round(h * self.settings.max_width / w))
            w = self.settings.max_width
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok or len(buf) > MAX_FRAME_SAMPLE_BYTES:
            return None
        return buf.tobytes(), w, h
