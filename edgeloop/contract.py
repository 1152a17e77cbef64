"""The wire contract: MQTT topics and message schemas shared by edge and cloud.

This is the only module both halves import. It depends on pydantic and the
standard library alone (no numpy, LiteRT or influxdb-client), so a bridge, a
device publisher or a third-party consumer can import it cheaply.

Topics (device id and sensor come from the topic, never from the payload, so a
per-device broker ACL can pin them):

    sensors/{device}/{sensor}     device -> edge   SensorReading (JSON)
    frames/{device}/{camera}      device -> edge   JPEG bytes; FrameMeta in MQTT v5 user
                                                   properties or a small header (see decode_frame)
    results/{device}/{model}      edge -> cloud    InferenceResult, or a JSON array of them
    status/{node}                 edge -> cloud    NodeStatus (retained; LWT "offline")
    samples/{device}/{model}      edge -> cloud    SampleBatch: feature vectors kept for retraining
    models/{model}/deploy         cloud -> edge    signed ModelManifest, and the artifact on
    models/{model}/{version}/chunk/{i}             (both retained): edgeloop.deploy_contract
    deadletter/{component}        any              DeadLetter

Every message carries ``v`` (schema version); receivers reject versions they
do not know instead of guessing.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

#: One topic level naming a device, sensor, model or component: no MQTT
#: wildcards, no separators, no leading ``$`` (reserved for broker topics).
TOPIC_LEVEL_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$"
_LEVEL_RE = re.compile(TOPIC_LEVEL_PATTERN)

MAX_TOPIC_BYTES = 256
MAX_SAMPLES_PER_READING = 4096
MAX_CHANNELS = 64
MAX_OUTPUTS = 1024
MAX_TOPK = 32
#: Extra tags a result may carry, and the names they may not use (the result's own fields and
#: the bridge's columns).
MAX_RESULT_TAGS = 8
RESERVED_TAG_NAMES = frozenset(
    {"v", "device", "sensor", "model", "model_version", "model_sha256", "ts", "seq", "outputs", "score",
     "anomaly", "label", "latency_ms", "node", "site", "topk", "tags", "time", "measurement", "field"}
)


class ContractError(ValueError):
    """A topic or payload that does not satisfy the contract.

    ``reason`` is a short, stable, low-cardinality code (used as a metric
    label and in dead-letters); ``str(exc)`` is the human explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# --------------------------------------------------------------------------- topics

TopicLevel = Annotated[str, Field(pattern=TOPIC_LEVEL_PATTERN)]


def check_level(value: str, what: str = "topic level") -> str:
    """Return ``value`` if it is a valid single topic level, else raise ContractError."""
    if not isinstance(value, str) or not _LEVEL_RE.match(value):
        raise ContractError(
            "bad_topic",
            f"{what} {value!r} must match {TOPIC_LEVEL_PATTERN} "
            "(1-64 chars, no '/', '+', '#', or leading '$')",
        )
    return value


def sensor_topic(device: str, sensor: str) -> str:
    return f"sensors/{check_level(device, 'device')}/{check_level(sensor, 'sensor')}"


def result_topic(device: str, model: str) -> str:
    return f"results/{check_level(device, 'device')}/{check_level(model, 'model')}"


def status_topic(node: str) -> str:
    return f"status/{check_level(node, 'node')}"


def sample_topic(device: str, model: str) -> str:
    return f"samples/{check_level(device, 'device')}/{check_level(model, 'model')}"


def deadletter_topic(component: str) -> str:
    return f"deadletter/{check_level(component, 'component')}"


def frame_topic(device: str, camera: str) -> str:
    return f"frames/{check_level(device, 'device')}/{check_level(camera, 'camera')}"


def _split(topic: str, root: str, levels: int) -> list[str]:
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise ContractError("bad_topic", f"topic longer than {MAX_TOPIC_BYTES} bytes")
    parts = topic.split("/")
    if len(parts) != levels + 1 or parts[0] != root:
        raise ContractError(
            "bad_topic", f"topic {topic[:80]!r} is not {root}/" + "/".join(["{x}"] * levels)
        )
    for part in parts[1:]:
        check_level(part)
    return parts[1:]


def parse_sensor_topic(topic: str) -> tuple[str, str]:
    """``sensors/{device}/{sensor}`` -> (device, sensor)."""
    device, sensor = _split(topic, "sensors", 2)
    return device, sensor


