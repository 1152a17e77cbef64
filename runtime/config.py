"""Edge runtime configuration (``edge.yaml``), validated before anything connects.

Every key has a default, so ``edgeloop edge run`` works with no file at all:
broker ``mqtt://127.0.0.1:1883``, the bundled vibration model and pipeline.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgeloop.configfile import load_config
from edgeloop.metrics import MetricsSettings
from edgeloop.mqttconfig import MqttSettings
from edgeloop.contract import TOPIC_LEVEL_PATTERN, TopicLevel
from edgeloop.edge.ha_discovery import HomeAssistantSettings
from edgeloop.edge.ingest.codec import InputBase
from edgeloop.edge.ingest.edgeloop_codec import EdgeloopInput
from edgeloop.edge.ingest.presets import expand_preset
from edgeloop.edge.ingest.registry import PipelineInput
from edgeloop.edge.ingest.sparkplug import SparkplugInput, require_protobuf
from edgeloop.edge.ingest.topics import IDENTITY, TemplateError, TopicTemplate
from edgeloop.edge.sampling import SamplingSettings
from edgeloop.edge.stages import StageConfig
from edgeloop.edge.vision.config import VisionSettings
from edgeloop.edge.vision.opencv import require_opencv

MODELS_DIR = Path(__file__).parent / "models"
BUNDLED_MODEL = MODELS_DIR / "vibration_ae.tflite"

#: The pipeline the bundled model was trained with (keep in step with
#: edgeloop.bridge.training.autoencoder.DEFAULT_VIBRATION_PIPELINE; a test checks).
DEFAULT_VIBRATION_STAGES: list[dict[str, Any]] = [
    {"type": "select", "channels": [0, 1, 2]},
    {"type": "window", "size": 128, "hop": 64},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]

CLIMATE_MODEL = MODELS_DIR / "climate_ae.tflite"

#: The pipeline the bundled climate model (temperature, humidity, pressure; one message per reading,
#: e.g. every 30 s) was trained with (lab/climate_model.py): windows of 16 consecutive messages, hop 4.
DEFAULT_CLIMATE_STAGES: list[dict[str, Any]] = [
    {"type": "window", "size": 16, "hop": 4},
    {"type": "features", "stats": ["mean", "std", "kurtosis"], "fft_bands": 2},
    {"type": "normalize", "from_model": True},
]

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.:-]", "-", socket.gethostname())[:58] or "node"
    return f"edge-{host}" if re.match(TOPIC_LEVEL_PATTERN, f"edge-{host}") else "edge"


class ModelSettings(BaseModel):
    model_config = _FROZEN

    path: Path = BUNDLED_MODEL
    num_threads: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None, description="interpreter threads; default: the interpreter's choice"
    )


class PipelineSettings(BaseModel):
    """One stream type: input (topic template + codec) -> stages -> model.

    ``sensor`` names the pipeline and, unless the template binds ``{sensor}``, the
    results' ``sensor``. Without ``input:`` the pipeline takes edgeloop's own readings
    on ``sensors/{device}/<sensor>`` (docs/ingest.md).
    """

    model_config = _FROZEN

    sensor: TopicLevel = "vibration"
    input: PipelineInput | None = Field(
        default=None,
        description="where readings come from and how they are decoded: a topic template and a codec "
        "(edgeloop, json, ...) with its mapping, or a preset (zigbee2mqtt, tasmota, homeassistant-statestream); "
        "default: edgeloop's own readings on sensors/{device}/<sensor>",
    )
    topic: str | None = Field(
        default=None,
        description="(older form, edgeloop codec only) subscription filter sensors/+/<sensor> or "
        "sensors/<device>/<sensor>; prefer input.topic",
    )
    in_channels: Annotated[int, Field(ge=1, le=64)] = 3
    stages: list[StageConfig] = Field(default_factory=lambda: list(DEFAULT_VIBRATION_STAGES), validate_default=True)  # type: ignore[arg-type]
    model: ModelSettings = ModelSettings()
    max_streams: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=10_000,
        description="live (device, sensor) streams this pipeline keeps window state for; a reading of a new "
        "stream beyond it is rejected (too_many_streams), so unknown device ids cannot grow the edge's memory",
    )
    stream_idle_s: Annotated[float, Field(gt=0, le=30 * 24 * 3600)] = Field(
        default=3600.0,
        description="a stream silent this long loses its window state (streams_expired); its next reading starts a fresh window",
    )

    @field_validator("input", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        return expand_preset(value)

    @property
    def source(self) -> InputBase:
        """The input in effect (edgeloop's own readings when ``input:`` is absent)."""
        return self.input if self.input is not None else EdgeloopInput()

    @property
    def template(self) -> TopicTemplate:
        """The topic template in effect (validated when the settings were)."""
        return TopicTemplate.parse(self._template_text())

    def _template_text(self) -> str:
        source = self.source
        if source.topic is not None:
            return source.topic
        if source.default_topic is not None:
            return source.default_topic
        if isinstance(source, EdgeloopInput):
            return f"sensors/{{device}}/{self.sensor}"
        raise ValueError(f"input.topic: required for codec {source.codec}")  # type: ignore[attr-defined]

    @property
    def subscription(self) -> str:
        return self.topic or self.template.filter

    @model_validator(mode="after")
    def _topic_shape(self) -> "PipelineSettings":
        if self.topic is not None:
            if self.input is not None:
                raise ValueError("topic: give the topic template as input.topic (topic is the older form of it)")
            parts = self.topic.split("/")
            if len(parts) != 3 or parts[0] != "sensors" or parts[2] not in ("+", self.sensor):
                raise ValueError(f"topic must look like sensors/+/{self.sensor} or sensors/<device>/{self.sensor}")
        text = self._template_text()
        try:
            template = TopicTemplate.parse(text)
        except TemplateError as exc:
            raise ValueError(f"input.topic: {text!r}: {exc}") from None
        if self.source.needs_device and IDENTITY not in template.field_names:
            raise ValueError(f"input.topic: {text!r} has no {{device}} level (the device identity), "
                             "e.g. zigbee2mqtt/{device}")
        channels = self.source.n_channels
        if channels is not None and channels != self.in_channels:
            key = "input.fields" if "fields" in type(self.source).model_fields else "input"
            raise ValueError(f"{key}: maps {channels} channels, in_channels is {self.in_channels}")
        return self


class BatchingSettings(BaseModel):
    """Micro-batching: one interpreter call for many windows from all devices.

    A batch is flushed when it holds ``max_batch`` windows, when its oldest
    reading has waited ``max_latency_ms``, or (``flush_when_idle``) as soon as
    no more input is queued -- so a quiet system pays no waiting latency and a
    busy one gets large batches.
    """

    model_config = _FROZEN

    max_batch: Annotated[int, Field(ge=1, le=4096)] = 128
    max_latency_ms: Annotated[float, Field(ge=0, le=10_000)] = 20.0
    flush_when_idle: bool = True


class InputSettings(BaseModel):
    """Hand-off from the MQTT network thread to the inference worker.

    The queue is bounded. A QoS 0 reading that finds it full is dropped and
    counted (``dropped_queue_full``): under overload the edge sheds load at the
    door instead of growing latency without bound. A QoS 1 reading waits for
    room instead (back-pressure: the broker holds the rest in our session) and
    is acknowledged only once its results are in the outbox (docs/reliability.md).

    ``qos`` defaults to 1 because the persistent session (``mqtt.session_expiry_s``)
    queues only QoS 1 readings for an edge that is restarting or offline.
    """

    model_config = _FROZEN

    qos: Literal[0, 1] = 1
    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_payload_bytes: Annotated[int, Field(ge=64, le=16 * 1024 * 1024)] = 256 * 1024
    broker_inflight: Annotated[int, Field(ge=0, le=65535)] | None = Field(
        default=None,
        description="QoS 1 messages the broker sends this edge before waiting for acks (mosquitto: "
        "max_inflight_messages); the edge holds fewer readings than that, so it never stalls; 0 = "
        "no limit; default: 20 (mosquitto's) with MQTT 3.1.1, the announced Receive Maximum with MQTT 5",
    )


class OutputSettings(BaseModel):
    model_config = _FROZEN

    qos: Literal[0, 1] = 1
    batch_results: bool = Field(
        default=False,
        description="publish one JSON array per (device, model) per flush instead of one message per result",
    )
    deadletter: bool = Field(default=True, description="publish rejected input on deadletter/edge")


class OutboxSettings(BaseModel):
    """The disk outbox every result and sample passes through (runtime/outbox.py, docs/reliability.md).

    ``fsync``: every mode survives a killed process; for power loss, ``batch``
    (default) fsyncs in the background every ``fsync_interval_ms`` and acks the
    readings behind results only once they are on disk, ``full`` fsyncs every
    append in the worker, ``normal`` leaves it to the OS. Over ``max_messages`` or ``max_bytes`` the
    oldest unsent messages are dropped (counted); older than ``ttl_s`` they
    expire unsent (counted). ``enabled: false`` publishes straight to the
    client (lost if the process dies before the broker acknowledges).
    """

    model_config = _FROZEN

    enabled: bool = True
    path: Path | None = Field(
        default=None,
        description="SQLite file; default $EDGELOOP_STATE_DIR (or ~/.local/state/edgeloop)/outbox-{node_id}.sqlite",
    )
    fsync: Literal["full", "batch", "normal"] = "batch"
    fsync_interval_ms: Annotated[float, Field(ge=1, le=10_000)] = 50.0
    max_messages: Annotated[int, Field(ge=1, le=100_000_000)] = 1_000_000
    max_bytes: Annotated[int, Field(ge=1024, le=1024**4)] = 512 * 1024 * 1024
    ttl_s: Annotated[float, Field(gt=0, le=365 * 24 * 3600)] = 7 * 24 * 3600.0


class DeploySettings(BaseModel):
    """Signed over-the-air model deployment (docs/deployment.md); off unless ``enabled``.

    A deployed model runs its first ``canary_windows`` valid windows on
    probation while the previous (proven) model scores the same windows beside
    it (edgeloop.edge.probation). It is rolled back if it gives an invalid
    output where the proven model did not, if the mean result latency exceeds
    ``max_latency_ms``, if the median device's anomaly rate exceeds
    ``max(max_anomaly_rate, anomaly_rate_factor * the proven model's on the same windows)``,
    or if it is blind: windows score more than ``blind_score_factor`` times
    further below its threshold than below the proven model's.
    """

    model_config = _FROZEN

    enabled: bool = False
    public_key_file: Path | None = Field(default=None, description="Ed25519 public key (PEM) manifests must be signed with")
    public_key_files: Annotated[list[Path], Field(max_length=16)] = Field(
        default_factory=list,
        description="further trusted public keys: during a key rotation, the old and the new key")
    max_artifact_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 16 * 1024 * 1024
    chunk_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    trial_timeout_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="time limit for loading and self-testing a received model in a child process")
    state_dir: Path | None = Field(
        default=None,
        description="keeps the deployed and the previous model across restarts, and the deployment ledger "
                    "(else the ledger goes to $EDGELOOP_STATE_DIR/deploy-{node_id})")
    canary_windows: Annotated[int, Field(ge=1, le=1_000_000)] = 50
    max_anomaly_rate: Annotated[float, Field(ge=0, le=1)] = 0.2
    anomaly_rate_factor: Annotated[float, Field(ge=1, le=1000)] = 3.0
    max_latency_ms: Annotated[float, Field(gt=0, le=600_000)] = 1000.0
    blind_score_factor: Annotated[float, Field(ge=2, le=1e12)] = Field(
        default=100.0,
        description="roll back a model whose windows score this many times further below its threshold than the proven model's",
    )

    @property
    def trusted_key_files(self) -> list[Path]:
        return ([self.public_key_file] if self.public_key_file is not None else []) + list(self.public_key_files)

    @model_validator(mode="after")
    def _key(self) -> "DeploySettings":
        if self.enabled:
            if not self.trusted_key_files:
                raise ValueError("deploy.enabled needs public_key_file (the deployer's Ed25519 public key)")
            from edgeloop.errors import ConfigError
            from edgeloop.signing import VerifyKey

            for path in self.trusted_key_files:
                field = "public_key_file" if path == self.public_key_file else "public_key_files"
                try:
                    VerifyKey.load(path)
                except ConfigError as exc:
                    raise ValueError(f"{field}: {'; '.join(exc.problems)} ({exc.source})") from None
        return self


