"""The edge's processing core: readings in, results out, no network.

Why separate from the MQTT app: the same core runs in the app's worker
thread, in benchmarks and in unit tests, and it never blocks on I/O.

    ingest(topic, payload)  route by topic template -> the pipeline's codec -> per reading:
                            validate -> sample stages -> window
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
    MAX_CHANNELS,
    MAX_FEATURES,
    MAX_OUTPUTS,
    MAX_SAMPLES_PER_READING,
    MAX_TIMESTAMP,
    MAX_TOPIC_BYTES,
    SCHEMA_VERSION,
    ModelRef,
    SampleRow,
    TOPIC_LEVEL_PATTERN,
    is_level,
    result_topic,
)
from edgeloop.edge.ingest.codec import Codec, Decoded, Reading, RejectWithReplies
from edgeloop.edge.ingest.edgeloop_codec import EdgeloopCodec
from edgeloop.edge.ingest.topics import IDENTITY, MAX_TAGS, RESERVED_NAMES, Router
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
    #: (site, extra tags) of streams whose topic template or codec binds them; most streams have none.
    stream_tags: dict[StreamKey, tuple[str | None, dict[str, str] | None]] = field(default_factory=dict)
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
        #: Topic -> pipeline: each pipeline's template (config validation keeps them disjoint) and codec.
        self.router = Router([r.settings.template for r in runners])
        self.routes: list[tuple[str, Codec]] = [(r.settings.sensor, r.settings.source.build()) for r in runners]
        self.rejects = rejects
        self.node_id = node_id
        self.site = site
        self.max_payload_bytes = max_payload_bytes
        self.batch_results = batch_results
        #: Keeps a fraction of windows (+ flagged ones) as SampleBatch messages for retraining.
        self.sampler = sampler
        self.counters: Counter[str] = Counter()
        #: Model identities whose fixed result fields one InferenceResult has validated (see _infer).
        self._proven: set[tuple] = set()
        self.oldest_pending: float | None = None
        #: Messages codecs answer with (a Sparkplug rebirth request); the app publishes them at QoS 0.
        self.replies: list[tuple[str, bytes]] = []
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
        """Decode one message and feed its readings to their streams' windows. Never raises for bad input.

        Returns the samples taken into a window -- with several readings in one message, the
        fewest any accepted reading gave (0: all rejected or repeated) -- which tells the app how
        long the message is still needed (runtime/inputacks.py); ``received`` is ``time.monotonic()``.
        """
        self.counters["readings_in"] += 1
        try:
            routed = self.router.route(topic)
            if routed is None:
                if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
                    raise PayloadError("bad_topic", f"topic longer than {MAX_TOPIC_BYTES} bytes")
                raise PayloadError("no_pipeline", f"no pipeline's input.topic matches {topic[:80]!r}")
            index, fields = routed
            device = fields.get(IDENTITY)
            if device is not None and not is_level(device):
                raise PayloadError("bad_topic", f"device {device[:80]!r} (from the topic) must match {TOPIC_LEVEL_PATTERN} "
                                   "(1-64 chars, no '/', '+', '#', or leading '$')")
            if len(payload) > self.max_payload_bytes:
                raise PayloadError("oversized", f"payload of {len(payload)} bytes exceeds {self.max_payload_bytes}")
            sensor, codec = self.routes[index]
            runner = self.runners[sensor]
            if type(codec) is EdgeloopCodec and len(fields) == 1:  # the default: no Reading/Decoded objects
                samples, ts, seq, rate_hz = codec.samples(payload)
                return self._push(runner, topic, payload, (device, runner.settings.sensor), None, None,
                                  samples, ts, seq, rate_hz, received)
            try:
                decoded = codec.decode(topic, fields, payload, time.time())
            except (ContractError, PayloadError):
                raise
            except Exception as exc:  # noqa: BLE001 -- a codec bug must cost one message, not the worker
                raise PayloadError("codec_error", f"codec {codec.name} failed: {type(exc).__name__}") from None
        except (ContractError, PayloadError) as exc:
            if isinstance(exc, RejectWithReplies):  # refused, yet answered (a Sparkplug rebirth request)
                self.replies.extend(exc.replies)
                self.counters["replies_out"] += len(exc.replies)
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return 0
        return self._apply(runner, topic, payload, fields, decoded, received)

    def _apply(self, runner: PipelineRunner, topic: str, payload: bytes, fields: dict[str, str], decoded: Decoded,
               received: float) -> int:
        if decoded.replies:
            self.replies.extend(decoded.replies)
            self.counters["replies_out"] += len(decoded.replies)
        for device in decoded.ended:
            self._end(runner, device)
        taken = 0
        for reading in decoded.readings:
            n = self._take(runner, topic, payload, fields, reading, received)
            if n and (not taken or n < taken):
                taken = n
        return taken

    def _take(self, runner: PipelineRunner, topic: str, payload: bytes, fields: dict[str, str], reading: Reading,
              received: float) -> int:
        """Check one reading a codec made (device, tags, shape), then :meth:`_push` it."""
        try:
            device = reading.device
            if device is not fields.get(IDENTITY) and not is_level(device):
                raise PayloadError("bad_device", f"device {str(device)[:80]!r} must match {TOPIC_LEVEL_PATTERN} "
                                   "(1-64 chars, no '/', '+', '#', or leading '$')")
            sensor, site, tags = runner.settings.sensor, None, None
            if len(fields) > 1 or reading.tags:
                sensor, site, tags = self._tags(sensor, fields, reading.tags)
            samples = reading.samples
            if samples.ndim == 1:
                samples = samples.reshape(1, -1)
            if samples.ndim != 2 or not (0 < samples.shape[0] <= MAX_SAMPLES_PER_READING) or samples.shape[1] > MAX_CHANNELS:
                raise PayloadError("wrong_shape", f"a reading of shape {samples.shape}")
        except (ContractError, PayloadError) as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return 0
        return self._push(runner, topic, payload, (device, sensor), site, tags, samples, reading.ts, reading.seq,
                          reading.rate_hz, received)

    def _push(self, runner: PipelineRunner, topic: str, payload: bytes, key: StreamKey, site: str | None,
              tags: dict[str, str] | None, samples: np.ndarray, ts: float | None, seq: int | None,
              rate_hz: float | None, received: float) -> int:
        """One stream's samples into its window; the samples taken (0: rejected or repeated)."""
        try:
            if not np.isfinite(samples).all():  # finite as JSON, yet beyond float32 (|x| > 3.4e38)
                raise PayloadError("non_finite", "a value is too large for float32")
            if samples.shape[1] != runner.pipeline.in_channels:
                raise PayloadError(
                    "wrong_shape", f"reading has {samples.shape[1]} channels, pipeline expects {runner.pipeline.in_channels}"
                )
            if key not in runner.last_seq and len(runner.last_seq) >= runner.settings.max_streams:
                raise PayloadError(
                    "too_many_streams",
                    f"pipeline {runner.settings.sensor!r} already keeps {runner.settings.max_streams} live streams (max_streams)"
                )
            if seq is None:  # the format has none: number arrivals (gaps and repeats cannot be seen)
                seq = runner.last_seq.get(key, -1) + 1
            if not self._in_sequence(runner, key, seq):
                return 0
            runner.last_seen[key] = received
            if site is not None or tags:
                runner.stream_tags[key] = (site, tags)
            elif runner.stream_tags:
                runner.stream_tags.pop(key, None)
            windows = runner.pipeline.push(key, samples, time.time() if ts is None else ts, rate_hz, seq)
        except (ContractError, PayloadError) as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return 0
        if windows:
            if self.oldest_pending is None:
                self.oldest_pending = received
            runner.pending.extend(_Pending(w, received) for w in windows)
        return int(samples.shape[0])

    @staticmethod
    def _tags(sensor: str, fields: dict[str, str], extra: object) -> tuple[str, str | None, dict[str, str] | None]:
        """(sensor, site, tags) from the template's bound names and the codec's tags, each value checked."""
        merged = {k: v for k, v in fields.items() if k != IDENTITY}
        if extra:
            for name in extra:  # type: ignore[union-attr]
                if not is_level(name) or name == IDENTITY or name in RESERVED_NAMES:
                    raise PayloadError("bad_tag", f"tag name {str(name)[:40]!r} is reserved or not a topic level")
            merged.update(extra)  # type: ignore[call-overload]
        sensor = merged.pop("sensor", sensor)
        site = merged.pop("site", None)
        if len(merged) > MAX_TAGS:
            raise PayloadError("bad_tag", f"{len(merged)} tags, at most {MAX_TAGS}")
        for name, value in [("sensor", sensor), ("site", site), *merged.items()]:
            if value is not None and not is_level(value):
                raise PayloadError("bad_tag", f"{name} {str(value)[:80]!r} must match {TOPIC_LEVEL_PATTERN}")
        return sensor, site, merged or None

    def _end(self, runner: PipelineRunner, device: str) -> None:
        """The codec says the device's streams ended (Sparkplug DEATH): drop their window state."""
        for key in [k for k in runner.last_seq if k[0] == device]:
            runner.last_seq.pop(key, None)
            runner.last_seen.pop(key, None)
            runner.stream_tags.pop(key, None)
            runner.pipeline.reset(key)
            self.counters["streams_ended"] += 1

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
    def expiry_interval_s(self) -> float:
        """How often ``expire_idle`` should run: every 10 s, sooner when a pipeline's stream_idle_s is shorter."""
        return min([10.0] + [r.settings.stream_idle_s / 2 for r in self.runners.values()])

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
                runner.stream_tags.pop(key, None)
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
        # (name, version, sha256, labels, node, site) are proven by one InferenceResult, once per model
        # (at a batch of one window per flush, once per batch was once per result);
        # any row in doubt goes through InferenceResult as before (same result, same reject).
        finite = np.isfinite(outputs).all(axis=1) if outputs.shape[1] <= MAX_OUTPUTS else np.zeros(len(pending), bool)
        name, version, sha, labels, threshold = model.name, model.version, model.sha256, model.labels, model.threshold
        identity = (name, version, sha, tuple(labels), self.node_id, self.site)
        proven: bool | None = True if identity in self._proven else None
        stream_tags = runner.stream_tags
        for item, out, score, ok in zip(pending, outputs.tolist(), scores.tolist(), finite.tolist()):
            device, sensor = item.window.key
            anomaly = score > threshold
            site, tags = stream_tags.get(item.window.key, (None, None)) if stream_tags else (None, None)
            fields = {
                "v": SCHEMA_VERSION, "device": device, "sensor": sensor, "model": name, "model_version": version,
                "model_sha256": sha, "ts": item.window.ts_end, "seq": item.window.seq, "outputs": out,
                "score": score, "anomaly": anomaly, "label": labels[1] if anomaly else labels[0],
                "latency_ms": (done - item.received) * 1000.0, "node": self.node_id, "site": site or self.site,
                "tags": tags,
            }
            try:
                if ok and site is None and tags is None and _plain_row(fields):  # per-stream site/tags: validated below
                    if proven is None:
                        InferenceResult(**fields)  # raises ValidationError like the slow path would
                        proven = True
                        if len(self._proven) < 64:  # models come and go by deployment: a few identities
                            self._proven.add(identity)
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