def parse_result_topic(topic: str) -> tuple[str, str]:
    """``results/{device}/{model}`` -> (device, model)."""
    device, model = _split(topic, "results", 2)
    return device, model


def parse_sample_topic(topic: str) -> tuple[str, str]:
    """``samples/{device}/{model}`` -> (device, model)."""
    device, model = _split(topic, "samples", 2)
    return device, model


def parse_status_topic(topic: str) -> str:
    """``status/{node}`` -> node."""
    return _split(topic, "status", 1)[0]


def parse_frame_topic(topic: str) -> tuple[str, str]:
    """``frames/{device}/{camera}`` -> (device, camera)."""
    device, camera = _split(topic, "frames", 2)
    return device, camera


# --------------------------------------------------------------------------- messages

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Timestamp = Annotated[float, Field(gt=0, lt=4102444800.0)]  # 1970 .. 2100, unix seconds


class SensorReading(BaseModel):
    """One reading published by a device on ``sensors/{device}/{sensor}``.

    ``values`` is either one sample (a vector of channel values, e.g. a
    temperature ``[21.5]``) or a chunk of samples (rows of channel values, e.g.
    ``[[ax, ay, az], ...]`` from an accelerometer). ``ts`` is the device's
    unix time (seconds) of the first sample; ``rate_hz`` (optional) is the
    sample rate within a chunk, so every sample has a time.
    ``seq`` increases by one per reading per (device, sensor); gaps reveal loss.
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    ts: Timestamp
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    # Chunks first: a union collects every error of a member that fails, so trying the flat form
    # first on a 64-row chunk built 64 errors per reading (it doubled the cost of decoding one).
    values: list[list[FiniteFloat]] | list[FiniteFloat]
    rate_hz: Annotated[float, Field(gt=0, le=1e6)] | None = None
    label: str | None = Field(
        default=None,
        max_length=32,
        description="ground truth from simulators (e.g. 'fault'); ignored by inference",
    )

    @field_validator("values")
    @classmethod
    def _shape(cls, values: list) -> list:
        if not values:
            raise ValueError("must not be empty")
        if isinstance(values[0], list):
            width = len(values[0])
            if len(values) > MAX_SAMPLES_PER_READING:
                raise ValueError(f"more than {MAX_SAMPLES_PER_READING} samples")
            if not 0 < width <= MAX_CHANNELS:
                raise ValueError(f"each sample must have 1..{MAX_CHANNELS} channels")
            if len(set(map(len, values))) != 1:
                raise ValueError("all samples must have the same number of channels")
        elif len(values) > MAX_CHANNELS:
            raise ValueError(f"more than {MAX_CHANNELS} channels")
        return values

    @property
    def n_samples(self) -> int:
        return len(self.values) if isinstance(self.values[0], list) else 1

    @property
    def n_channels(self) -> int:
        first = self.values[0]
        return len(first) if isinstance(first, list) else len(self.values)


class TopK(BaseModel):
    """One of a classifier's best labels, with its probability."""

    model_config = _STRICT

    label: Annotated[str, Field(min_length=1, max_length=64)]
    score: FiniteFloat


