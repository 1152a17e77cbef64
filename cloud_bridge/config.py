"""Configuration of the cloud bridge, validated before any connection opens.

Why a model per section: unknown keys and bad values must fail at startup
with the file and the field named (``bridge.yaml: influx.bucket: ...``), never
as a runtime surprise; secrets are ``SecretStr`` so they never reach a log.

Example ``bridge.yaml``::

    mqtt: {url: "mqtt://broker:1883"}
    subscribe: ["results/+/+", "status/+"]
    influx:
      api: v1                      # v1: POST /write (InfluxDB 1.x); v2: influxdb-client /api/v2/write
      url: http://influxdb:8086
      db: edgeloop
      tags: {env: prod}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from edgeloop.configfile import load_config
from edgeloop.metrics import BRIDGE_METRICS_PORT, MetricsSettings
from edgeloop.mqttconfig import MqttSettings, TlsSettings
from edgeloop.secrets import read_secret_file
from edgeloop.contract import TopicLevel

from edgeloop.bridge.loopconfig import DriftSettings, RetrainSettings, SampleStoreSettings

DEFAULT_CLIENT_ID = "edgeloop-bridge"

_STRICT = ConfigDict(extra="forbid", frozen=True)

#: Tags the schema writes itself; static tags must not shadow them.
RESERVED_TAGS = frozenset({"device", "sensor", "model", "model_version", "node", "site", "time"})

_TAG_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_UNSAFE_RE = re.compile(r"[\\\x00-\x1f\x7f]")


def _safe_name(value: str, what: str) -> str:
    """Names and static tag values go into line protocol verbatim-escaped; refuse what cannot."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    if _UNSAFE_RE.search(value):
        raise ValueError(f"{what} {value!r} must not contain backslashes or control characters")
    if value.startswith("_"):
        raise ValueError(f"{what} {value!r} must not start with '_' (reserved by InfluxDB)")
    return value


class Measurements(BaseModel):
    """Measurement names for the two kinds of points the bridge writes."""

    model_config = _STRICT

    results: str = "inference"
    status: str = "node_status"

    @field_validator("results", "status")
    @classmethod
    def _name(cls, value: str) -> str:
        return _safe_name(value, "measurement name")


class InfluxSettings(BaseModel):
    """Where and how to write. ``api: v1`` needs ``db``; ``api: v2`` needs ``bucket`` and ``org``.

    All three default to ``edgeloop`` so the defaults are a valid config;
    setting the one the chosen API needs to null or "" is an error.
    """

    model_config = _STRICT

    api: Literal["v1", "v2"] = "v2"
    url: str = "http://127.0.0.1:8086"
    # v1 (InfluxDB 1.x /write)
    db: str | None = "edgeloop"
    rp: str | None = None
    create_database: bool = Field(
        default=False,
        description="v1: at start, create 'db' if it does not exist (CREATE DATABASE; the user must be an admin). "
        "Without it a missing database stops the start with the command to create it",
    )
    username: str | None = None
    password: SecretStr | None = None
    # v2 (influxdb-client, InfluxDB 2.x or anything speaking /api/v2/write)
    bucket: str | None = "edgeloop"
    org: str | None = "edgeloop"
    token: SecretStr | None = None
    token_file: Path | None = Field(default=None, description="file holding the token; read at startup")
    # batching and transport
    batch_size: Annotated[int, Field(gt=0, le=1_000_000)] = 5000
    batch_max_bytes: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)] = 8 * 1024 * 1024
    flush_interval_ms: Annotated[int, Field(gt=0, le=3_600_000)] = 1000
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    retry_max_s: Annotated[float, Field(ge=0.05, le=3600)] = Field(
        default=30.0,
        description="ceiling of the jittered backoff between attempts to write a held batch (server down, "
        "throttling, missing database, refused credentials)",
    )
    gzip: bool = False
    # schema
    measurements: Measurements = Measurements()
    tags: dict[str, str] = Field(default_factory=dict, description="static tags added to every point")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if "@" in parts.netloc:  # before any message that echoes the URL
            raise ValueError("must not hold credentials (user:password@): use influx.username/password or influx.token")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        try:
            parts.port  # noqa: B018 -- raises on a non-numeric port
        except ValueError:
            raise ValueError("port must be a number 1-65535") from None
        return url.rstrip("/")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            _read_token(path, warn=False)
        return path

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not _TAG_KEY_RE.match(key):
                raise ValueError(f"tag key {key!r} must match {_TAG_KEY_RE.pattern}")
            if key in RESERVED_TAGS:
                raise ValueError(f"tag key {key!r} is written by the bridge itself")
            _safe_name(value, f"value of tag {key!r}")
        return tags

    @model_validator(mode="after")
    def _api_fields(self) -> "InfluxSettings":
        if self.api == "v1":
            if not self.db:
                raise ValueError("api v1 needs 'db' (the InfluxDB 1.x database)")
        else:
            if self.create_database:
                raise ValueError("create_database works with api v1 only; create the v2 bucket with "
                                 "`influx bucket create -n BUCKET -o ORG`")
            missing = [name for name in ("bucket", "org") if not getattr(self, name)]
            if missing:
                raise ValueError(f"api v2 needs {' and '.join(repr(m) for m in missing)}")
            if self.token is not None and self.token_file is not None:
                raise ValueError("set 'token' or 'token_file', not both")
            if self.token_file is not None:
                # Frozen model: the file is resolved once here, at startup.
                object.__setattr__(self, "token", SecretStr(_read_token(self.token_file)))
        return self


