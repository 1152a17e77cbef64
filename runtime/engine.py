"""The edge's processing core: readings in, results out, no network.

Why separate from the MQTT app: the same core runs in the app's worker
thread, in benchmarks and in unit tests, and it never blocks on I/O.

    ingest(topic, payload)  decode + validate (contract) -> sample stages -> window
    flush()                 batch stages over all pending windows -> one
                            interpreter call per model -> InferenceResult messages
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pydantic_core
from pydantic import ValidationError

from edgeloop.errors import PayloadError
from edgeloop.rejects import Rejects
from edgeloop.edge.config import PipelineSettings
from edgeloop.contract import (
    ContractError,
    InferenceResult,
    MAX_FEATURES,
    MAX_OUTPUTS,
    MAX_TIMESTAMP,
    SCHEMA_VERSION,
    ModelRef,
    SampleRow,
    decode_reading,
    is_level,
    parse_sensor_topic,
    result_topic,
)
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.sampling import Sampler, encode_batches
from edgeloop.edge.stages import Pipeline, StreamKey, Window, build_pipeline

log = logging.getLogger(__name__)

#: Raw features beyond this magnitude are invalid input: a float32 model squares its inputs, and
#: (1e15)^2 times a few hundred features still fits float32 (3.4e38); 3e38 readings do not.
MAX_ABS_INPUT = 1e15


def valid_inputs(raw: np.ndarray) -> np.ndarray:
    """Per row: every raw feature finite and within +-MAX_ABS_INPUT."""
    flat = raw.reshape(len(raw), -1)
    if flat.dtype.kind in "iub":  # quantized image rows: always in range
        return np.ones(len(raw), dtype=bool)
    with np.errstate(invalid="ignore"):
        return (np.abs(flat) <= MAX_ABS_INPUT).all(axis=1)  # NaN compares False, inf is > the bound


@dataclass
class _Pending:
    window: Window
    received: float  # time.monotonic() when the completing reading arrived


@dataclass
class PipelineRunner:
    """One sensor type: its pipeline, its model and the windows waiting for inference."""

    settings: PipelineSettings
    model: TfliteModel
    pipeline: Pipeline
    pending: list[_Pending] = field(default_factory=list)
    last_seq: dict[StreamKey, int] = field(default_factory=dict)
    #: ``time.monotonic()`` of each live stream's last accepted reading: idle streams expire.
    last_seen: dict[StreamKey, float] = field(default_factory=dict)
    #: Running totals for this runner's model (windows, anomalies, invalid, invalid_input,
    #: latency_s); the model manager reads them to judge a freshly deployed model.
    tally: Counter[str] = field(default_factory=Counter)
    #: While this runner's model is on probation: ``shadow(windows, scores, produced)`` after each
    #: batch (edgeloop.edge.probation.ShadowRun scores the same windows with the proven model).
    shadow: Callable[[list[Window], np.ndarray, list[bool]], None] | None = None

    @classmethod
    def build(cls, settings: PipelineSettings, model: TfliteModel) -> "PipelineRunner":
        """Build the stages against this model; a shape mismatch raises ModelError here, at startup."""
        pipeline = build_pipeline(settings.stages, settings.in_channels, model_stats=model.normalization)
        model.check_pipeline_shape(pipeline.output_shape)
        return cls(settings, model, pipeline)


class Engine:
    """Turns sensor messages into inference results, micro-batched across devices."""

    def __init__(
        self,
        runners: list[PipelineRunner],
        rejects: Rejects,
        *,
        node_id: str,
        site: str | None = None,
        max_payload_bytes: int = 256 * 1024,
        batch_results: bool = False,
        sampler: Sampler | None = None,
    ) -> None:
        self.runners = {r.settings.sensor: r for r in runners}
        self.rejects = rejects
        self.node_id = node_id
        self.site = site
        self.max_payload_bytes = max_payload_bytes
        self.batch_results = batch_results
        #: Keeps a fraction of windows (+ flagged ones) as SampleBatch messages for retraining.
        self.sampler = sampler
        self.counters: Counter[str] = Counter()
        self.oldest_pending: float | None = None
        #: ``on_batch(model, batch_size, interpreter_s, latencies_s)`` after each interpreter
        #: call; set by edgeloop.edge.metrics when metrics are on, None (free) otherwise.
        self.on_batch: Callable[[str, int, float, list[float]], None] | None = None

    @property
    def pending(self) -> int:
        return sum(len(r.pending) for r in self.runners.values())

    def models(self) -> dict[str, ModelRef]:
        return {r.model.name: ModelRef(version=r.model.version, sha256=r.model.sha256) for r in self.runners.values()}

    # ------------------------------------------------------------------ ingest

    def ingest(self, topic: str, payload: bytes, received: float) -> int:
        """Validate one reading and feed it to its stream's window. Never raises for bad input.

        Returns the number of samples taken into the window (0: rejected or a repeated seq),
        which tells the app how long the reading is still needed (runtime/inputacks.py).
        """
        self.counters["readings_in"] += 1
        try:
            device, sensor = parse_sensor_topic(topic)
            runner = self.runners.get(sensor)
            if runner is None:
                raise PayloadError("no_pipeline", f"no pipeline for sensor {sensor!r}")
            reading = decode_reading(payload, self.max_payload_bytes)
            samples = np.asarray(reading.values, dtype=np.float32)
            if samples.ndim == 1:
                samples = samples.reshape(1, -1)
            if not np.isfinite(samples).all():  # finite as JSON, yet beyond float32 (|x| > 3.4e38)
                raise PayloadError("non_finite", "a value is too large for float32")
            if samples.shape[1] != runner.pipeline.in_channels:
                raise PayloadError(
                    "wrong_shape", f"reading has {samples.shape[1]} channels, pipeline expects {runner.pipeline.in_channels}"
                )
            key = (device, sensor)
            if key not in runner.last_seq and len(runner.last_seq) >= runner.settings.max_streams:
                raise PayloadError(
                    "too_many_streams", f"pipeline {sensor!r} already keeps {runner.settings.max_streams} live streams (max_streams)"
                )
            if not self._in_sequence(runner, key, reading.seq):
                return 0
            runner.last_seen[key] = received
            windows = runner.pipeline.push(key, samples, reading.ts, reading.rate_hz, reading.seq)
        except (ContractError, PayloadError) as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return 0
        if windows:
            if self.oldest_pending is None:
                self.oldest_pending = received
            runner.pending.extend(_Pending(w, received) for w in windows)
        return int(samples.shape[0])

    def _in_sequence(self, runner: PipelineRunner, key: StreamKey, seq: int) -> bool:
        """Windows must be cut from contiguous samples.

        A repeated or older ``seq`` (QoS 1 redelivery) is skipped; ``seq`` 0
        after a higher one means the device restarted, and a gap means lost
        readings: both start the stream's window afresh.
        """
        last = runner.last_seq.get(key)
        if last is not None:
            if seq == 0 and last > 0:
                self.counters["stream_restarts"] += 1
                runner.pipeline.reset(key)
            elif seq <= last:
                self.counters["stale_readings"] += 1
                return False
            elif seq > last + 1:
                self.counters["sequence_gaps"] += 1
                runner.pipeline.reset(key)
        runner.last_seq[key] = seq
        return True

    @property
    def live_streams(self) -> int:
        return sum(len(r.last_seq) for r in self.runners.values())

    def expire_idle(self, now: float) -> int:
        """Forget the window state of streams with no reading for ``stream_idle_s``; return how many.

        Why: a device id is whatever a peer puts in a topic, so without expiry
        100k made-up ids would keep 100k window buffers for the life of the process.
        """
        expired = 0
        for runner in self.runners.values():
            cutoff = now - runner.settings.stream_idle_s
            idle = [key for key, seen in runner.last_seen.items() if seen < cutoff]
            for key in idle:
                del runner.last_seen[key]
                runner.last_seq.pop(key, None)
                runner.pipeline.reset(key)
            expired += len(idle)
        if expired:
            self.counters["streams_expired"] += expired
        return expired

    # ------------------------------------------------------------------- flush

    def flush(self) -> list[tuple[str, bytes]]:
        """Run every pending window through its batch stages and model; return messages to publish."""
        messages: list[tuple[str, bytes]] = []
        for runner in self.runners.values():
            if runner.pending:
                pending, runner.pending = runner.pending, []
                messages += self._infer(runner, pending)
        self.oldest_pending = None
        return messages

    def _infer(self, runner: PipelineRunner, pending: list[_Pending]) -> list[tuple[str, bytes]]:
        model = runner.model
        features, raw = runner.pipeline.transform_with_raw([p.window.data for p in pending])
        valid = valid_inputs(raw)
        if not valid.all():
            self._reject_inputs(runner, [p for p, ok in zip(pending, valid) if not ok])
            pending = [p for p, ok in zip(pending, valid) if ok]
            features, raw = features[valid], raw[valid]
            if not pending:
                return []
        started = time.perf_counter()
        outputs = model.run(features)
        scores = outputs[:, model.score_output]
        done = time.monotonic()
        if self.on_batch is not None:
            self.on_batch(model.name, len(pending), time.perf_counter() - started, [done - p.received for p in pending])
        encoded: list[tuple[str, bytes]] = []
        produced: list[bool] = []
        anomalies = 0
        # Per batch, not per result (issue 12): outputs are checked for finiteness at once, and a row
        # that passes every check _plain_row makes is encoded from a dict. The model's fixed fields
        # (name, version, sha256, labels, node, site) are proven by one InferenceResult per batch;
        # any row in doubt goes through InferenceResult as before (same result, same reject).
        finite = np.isfinite(outputs).all(axis=1) if outputs.shape[1] <= MAX_OUTPUTS else np.zeros(len(pending), bool)
        proven: bool | None = None
        name, version, sha, labels, threshold = model.name, model.version, model.sha256, model.labels, model.threshold
        for item, out, score, ok in zip(pending, outputs.tolist(), scores.tolist(), finite.tolist()):
            device, sensor = item.window.key
            anomaly = score > threshold
            fields = {
                "v": SCHEMA_VERSION, "device": device, "sensor": sensor, "model": name, "model_version": version,
                "model_sha256": sha, "ts": item.window.ts_end, "seq": item.window.seq, "outputs": out,
                "score": score, "anomaly": anomaly, "label": labels[1] if anomaly else labels[0],
                "latency_ms": (done - item.received) * 1000.0, "node": self.node_id, "site": self.site,
            }
            try:
                if ok and _plain_row(fields):
                    if proven is None:
                        InferenceResult(**fields)  # raises ValidationError like the slow path would
                        proven = True
                    payload = _to_json({k: v for k, v in fields.items() if v is not None})
                else:
                    payload = InferenceResult(**fields).model_dump_json(exclude_none=True).encode()
            except ValidationError as exc:  # e.g. a NaN score from a broken model or extreme inputs
                self.counters["invalid_outputs"] += 1
                self.rejects.reject(
                    f"sensors/{device}/{sensor}",
                    b"",
                    "invalid_output",
                    f"model {model.name} gave an invalid result for the window ending at seq {item.window.seq}: "
                    f"{exc.errors()[0]['msg']}",
                )
                produced.append(False)
                continue
            encoded.append((result_topic(device, name), payload))
            produced.append(True)
            anomalies += anomaly
        self.counters["windows"] += len(pending)
        self.counters["results_out"] += len(encoded)
        tally = runner.tally
        tally["windows"] += len(pending)
        tally["anomalies"] += anomalies
        tally["invalid"] += len(pending) - len(encoded)
        tally["latency_s"] += sum(done - p.received for p in pending)
        self.counters["batches"] += 1
        messages = self._encode(encoded)
        if self.sampler is not None:
            messages += self._samples(model, pending, raw, scores)
        if runner.shadow is not None:
            runner.shadow([p.window for p in pending], scores, produced)
        return messages

    def _reject_inputs(self, runner: PipelineRunner, bad: list[_Pending]) -> None:
        """Windows whose raw features are not finite or absurd: the input's fault, never the model's."""
        self.counters["invalid_inputs"] += len(bad)
        runner.tally["invalid_input"] += len(bad)
        for item in bad:
            device, sensor = item.window.key
            self.rejects.reject(
                f"sensors/{device}/{sensor}", b"", "invalid_input",
                f"the window ending at seq {item.window.seq} has features that are not finite or beyond "
                f"+-{MAX_ABS_INPUT:g} (e.g. readings near the float32 limit); not scored",
            )

    def _samples(self, model: TfliteModel, pending: list[_Pending], raw: np.ndarray, scores: np.ndarray) -> list[tuple[str, bytes]]:
        """SampleBatch messages for the windows the sampler keeps (raw features, before normalize)."""
        if raw.ndim != 2 or raw.shape[1] > MAX_FEATURES:  # e.g. image tensors: not sampled
            return []
        choose, threshold, kept = self.sampler.choose, model.threshold, []
        finite = np.isfinite(raw).all(axis=1) & np.isfinite(scores)
        for i, (item, score) in enumerate(zip(pending, scores.tolist())):
            device, sensor = item.window.key
            reason = choose(device, score > threshold) if finite[i] else None
            if reason is not None:
                row = SampleRow(ts=item.window.ts_end, seq=item.window.seq, features=raw[i].tolist(),
                                score=score, anomaly=score > threshold, reason=reason)
                kept.append((device, sensor, row))
        if not kept:
            return []
        self.counters["samples_out"] += len(kept)
        return encode_batches(kept, model=model.name, model_version=model.version, model_sha256=model.sha256,
                              node=self.node_id, site=self.site)

    def _encode(self, encoded: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """One message per result, or (``output.batch_results``) one JSON array per topic."""
        if not self.batch_results:
            return encoded
        grouped: dict[str, list[bytes]] = {}
        for topic, payload in encoded:
            grouped.setdefault(topic, []).append(payload)
        return [(topic, b"[" + b",".join(group) + b"]") for topic, group in grouped.items()]


_to_json = pydantic_core.to_json
_SEQ_LIMIT = 2**63


def _plain_row(fields: dict) -> bool:
    """The per-window fields of a result that are plainly valid (outputs' finiteness is checked per batch).

    False means "let InferenceResult decide", never "invalid".
    """
    ts, seq, latency = fields["ts"], fields["seq"], fields["latency_ms"]
    return (type(ts) is float and 0.0 < ts < MAX_TIMESTAMP and type(seq) is int and 0 <= seq < _SEQ_LIMIT
            and type(latency) is float and 0.0 <= latency < float("inf") and type(fields["score"]) is float
            and is_level(fields["device"]) and is_level(fields["sensor"]))