class InferenceResult(BaseModel):
    """One inference over one window, published on ``results/{device}/{model}``.

    ``ts`` is the device time of the window's last sample and ``seq`` the seq
    of the reading that completed the window: together with device, sensor and
    model they identify the window, so a redelivered result overwrites itself in
    the database instead of duplicating.

    For a camera frame, ``sensor`` is the camera, ``ts``/``seq`` the frame's
    capture time and sequence; a classifier's ``outputs`` are the class
    probabilities, ``label``/``score`` the top-1 label and probability, and
    ``topk`` (optional) the best labels in descending order.
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    device: TopicLevel
    sensor: TopicLevel
    model: TopicLevel
    model_version: Annotated[str, Field(min_length=1, max_length=64)]
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    ts: Timestamp
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    outputs: Annotated[list[FiniteFloat], Field(max_length=MAX_OUTPUTS)]
    score: FiniteFloat
    anomaly: bool
    label: Annotated[str, Field(min_length=1, max_length=64)]
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    node: TopicLevel | None = Field(default=None, description="edge runtime that produced it")
    site: TopicLevel | None = None
    topk: Annotated[list[TopK], Field(max_length=MAX_TOPK)] | None = None
    tags: Annotated[dict[TopicLevel, TopicLevel], Field(max_length=MAX_RESULT_TAGS)] | None = Field(
        default=None,
        description="further names the input's topic template or codec bound (e.g. area, line): stored as tags",
    )

    @field_validator("tags")
    @classmethod
    def _own_tags(cls, tags: dict[str, str] | None) -> dict[str, str] | None:
        if tags:
            clash = sorted(set(tags) & RESERVED_TAG_NAMES)
            if clash:
                raise ValueError(f"tag names {clash} are fields of the result itself")
        return tags


class ModelRef(BaseModel):
    model_config = _STRICT

    version: Annotated[str, Field(min_length=1, max_length=64)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DeployState(BaseModel):
    """The outcome of the latest model deployment a node saw for one model (``NodeStatus.last_deploy``).

    ``state``: ``receiving`` (chunks arriving), ``canary`` (swapped, counting
    its first windows), ``healthy`` (passed them), ``refused`` (never
    installed), ``rolled_back`` (installed, then replaced by the previous
    model). ``reason`` is a code from ``edgeloop.deploy_contract.REFUSAL_REASONS``.
    """

    model_config = _STRICT

    version: Annotated[str, Field(min_length=1, max_length=64)]
    state: Literal["receiving", "canary", "healthy", "refused", "rolled_back"]
    ts: Timestamp
    deploy_id: Annotated[str, Field(max_length=32)] | None = None
    reason: Annotated[str, Field(max_length=64)] | None = None
    detail: Annotated[str, Field(max_length=1024)] | None = None
    windows: Annotated[int, Field(ge=0)] | None = None


class NodeStatus(BaseModel):
    """Retained on ``status/{node}``: birth on connect, ``offline`` as LWT and on exit."""

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    node: TopicLevel
    state: Literal["online", "offline"]
    ts: Timestamp
    models: dict[TopicLevel, ModelRef] = Field(default_factory=dict)
    runtime_version: str | None = Field(default=None, max_length=64)
    site: TopicLevel | None = None
    counters: dict[TopicLevel, int] = Field(default_factory=dict)
    last_deploy: dict[TopicLevel, DeployState] = Field(
        default_factory=dict, description="per model: the latest deployment this node saw and what became of it"
    )


MAX_SAMPLE_ROWS = 1024
MAX_FEATURES = 4096


class SampleRow(BaseModel):
    """One window kept for retraining: its features as the model's pipeline computed them.

    ``features`` are the batch-stage output *before* ``normalize`` (raw
    features), so a trainer can fit its own normalisation. ``score`` and
    ``anomaly`` are what the model that served the window said; ``reason`` is
    why it was kept: ``random`` (the unbiased random fraction) or ``flagged``.
    """

    model_config = _STRICT

    ts: Timestamp
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    features: Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_FEATURES)]
    score: FiniteFloat
    anomaly: bool
    reason: Literal["random", "flagged"]


class SampleBatch(BaseModel):
    """Windows of one device and model kept for retraining, on ``samples/{device}/{model}``.

    Published by the edge next to the results of the same flush. Every row
    has the same number of features (the pipeline's output width).
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    device: TopicLevel
    sensor: TopicLevel
    model: TopicLevel
    model_version: Annotated[str, Field(min_length=1, max_length=64)]
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    stage: Literal["features"] = Field(default="features", description="rows are raw features (before normalize)")
    node: TopicLevel | None = None
    site: TopicLevel | None = None
    rows: Annotated[list[SampleRow], Field(min_length=1, max_length=MAX_SAMPLE_ROWS)]

    @model_validator(mode="after")
    def _same_width(self) -> "SampleBatch":
        width = len(self.rows[0].features)
        if any(len(r.features) != width for r in self.rows):
            raise ValueError("all rows must have the same number of features")
        return self


class DeadLetter(BaseModel):
    """A rejected input and why; published on ``deadletter/{component}``.

    The original payload travels base64-encoded and truncated so that a
    dead-letter can never be larger than the limit it enforces.
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    component: TopicLevel
    node: TopicLevel | None = None
    topic: Annotated[str, Field(max_length=MAX_TOPIC_BYTES * 4)]
    reason: Annotated[str, Field(max_length=64)]
    detail: Annotated[str, Field(max_length=1024)]
    ts: Timestamp
    payload_b64: str
    payload_bytes: int
    truncated: bool

    @classmethod
    def build(
        cls,
        component: str,
        topic: str,
        payload: bytes,
        reason: str,
        detail: str,
        node: str | None = None,
        keep_bytes: int = 1024,
    ) -> "DeadLetter":
        return cls(
            component=component,
            node=node,
            topic=topic[: MAX_TOPIC_BYTES * 4],
            reason=reason[:64],
            detail=detail[:1024],
            ts=time.time(),
            payload_b64=base64.b64encode(payload[:keep_bytes]).decode("ascii"),
            payload_bytes=len(payload),
            truncated=len(payload) > keep_bytes,
        )


_READING = TypeAdapter(SensorReading)
_RESULTS = TypeAdapter(InferenceResult | list[InferenceResult])
_STATUS = TypeAdapter(NodeStatus)
_SAMPLES = TypeAdapter(SampleBatch)


def decode(adapter: TypeAdapter, payload: bytes, max_bytes: int):  # noqa: ANN201
    """Validate ``payload`` as JSON against ``adapter``; refuse oversized input before parsing.

    Every failure is a ContractError with a stable reason code.
    """
    if len(payload) > max_bytes:
        raise ContractError("oversized", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    try:
        return adapter.validate_json(payload)
    except ValidationError as exc:
        raise ContractError(_reason(exc), _explain(exc)) from None


def decode_reading(payload: bytes, max_bytes: int) -> SensorReading:
    """Parse and validate a sensor payload."""
    return decode(_READING, payload, max_bytes)


def decode_results(payload: bytes, max_bytes: int) -> list[InferenceResult]:
    """Parse a result message (one object or an array of them)."""
    parsed = decode(_RESULTS, payload, max_bytes)
    return parsed if isinstance(parsed, list) else [parsed]


def decode_status(payload: bytes, max_bytes: int) -> NodeStatus:
    return decode(_STATUS, payload, max_bytes)


def decode_samples(payload: bytes, max_bytes: int) -> SampleBatch:
    return decode(_SAMPLES, payload, max_bytes)


def _reason(exc: ValidationError) -> str:
    """Map pydantic error types onto a few stable reason codes."""
    types = {err["type"] for err in exc.errors()}
    if "json_invalid" in types or "json_type" in types:
        return "malformed_json"
    if types & {"finite_number"}:
        return "non_finite"
    return "invalid_schema"


def _explain(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


# --------------------------------------------------------------------------- frames
#
# A frame message on ``frames/{device}/{camera}`` is the JPEG bytes of one
# image. Its FrameMeta travels either
#   - as MQTT v5 user properties: ("v", "1"), ("ts", "<unix seconds>"),
#     ("seq", "<int>") and optionally ("label", "<ground truth>"); all values
#     are strings, unknown keys are ignored (brokers and bridges add their own);
#   - or, for MQTT 3.1.1 (no properties), as a header in front of the JPEG:
#     b"EFRM" | header length N (2 bytes, big-endian, 1..1024) | N bytes of
#     FrameMeta JSON (UTF-8) | JPEG bytes.
# A JPEG starts with FF D8, so the magic cannot be mistaken for an image. When
# a payload has a header, the header is the metadata and user properties are
# ignored. A frame without either is refused ("missing_meta"): without ts and
# seq a result could not be identified and stored idempotently.

FRAME_HEADER_MAGIC = b"EFRM"
MAX_FRAME_HEADER_BYTES = 1024
_JPEG_SOI = b"\xff\xd8"
_SEQ_RE = re.compile(r"^[0-9]{1,19}$")


class FrameMeta(BaseModel):
    """Capture time, sequence and (from simulators) the ground-truth label of one frame.

    ``seq`` increases by one per frame per (device, camera); ``label`` is
    ignored by inference and lets tests and the demo score the edge.
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    ts: Timestamp
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    label: Annotated[str, Field(min_length=1, max_length=64)] | None = None

    def user_properties(self) -> list[tuple[str, str]]:
        props = [("v", str(self.v)), ("ts", repr(self.ts)), ("seq", str(self.seq))]
        return props + ([("label", self.label)] if self.label is not None else [])

    def header(self) -> bytes:
        body = self.model_dump_json(exclude_none=True).encode()
        return FRAME_HEADER_MAGIC + len(body).to_bytes(2, "big") + body

    @classmethod
    def from_user_properties(cls, props: list[tuple[str, str]]) -> "FrameMeta":
        values = {k: v for k, v in props if k in ("v", "ts", "seq", "label")}
        if "ts" not in values or "seq" not in values:
            raise ContractError("missing_meta", "frame has no header and no ts/seq user properties")
        if values.get("v", "1") != "1":
            raise ContractError("invalid_schema", f"v: unsupported frame metadata version {values['v'][:16]!r}")
        try:
            ts = float(values["ts"])
        except ValueError:
            raise ContractError("invalid_schema", f"ts: {values['ts'][:32]!r} is not a number") from None
        if ts != ts or ts in (float("inf"), float("-inf")):
            raise ContractError("non_finite", "ts: must be finite")
        if not _SEQ_RE.match(values["seq"]):
            raise ContractError("invalid_schema", f"seq: {values['seq'][:32]!r} is not a non-negative integer")
        try:
            return cls(ts=ts, seq=int(values["seq"]), label=values.get("label"))
        except ValidationError as exc:
            raise ContractError(_reason(exc), _explain(exc)) from None


def encode_frame(meta: FrameMeta, jpeg: bytes, header: bool) -> bytes:
    """The payload to publish: the JPEG, with the metadata header in front when ``header``."""
    return meta.header() + jpeg if header else jpeg


def decode_frame(
    payload: bytes, user_properties: list[tuple[str, str]] | None, max_bytes: int
) -> tuple[FrameMeta, bytes]:
    """Split a frame message into (metadata, JPEG bytes); ContractError with a reason code.

    Checks what can be checked without decoding pixels: size limits, the
    header, the metadata, and that the image starts like a JPEG.
    """
    size = len(payload)
    if size == 0:
        raise ContractError("empty_frame", "zero-byte frame")
    if size > max_bytes:
        raise ContractError("oversized", f"frame of {size} bytes exceeds {max_bytes}")
    if payload[:4] == FRAME_HEADER_MAGIC:
        n = int.from_bytes(payload[4:6], "big") if size >= 6 else 0
        if not 0 < n <= MAX_FRAME_HEADER_BYTES or 6 + n > size:
            raise ContractError("bad_header", f"frame header length {n} is invalid for a {size}-byte payload")
        try:
            meta = FrameMeta.model_validate_json(payload[6 : 6 + n])
        except ValidationError as exc:
            raise ContractError(_reason(exc), "header " + _explain(exc)) from None
        image = payload[6 + n :]
    else:
        meta = FrameMeta.from_user_properties(user_properties or [])
        image = payload
    if not image:
        raise ContractError("empty_frame", "frame has metadata but no image bytes")
    if image[:2] != _JPEG_SOI:
        raise ContractError("not_jpeg", "frame image does not start with a JPEG SOI marker (FF D8)")
    return meta, bytes(image)


#: Largest JPEG a FrameSample may carry (before base64).
MAX_FRAME_SAMPLE_BYTES = 256 * 1024


class FrameSample(BaseModel):
    """A camera frame kept for labelling and retraining, on ``samples/{device}/{model}``.

    ``stage: "frame"`` tells it apart from a SampleBatch of feature rows on the
    same topic. ``jpeg_b64`` is the frame downscaled by the edge (base64 JPEG);
    ``label``/``score``/``topk`` are what the serving model said, ``truth``
    the ground truth the device attached (simulators), and ``reason`` why the
    frame was kept (``low_confidence``: top-1 probability below the bar).
    """

    model_config = _STRICT

    v: Literal[1] = SCHEMA_VERSION
    stage: Literal["frame"] = "frame"
    device: TopicLevel
    sensor: TopicLevel = Field(description="the camera")
    model: TopicLevel
    model_version: Annotated[str, Field(min_length=1, max_length=64)]
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    ts: Timestamp
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    label: Annotated[str, Field(min_length=1, max_length=64)]
    score: FiniteFloat
    topk: Annotated[list[TopK], Field(max_length=MAX_TOPK)] | None = None
    truth: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    reason: Literal["low_confidence"] = "low_confidence"
    width: Annotated[int, Field(ge=1, le=16384)]
    height: Annotated[int, Field(ge=1, le=16384)]
    jpeg_b64: Annotated[str, Field(min_length=4, max_length=(MAX_FRAME_SAMPLE_BYTES + 2) // 3 * 4)]
    node: TopicLevel | None = None
    site: TopicLevel | None = None

    def jpeg(self) -> bytes:
        return base64.b64decode(self.jpeg_b64, validate=True)


_FRAME_SAMPLE = TypeAdapter(FrameSample)


def decode_frame_sample(payload: bytes, max_bytes: int) -> FrameSample:
    return decode(_FRAME_SAMPLE, payload, max_bytes)