def _read_token(path: Path, warn: bool = True) -> str:
    """Regular file, <= 64 KiB, UTF-8, not empty; world-readable is a logged warning (edgeloop.secrets)."""
    return read_secret_file(path, "token file", warn=warn)


class StoreSettings(BaseModel):
    """What the bridge admits into the store (docs/security.md, "What a device can and cannot do").

    A device chooses its results' ``model``/``model_version``/``sensor``/``node``/``site`` tags and
    ``ts``; the ACL pins only the device id. So a result is stored only if its (model, version) is
    known -- in the registry (``registry``) or announced by a node's retained status -- its
    timestamp lies within [arrival - ``max_past_s``, arrival + ``max_future_s``], and its device has
    used at most ``max_tag_values`` distinct values of each tag within ``tag_period_s``. Everything
    else is dead-lettered with the reason (``unknown_model_version``, ``timestamp_out_of_range``,
    ``tag_cardinality``). Status points get the timestamp check too.
    """

    model_config = _STRICT

    known_versions: Literal["registry_or_status", "off"] = Field(
        default="registry_or_status",
        description="registry_or_status: store results only of (model, version) pairs the registry holds or "
        "a node announces in its retained status/{node}; off: any (not recommended: see docs/security.md)",
    )
    registry: Path | None = Field(
        default=None,
        description="model registry directory read (never written) for known versions; default: "
        "retrain.registry when drift or retrain is enabled, else none (status announcements only)",
    )
    follow_statuses: bool = Field(
        default=True,
        description="follow status/+ on a connection of its own (client id {mqtt.client_id}-known), reading the "
        "retained ones before the main connection: a session's backlog and shared-subscription replicas (which "
        "each get only some statuses) know every announced version; where the broker makes the client id the "
        "identity (use_username_as_clientid), give it an identity of its own: identities.status",
    )
    announced_versions_per_model: Annotated[int, Field(ge=1, le=64)] = Field(
        default=4, description="per node and model, how many of the versions it last announced stay known "
        "(results still in its outbox after a model swap carry the previous one)",
    )
    announced_models_per_node: Annotated[int, Field(ge=1, le=4096)] = Field(
        default=32, description="models of one node's status taken as announcements; more are ignored (counted)"
    )
    max_past_s: Annotated[float, Field(gt=0, le=10 * 365 * 86_400)] = Field(
        default=7 * 86_400.0, description="oldest device timestamp stored, in seconds before arrival"
    )
    max_future_s: Annotated[float, Field(ge=0, le=365 * 86_400)] = Field(
        default=300.0, description="newest device timestamp stored, in seconds after arrival (clock skew)"
    )
    max_tag_values: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=16, description="distinct values of each tag (sensor, model, model_version, node, site) one "
        "device may use within tag_period_s",
    )
    tag_period_s: Annotated[float, Field(gt=0, le=365 * 86_400)] = 86_400.0
    max_devices: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000, description="devices whose tag values are tracked (least recently seen forgotten first)"
    )


class ConnectionIdentity(BaseModel):
    """Who one of the bridge's extra MQTT connections is, on a broker that makes every client id its
    identity (docker/mosquitto/mosquitto.conf, ``use_username_as_clientid``): under the bridge's own
    identity such a connection would take over the bridge's session, and the two would log each
    other off forever. A client certificate (``cert_file``/``key_file``, with ``mqtt.tls``'s CA)
    or a username with its password file; whatever is not set is taken from ``mqtt``."""

    model_config = _STRICT

    cert_file: Path | None = None
    key_file: Path | None = None
    key_password_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None


#: The bridge's extra connections: the status follower (store.follow_statuses), the closed loop
#: (samples, retrain commands) and the retrain worker's deployer.
ConnectionRole = Literal["status", "loop", "deployer"]


