"""Frames in, results out, no threads and no network: the camera counterpart of edgeloop.edge.engine.

``process(frames)`` validates each frame (topic, metadata, JPEG header),
runs the camera's image stages, batches the rows of each camera's model into
one interpreter call (at most ``max_batch`` rows) and returns the messages to
publish: one InferenceResult per frame (plus FrameSamples when enabled). A
bad frame is rejected (counted, logged rate-limited, dead-lettered) and
never stops the batch. The frame worker, the benchmarks and the unit tests
all drive this same object.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError

from edgeloop.errors import ConfigError, ModelError, PayloadError
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.rejects import Rejects
from edgeloop.contract import (
    ContractError,
    FrameMeta,
    InferenceResult,
    ModelRef,
    TopK,
    decode_frame,
    parse_frame_topic,
    result_topic,
)
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.stages import PipelineError
from edgeloop.edge.vision.config import CameraSettings, VisionSettings
from edgeloop.edge.vision.pipeline import ImagePipeline, build_image_pipeline
from edgeloop.edge.vision.samples import FrameSampler
from edgeloop.edge.vision.slots import PendingFrame

log = logging.getLogger("edgeloop.vision")


@dataclass
class CameraRunner:
    """One camera name: its stages, its model, and what it keeps as samples."""

    settings: CameraSettings
    model: TfliteModel
    pipeline: ImagePipeline
    sampler: FrameSampler | None = None

    @classmethod
    def build(cls, settings: CameraSettings, max_batch: int) -> CameraRunner:
        model = TfliteModel(settings.model.path, num_threads=settings.model.num_threads, max_batch=max_batch)
        pipeline = build_image_pipeline(settings.stages, model)
        sampler = FrameSampler(settings.samples, model.threshold) if settings.samples.enabled else None
        return cls(settings, model, pipeline, sampler)


@dataclass
class _Row:
    device: str
    camera: str
    meta: FrameMeta
    jpeg: bytes
    received: float


class VisionEngine:
    def __init__(
        self, runners: list[CameraRunner], rejects: Rejects, *, node_id: str, site: str | None = None,
        max_frame_bytes: int = 2 * 1024 * 1024, max_batch: int = 16, max_age_ms: float | None = None,
    ) -> None:
        self.runners = {r.settings.camera: r for r in runners}
        self.rejects = rejects
        self.node_id = node_id
        self.site = site
        self.max_frame_bytes = max_frame_bytes
        self.max_batch = max_batch
        self.max_age_s = max_age_ms / 1000.0 if max_age_ms else None
        self.counters: Counter[str] = Counter()
        self._log = RateLimitedLog(log)

    @classmethod
    def build(cls, settings: VisionSettings, rejects: Rejects, *, node_id: str, site: str | None = None,
              source: str = "edge config") -> VisionEngine:
        """Load every camera's model and check its stages against it, before any I/O.

        A model that cannot load raises ModelError; stages that do not fit it
        raise ConfigError naming ``vision.cameras.N.stages[i]``.
        """
        runners = []
        for index, camera in enumerate(settings.cameras):
            try:
                runners.append(CameraRunner.build(camera, settings.max_batch))
            except PipelineError as exc:
                raise ConfigError(source, [f"vision.cameras.{index}.{exc}"]) from None
        return cls(runners, rejects, node_id=node_id, site=site, max_frame_bytes=settings.max_frame_bytes,
                   max_batch=settings.max_batch, max_age_ms=settings.max_age_ms)

    def models(self) -> dict[str, ModelRef]:
        return {r.model.name: ModelRef(version=r.model.version, sha256=r.model.sha256) for r in self.runners.values()}

    def process(self, frames: list[PendingFrame]) -> list[tuple[str, bytes]]:
        """Classify ``frames`` (at most one per stream); return the messages to publish."""
        groups: dict[str, tuple[list[_Row], list[np.ndarray]]] = {}
        for frame in frames:
            self.counters["frames_in"] += 1
            try:
                device, camera = parse_frame_topic(frame.topic)
                runner = self.runners.get(camera)
                if runner is None:
                    raise PayloadError("no_pipeline", f"no camera pipeline for {camera!r}")
                meta, jpeg = decode_frame(frame.payload, frame.properties, self.max_frame_bytes)
                if self.max_age_s is not None and time.time() - meta.ts > self.max_age_s:
                    self.counters["frames_dropped_expired"] += 1  # not bad input: late, like a stale frame
                    continue
                row = runner.pipeline.process(jpeg)
            except (ContractError, PayloadError) as exc:
                self.rejects.reject(frame.topic, frame.payload, exc.reason, str(exc))
                continue
            rows, arrays = groups.setdefault(camera, ([], []))
            rows.append(_Row(device, camera, meta, jpeg, frame.received))
            arrays.append(row)
        messages: list[tuple[str, bytes]] = []
        for camera, (rows, arrays) in groups.items():
            runner = self.runners[camera]
            for start in range(0, len(rows), self.max_batch):
                chunk = slice(start, start + self.max_batch)
                messages += self._infer(runner, rows[chunk], np.stack(arrays[chunk]))
        return messages

    def _infer(self, runner: CameraRunner, rows: list[_Row], batch: np.ndarray) -> list[tuple[str, bytes]]:
        model = runner.model
        try:
            outputs = model.run(batch)
        except ModelError as exc:
            self.counters["inference_errors"] += 1
            self._log.warning("inference_error", "camera %s: %s", runner.settings.camera, exc)
            return []
        done = time.monotonic()
        self.counters["frame_batches"] += 1
        classify = model.metadata.task == "classification"
        labels = model.labels
        anomaly_labels = set(model.metadata.anomaly_labels)
        k = min(runner.settings.top_k, len(labels))
        messages = []
        for row, out in zip(rows, outputs):
            topk = None
            if classify:
                order = np.argsort(-out, kind="stable")[:k]
                best = int(order[0])
                label, score = labels[best], float(out[best])
                anomaly = label in anomaly_labels
                topk = [TopK(label=labels[i], score=float(out[i])) for i in order]
            else:
                score = float(out[model.score_output])
                anomaly = score > model.threshold
                label = labels[1] if anomaly else labels[0]
            try:
                result = InferenceResult(
                    device=row.device,
                    sensor=row.camera,
                    model=model.name,
                    model_version=model.version,
                    model_sha256=model.sha256,
                    ts=row.meta.ts,
                    seq=row.meta.seq,
                    outputs=out.tolist(),
                    score=score,
                    anomaly=anomaly,
                    label=label,
                    latency_ms=(done - row.received) * 1000.0,
                    node=self.node_id,
                    site=self.site,
                    topk=topk,
                )
            except ValidationError as exc:  # e.g. NaN from a broken model
                self.counters["invalid_outputs"] += 1
                self._log.warning("invalid_output", "model %s: invalid result: %s", model.name, exc.errors()[0]["msg"])
                continue
            self.counters["frames_classified"] += 1
            messages.append((result_topic(row.device, model.name), result.model_dump_json(exclude_none=True).encode()))
            if runner.sampler is not None:
                sample = runner.sampler.consider(result, row.meta, row.jpeg)
                if sample is not None:
                    messages.append(sample)
        return messages

    def all_counters(self) -> dict[str, int]:
        out = dict(self.counters)
        for runner in self.runners.values():
            if runner.sampler is not None:
                for key, value in runner.sampler.counters.items():
                    out[key] = out.get(key, 0) + value
        return out