class EdgeConfig(BaseModel):
    model_config = _FROZEN

    node_id: TopicLevel = Field(default_factory=default_node_id)
    site: TopicLevel | None = None
    mqtt: MqttSettings = MqttSettings(client_id=None)
    pipelines: Annotated[list[PipelineSettings], Field(min_length=1)] = Field(
        default_factory=lambda: [PipelineSettings()]
    )
    batching: BatchingSettings = BatchingSettings()
    input: InputSettings = InputSettings()
    output: OutputSettings = OutputSettings()
    status_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    drain_timeout_s: Annotated[float, Field(ge=0, le=600)] = 10.0
    deploy: DeploySettings = DeploySettings()
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings, description="windows sent home on samples/{device}/{model} for retraining"
    )
    outbox: OutboxSettings = OutboxSettings()
    metrics: MetricsSettings = MetricsSettings()
    vision: VisionSettings | None = Field(default=None, description="cameras (docs/camera.md); absent: no frames")
    homeassistant: HomeAssistantSettings = Field(
        default_factory=HomeAssistantSettings,
        description="Home Assistant MQTT discovery of each (device, model)'s anomaly and score; off by default")
    workers: Annotated[int, Field(ge=1, le=64)] = Field(
        default=1,
        description="inference processes; above 1 each stream's readings go to one of them (runtime/workers.py), "
                    "so a multi-core board uses its cores")

    @model_validator(mode="after")
    def _workers_alone(self) -> "EdgeConfig":
        if self.workers > 1:
            if self.deploy.enabled:
                raise ValueError("workers: signed deployment (deploy.enabled) runs with one inference process only; "
                                 "set workers: 1 or deploy.enabled: false")
            if self.vision is not None:
                raise ValueError("workers: cameras (vision:) run with one inference process only; set workers: 1")
        return self

    @model_validator(mode="after")
    def _unique_sensors(self) -> "EdgeConfig":
        sensors = [p.sensor for p in self.pipelines]
        if len(set(sensors)) != len(sensors):
            raise ValueError("pipelines: each sensor may have only one pipeline")
        return self

    @model_validator(mode="after")
    def _templates_disjoint(self) -> "EdgeConfig":
        """Two pipelines must not both claim a topic: a reading would go to whichever came first."""
        templates = [p.template for p in self.pipelines]
        for j, later in enumerate(templates):
            for i, earlier in enumerate(templates[:j]):
                if later.overlaps(earlier):
                    raise ValueError(
                        f"pipelines.{j}.input.topic: {later.text!r} can match the same topics as "
                        f"pipelines.{i} ({earlier.text!r}); make a literal level tell them apart")
        return self

    @model_validator(mode="after")
    def _outbox_needs_acks(self) -> "EdgeConfig":
        if self.outbox.enabled and self.output.qos == 0:
            raise ValueError("output.qos 0 has no broker acknowledgement to empty the outbox: use qos 1 or outbox.enabled: false")
        return self


def load_edge_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> EdgeConfig:
    """Validate ``path`` (optional) with ``overrides``; a camera pipeline also needs OpenCV installed,
    a Sparkplug input protobuf."""
    cfg = load_config(EdgeConfig, path, overrides)
    if cfg.vision is not None:
        require_opencv(str(path) if path else "defaults")
    if any(isinstance(p.input, SparkplugInput) for p in cfg.pipelines):
        require_protobuf(str(path) if path else "defaults")
    return cfg