class BridgeConfig(BaseModel):
    """The whole bridge: MQTT in, InfluxDB out."""

    model_config = _STRICT

    node_id: TopicLevel = Field(
        default=DEFAULT_CLIENT_ID,
        description="id in status/{node_id} (birth online, LWT offline) and the default MQTT client id "
        "(which keys the persistent session); unique per replica",
    )
    mqtt: MqttSettings = Field(default_factory=MqttSettings, validate_default=True)
    subscribe: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(min_length=1)] = [
        "results/+/+",
        "status/+",
    ]
    qos: Literal[0, 1] = 1
    max_payload_bytes: Annotated[int, Field(ge=256, le=256 * 1024 * 1024)] = 262144
    queue_size: Annotated[int, Field(ge=1, le=10_000_000)] = 10000
    share_group: TopicLevel | None = Field(
        default=None,
        description="subscribe as $share/{group}/...: replicas with the same group split the messages "
        "(MQTT v5 shared subscription; each replica needs its own node_id)",
    )
    influx: InfluxSettings = InfluxSettings()
    metrics: MetricsSettings = MetricsSettings(port=BRIDGE_METRICS_PORT)
    store: StoreSettings = StoreSettings()
    # The closed loop (edgeloop.bridge.loop, docs/closed-loop.md); all off by default.
    samples: SampleStoreSettings = SampleStoreSettings()
    drift: DriftSettings = DriftSettings()
    retrain: RetrainSettings = RetrainSettings()
    identities: dict[ConnectionRole, ConnectionIdentity] = Field(
        default_factory=dict,
        description="an identity of its own for each extra connection (status: store.follow_statuses; loop: "
        "samples and retrain commands; deployer: retrain.deploy), needed where the broker makes the client id "
        "the identity (docs/security.md); unset: mqtt's identity with client id {mqtt.client_id}-{role}",
    )

    @model_validator(mode="after")
    def _identities(self) -> "BridgeConfig":
        for role in self.identities:
            self.mqtt_for(role)  # its files are loaded now: a bad one is a ConfigError at startup
        return self

    def mqtt_for(self, role: ConnectionRole) -> MqttSettings:
        """``mqtt`` as the connection ``role`` uses it: with its own identity if ``identities`` has one.

        Raises ValueError naming ``identities.{role}`` if that identity cannot be used."""
        ident = self.identities.get(role)
        if ident is None:
            return self.mqtt
        update: dict[str, Any] = {}
        try:
            if ident.cert_file is not None or ident.key_file is not None:
                tls = self.mqtt.tls
                if tls is None:
                    raise ValueError("a client certificate needs mqtt.tls (an mqtts:// broker)")
                update["tls"] = TlsSettings(
                    ca_file=tls.ca_file, cert_file=ident.cert_file, key_file=ident.key_file,
                    key_password_file=ident.key_password_file, min_version=tls.min_version,
                    insecure_skip_verify=tls.insecure_skip_verify)
            if ident.username is not None or ident.password_file is not None:
                update["username"] = ident.username
                update["password_file"] = ident.password_file
                update["password"] = (SecretStr(read_secret_file(ident.password_file, "password_file"))
                                      if ident.password_file is not None else None)
        except ValueError as exc:  # pydantic's ValidationError is one: keep only its messages
            errors = getattr(exc, "errors", None)
            why = "; ".join(e["msg"] for e in errors()) if callable(errors) else str(exc)
            raise ValueError(f"identities.{role}: {why}") from None
        return self.mqtt.model_copy(update=update)

    @field_validator("mqtt")
    @classmethod
    def _client_id(cls, mqtt: MqttSettings, info: ValidationInfo) -> MqttSettings:
        node_id = info.data.get("node_id") or DEFAULT_CLIENT_ID
        return mqtt if mqtt.client_id else mqtt.model_copy(update={"client_id": node_id})

    @property
    def known_versions_registry(self) -> Path | None:
        """The registry the bridge reads known (model, version) pairs from (``store.registry``)."""
        if self.store.registry is not None:
            return self.store.registry
        return self.retrain.registry if (self.retrain.enabled or self.drift.enabled) else None

    @property
    def topic_filters(self) -> list[str]:
        """``subscribe``, each behind ``$share/{share_group}/`` when a group is set."""
        if self.share_group is None:
            return list(self.subscribe)
        return [f"$share/{self.share_group}/{topic}" for topic in self.subscribe]


def load_bridge_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> BridgeConfig:
    """Read ``path`` (optional; ``${ENV}`` expanded), merge ``overrides``, validate.

    Raises ``edgeloop.errors.ConfigError`` naming the file and the field.
    """
    return load_config(BridgeConfig, path, overrides or {})
