"""Sparkplug B 3.0: births define the metrics, data uses aliases, deaths end streams.

Why a stateful codec: a Sparkplug NDATA/DDATA message usually carries only
aliases (numbers) and only the metrics that changed (report by exception). Its
meaning comes from the edge node's last NBIRTH/DBIRTH, so the codec keeps, per
(group, edge node[, device]), the alias table, the datatypes and the last value
of each configured metric. When it cannot know what a message means -- DATA
before any BIRTH, an alias no BIRTH defined, a broken ``seq`` -- it does not
guess: it refuses the message (``RejectWithReplies``: counted and dead-lettered
by reason -- ``no_birth``, ``unknown_alias``, ``unknown_metric``, ``bad_seq``,
``awaiting_rebirth``) and answers with a Rebirth request (``NCMD`` with
``Node Control/Rebirth``), rate-limited per node and overall.

Decisions (docs/ingest.md, "Sparkplug B"):

* a DATA message with only some configured metrics fills the others with their
  last value (from the BIRTH or an earlier DATA); a channel that has no value
  yet (not in the BIRTH, or ``is_null``) rejects the reading as ``missing_metric``;
* several values of one metric in one DATA: the last one counts; historical
  metrics (``is_historical``) are skipped; ``Reading.ts`` is the newest metric
  timestamp of the message (ms -> s), else the payload's;
* ``Reading.seq`` counts the stream's readings from 0 after each BIRTH (the
  wrapping Sparkplug ``seq`` is checked here, per edge node); every BIRTH and
  DEATH lists the stream in ``Decoded.ended`` so its window starts afresh;
* state is bounded: ``max_nodes``, ``max_devices`` (all nodes together) and
  ``max_metrics`` per BIRTH; a BIRTH beyond them is rejected with a reason.

The protobuf classes come from Eclipse Tahu's ``sparkplug_b.proto`` (beside
this file) via ``sparkplug_b_pb2``; protobuf is the ``sparkplug`` extra and is
imported only when a Sparkplug input is built.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from edgeloop.errors import MissingExtra, PayloadError
from edgeloop.extras import require
from edgeloop.edge.ingest.codec import Decoded, InputBase, Reading, RejectWithReplies

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
BD_SEQ = "bdSeq"
BOOLEAN_TYPE = 11
#: Sparkplug datatypes read as numbers: signed ints (bits), unsigned ints, float, double, boolean.
SIGNED_BITS = {1: 8, 2: 16, 3: 32, 4: 64}
UNSIGNED = {5, 6, 7, 8}
FLOATING = {9, 10}
NODE_TYPES = {"NBIRTH", "NDATA", "NDEATH"}
DEVICE_TYPES = {"DBIRTH", "DDATA", "DDEATH"}
#: Messages the edge itself (or another host) publishes: matched by a wide subscription, not data.
IGNORED_TYPES = {"NCMD", "DCMD"}


def require_protobuf(source: str) -> None:
    """MissingExtra (exit 2, one line) naming the ``sparkplug`` extra when protobuf is not installed."""
    require(f"a Sparkplug input (codec: sparkplug in {source})", "sparkplug", install="edge,sparkplug")


def load_pb2() -> ModuleType:
    """The generated Sparkplug B classes; MissingExtra when protobuf is absent or too old for them."""
    require_protobuf("the edge config")
    try:
        from edgeloop.edge.ingest import sparkplug_b_pb2
    except Exception as exc:  # ImportError, or protobuf's VersionError for a runtime older than the gencode
        raise MissingExtra("a Sparkplug input", "sparkplug", [f"protobuf>=7.35.1 ({exc})"],
                           install="edge,sparkplug") from exc
    return sparkplug_b_pb2


def _valid_level(value: str) -> bool:
    return bool(value) and not any(c in value for c in "/+#\x00")


class SparkplugInput(InputBase):
    """A Sparkplug B input: metric names become channels, in order."""

    codec: Literal["sparkplug"]
    default_topic: ClassVar[str | None] = f"{NAMESPACE}/+/#"
    needs_device: ClassVar[bool] = False  # the device (or edge node) id is read from the topic by the codec

    topic: str | None = Field(default=None, description="subscription, an MQTT filter under spBv1.0/ (default "
                              "spBv1.0/+/#, or spBv1.0/GROUP/# with group); the codec reads group, edge node and "
                              "device from each topic")
    group: str | None = Field(default=None, description="only this Sparkplug group (subscribes to spBv1.0/GROUP/#); "
                              "default: every group")
    metrics: list[str] = Field(min_length=1, description="Sparkplug metric names that become the channels, in order "
                               "(the same names for every edge node and device)")
    max_nodes: int = Field(default=64, ge=1, le=100_000, description="edge nodes whose BIRTH state is kept; "
                           "an NBIRTH beyond this is rejected (too_many_nodes)")
    max_devices: int = Field(default=1024, ge=1, le=1_000_000, description="devices (all edge nodes together) whose "
                             "DBIRTH state is kept; a DBIRTH beyond this is rejected (too_many_devices)")
    max_metrics: int = Field(default=512, ge=1, le=100_000, description="metrics one BIRTH may define; "
                             "a larger BIRTH is rejected (too_many_metrics)")
    rebirth_interval_s: float = Field(default=5.0, ge=0, description="at most one Rebirth request per edge node "
                                      "in this many seconds")
    max_rebirths_per_s: float = Field(default=10.0, gt=0, description="Rebirth requests per second for all edge "
                                      "nodes together (made-up node ids cannot make the edge flood NCMD)")

    @model_validator(mode="before")
    @classmethod
    def _topic_from_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("group") is not None:
            if data.get("topic") is not None:
                raise ValueError("set group or topic, not both")
            data = {**data, "topic": f"{NAMESPACE}/{data['group']}/#"}
        return data

    @field_validator("group")
    @classmethod
    def _group_is_a_level(cls, value: str | None) -> str | None:
        if value is not None and (not _valid_level(value) or value == "STATE"):
            raise ValueError("group must be one topic level without '/', '+', '#' (and not STATE)")
        return value

    @field_validator("topic")
    @classmethod
    def _topic_is_sparkplug(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(f"{NAMESPACE}/"):
            raise ValueError(f"a Sparkplug B topic starts with {NAMESPACE}/ (e.g. {NAMESPACE}/+/#)")
        return value

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, value: list[str]) -> list[str]:
        if any(not name for name in value):
            raise ValueError("metric names must not be empty")
        dupes = sorted({n for n in value if value.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names repeated: {dupes}")
        return value

    @property
    def n_channels(self) -> int:
        return len(self.metrics)

    def build(self) -> SparkplugCodec:
        return SparkplugCodec(self, load_pb2())


@dataclass(slots=True)
class _Scope:
    """One edge node's own metrics or one device's, as its last BIRTH defined them."""

    device: str
    aliases: dict[int, int]  # alias -> channel, -1 for a metric that is not configured
    types: list[int | None]  # datatype per channel; None: the BIRTH did not define it
    values: list[float | None]
    readings: int = 0  # Reading.seq of the next reading


@dataclass(slots=True)
class _Node:
    bd_seq: int | None
    seq: int
    scope: _Scope
    devices: dict[str, _Scope] = field(default_factory=dict)
    valid: bool = True  # False from a Rebirth request until the next NBIRTH


class _NeedRebirth(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class SparkplugCodec:
    """Decodes Sparkplug B messages for one input; keeps BIRTH state between messages."""

    name: ClassVar[str] = "sparkplug"

    def __init__(self, settings: SparkplugInput, pb2: ModuleType) -> None:
        self.settings = settings
        self.pb2 = pb2
        self.channels = {name: i for i, name in enumerate(settings.metrics)}
        self.nodes: dict[tuple[str, str], _Node] = {}
        self.n_devices = 0
        self.rebirths_sent = 0
        self._last_rebirth: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._window_start = 0.0
        self._window_count = 0

    # ------------------------------------------------------------------ entry

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded:
        parts = topic.split("/")
        if len(parts) >= 2 and parts[0] == NAMESPACE and parts[1] == "STATE":
            return Decoded()  # a host application's online state, not data
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE or not all(_valid_level(p) for p in parts[1:]):
            raise PayloadError("bad_topic", f"not a Sparkplug B topic {NAMESPACE}/GROUP/TYPE/NODE[/DEVICE]: {topic!r}")
        group, mtype, node_id = parts[1], parts[2], parts[3]
        if mtype in IGNORED_TYPES:
            return Decoded()
        if mtype in NODE_TYPES and len(parts) != 4 or mtype in DEVICE_TYPES and len(parts) != 5:
            raise PayloadError("bad_topic", f"{mtype} topic has the wrong number of levels: {topic!r}")
        if mtype not in NODE_TYPES and mtype not in DEVICE_TYPES:
            raise PayloadError("bad_topic", f"unknown Sparkplug message type {mtype!r}")
        msg = self._parse(payload)
        key = (group, node_id)
        try:
            if mtype == "NBIRTH":
                return self._nbirth(key, msg)
            if mtype == "NDEATH":
                return self._ndeath(key, msg)
            if mtype == "DDEATH":
                return self._ddeath(key, parts[4], msg, arrival)
            node = self._node(key, mtype)
            self._check_seq(node, msg, mtype)
            if mtype == "NDATA":
                return self._data(key, node.scope, msg)
            device = parts[4]
            if mtype == "DBIRTH":
                return self._dbirth(key, node, device, msg)
            scope = node.devices.get(device)
            if scope is None:
                raise _NeedRebirth("no_birth", f"DDATA from device {device!r} before its DBIRTH")
            return self._data(key, scope, msg)
        except _NeedRebirth as need:
            raise RejectWithReplies(need.reason, str(need), self._ask_rebirth(key, arrival)) from None

    def _parse(self, payload: bytes) -> Any:
        msg = self.pb2.Payload()
        try:
            msg.ParseFromString(payload)
        except Exception as exc:  # DecodeError, and whatever else a hostile buffer makes the parser raise
            raise PayloadError("invalid_protobuf", f"not a Sparkplug B payload: {exc}") from None
        return msg

    def _node(self, key: tuple[str, str], mtype: str) -> _Node:
        node = self.nodes.get(key)
        if node is None:
            raise _NeedRebirth("no_birth", f"{mtype} from edge node {key[1]!r} (group {key[0]!r}) before its NBIRTH")
        if not node.valid:
            raise _NeedRebirth("awaiting_rebirth", f"{mtype} from edge node {key[1]!r} while a rebirth is awaited")
        return node

    def _check_seq(self, node: _Node, msg: Any, mtype: str) -> None:
        expected = (node.seq + 1) % 256
        seq = msg.seq if msg.HasField("seq") else None
        if seq != expected:
            node.valid = False
            raise _NeedRebirth("bad_seq", f"{mtype} seq {seq} where {expected} was due")
        node.seq = seq

    # ------------------------------------------------------------------ births and deaths

    def _nbirth(self, key: tuple[str, str], msg: Any) -> Decoded:
        if not msg.HasField("seq") or msg.seq > 255:
            raise PayloadError("bad_seq", "NBIRTH without a seq in 0..255")
        old = self.nodes.get(key)
        if old is None and len(self.nodes) >= self.settings.max_nodes:
            raise PayloadError("too_many_nodes", f"already {self.settings.max_nodes} edge nodes (max_nodes)")
        scope = self._scope(key[1], msg, "NBIRTH")
        bd_seq = next((int(m.long_value or m.int_value) for m in msg.metrics if m.name == BD_SEQ), None)
        ended = self._forget(key) if old is not None else []
        self.nodes[key] = _Node(bd_seq=bd_seq, seq=msg.seq, scope=scope)
        self._last_rebirth.pop(key, None)
        return Decoded(readings=self._birth_reading(key, scope, msg), ended=ended)

    def _dbirth(self, key: tuple[str, str], node: _Node, device: str, msg: Any) -> Decoded:
        old = node.devices.get(device)
        if old is None and self.n_devices >= self.settings.max_devices:
            raise PayloadError("too_many_devices", f"already {self.settings.max_devices} devices (max_devices)")
        scope = self._scope(device, msg, "DBIRTH")
        if old is None:
            self.n_devices += 1
        node.devices[device] = scope
        return Decoded(readings=self._birth_reading(key, scope, msg), ended=[device] if old is not None else [])

    def _ddeath(self, key: tuple[str, str], device: str, msg: Any, arrival: float) -> Decoded:
        """A death ends the device even when its seq is broken or a rebirth is awaited."""
        node = self.nodes.get(key)
        out = Decoded()
        if node is None:
            return out
        if node.devices.pop(device, None) is not None:
            self.n_devices -= 1
            out.ended.append(device)
        if node.valid:
            try:
                self._check_seq(node, msg, "DDEATH")
            except _NeedRebirth:
                out.replies = self._ask_rebirth(key, arrival)
        return out

    def _ndeath(self, key: tuple[str, str], msg: Any) -> Decoded:
        node = self.nodes.get(key)
        if node is None:
            return Decoded()
        bd_seq = next((int(m.long_value or m.int_value) for m in msg.metrics if m.name == BD_SEQ), None)
        if bd_seq != node.bd_seq:
            raise PayloadError("stale_death", f"NDEATH bdSeq {bd_seq} does not match the NBIRTH's {node.bd_seq}")
        return Decoded(ended=self._forget(key))

    def _forget(self, key: tuple[str, str]) -> list[str]:
        node = self.nodes.pop(key)
        self.n_devices -= len(node.devices)
        return [node.scope.device, *node.devices]

    def _scope(self, device: str, msg: Any, mtype: str) -> _Scope:
        if len(msg.metrics) > self.settings.max_metrics:
            raise PayloadError("too_many_metrics", f"{mtype} defines {len(msg.metrics)} metrics "
                               f"(max_metrics {self.settings.max_metrics})")
        n = len(self.channels)
        scope = _Scope(device=device, aliases={}, types=[None] * n, values=[None] * n)
        for metric in msg.metrics:
            channel = self.channels.get(metric.name, -1) if metric.HasField("name") else -1
            if metric.HasField("alias"):
                scope.aliases[metric.alias] = channel
            if channel >= 0:
                scope.types[channel] = metric.datatype
                if not metric.is_null:
                    scope.values[channel] = self._number(metric, metric.datatype)
        return scope

    # ------------------------------------------------------------------ data

    def _birth_reading(self, key: tuple[str, str], scope: _Scope, msg: Any) -> list[Reading]:
        """A BIRTH carries every metric's current value: the stream's first reading when all channels have one."""
        if any(v is None for v in scope.values):
            return []
        stamps = [m.timestamp for m in msg.metrics if m.HasField("timestamp") and self.channels.get(m.name, -1) >= 0]
        return [self._reading(key, scope, scope.values, stamps, msg)]

    def _data(self, key: tuple[str, str], scope: _Scope, msg: Any) -> Decoded:
        values = list(scope.values)
        stamps: list[int] = []
        touched = False
        for metric in msg.metrics:
            if metric.is_historical:
                continue
            if metric.HasField("name") and metric.name:
                channel = self.channels.get(metric.name, -1)
                if channel >= 0 and scope.types[channel] is None:
                    raise _NeedRebirth("unknown_metric", f"metric {metric.name!r} is not in the BIRTH")
            elif metric.HasField("alias"):
                found = scope.aliases.get(metric.alias)
                if found is None:
                    raise _NeedRebirth("unknown_alias", f"alias {metric.alias} is not in the BIRTH")
                channel = found
            else:
                raise PayloadError("bad_metric", "a metric has neither a name nor an alias")
            if channel < 0:
                continue
            touched = True
            values[channel] = None if metric.is_null else self._number(metric, scope.types[channel])
            if metric.HasField("timestamp"):
                stamps.append(metric.timestamp)
        if not touched:
            return Decoded()
        missing = [self.settings.metrics[i] for i, v in enumerate(values) if v is None]
        if missing:
            scope.values = values
            raise PayloadError("missing_metric", f"no value yet for {missing} (not in the BIRTH, or null)")
        reading = self._reading(key, scope, values, stamps, msg)
        scope.values = values
        return Decoded(readings=[reading])

    def _reading(self, key: tuple[str, str], scope: _Scope, values: list, stamps: list[int], msg: Any) -> Reading:
        samples = np.asarray([values], dtype=np.float64).astype(np.float32)
        if not np.isfinite(samples).all():
            raise PayloadError("non_finite", "a metric value is not finite as float32")
        if stamps:
            ts: float | None = max(stamps) / 1000.0
        else:
            ts = msg.timestamp / 1000.0 if msg.HasField("timestamp") else None
        seq = scope.readings
        scope.readings += 1
        return Reading(device=scope.device, samples=samples, ts=ts, seq=seq,
                       tags={"group": key[0], "edge_node": key[1]})

    def _number(self, metric: Any, datatype: int | None) -> float:
        kind = metric.WhichOneof("value")
        if datatype in SIGNED_BITS or datatype in UNSIGNED:
            if kind not in ("int_value", "long_value"):
                raise PayloadError("bad_value", f"metric {metric.name or metric.alias}: integer type with {kind}")
            raw = getattr(metric, kind)
            bits = SIGNED_BITS.get(datatype)
            if bits is None:
                return float(raw)
            raw &= (1 << bits) - 1  # Int8 -5 arrives as 251 or as 2**32 - 5, depending on the encoder
            return float(raw - (1 << bits) if raw >> (bits - 1) else raw)
        if datatype in FLOATING:
            if kind not in ("float_value", "double_value"):
                raise PayloadError("bad_value", f"metric {metric.name or metric.alias}: float type with {kind}")
            return float(getattr(metric, kind))
        if datatype == BOOLEAN_TYPE:
            if kind != "boolean_value":
                raise PayloadError("bad_value", f"metric {metric.name or metric.alias}: boolean type with {kind}")
            return 1.0 if metric.boolean_value else 0.0
        raise PayloadError("unsupported_datatype", f"metric {metric.name or metric.alias} has datatype {datatype}: "
                           "only integers, floats, doubles and booleans become channels")

    # ------------------------------------------------------------------ rebirth

    def _ask_rebirth(self, key: tuple[str, str], arrival: float) -> list[tuple[str, bytes]]:
        """An NCMD Rebirth for the node, or none when this node (or everyone) was asked too recently."""
        node = self.nodes.get(key)
        if node is not None:
            node.valid = False
        last = self._last_rebirth.get(key)
        if last is not None and arrival - last < self.settings.rebirth_interval_s:
            return []
        if arrival - self._window_start >= 1.0:
            self._window_start, self._window_count = arrival, 0
        if self._window_count >= self.settings.max_rebirths_per_s:
            return []
        self._window_count += 1
        self._last_rebirth[key] = arrival
        self._last_rebirth.move_to_end(key)
        while len(self._last_rebirth) > 4 * self.settings.max_nodes:
            self._last_rebirth.popitem(last=False)
        self.rebirths_sent += 1
        return [(f"{NAMESPACE}/{key[0]}/NCMD/{key[1]}", self.rebirth_payload(arrival))]

    def rebirth_payload(self, now: float | None = None) -> bytes:
        """An NCMD payload asking the edge node for a new NBIRTH (Sparkplug B 3.0, Node Control/Rebirth)."""
        ms = int((time.time() if now is None else now) * 1000)
        msg = self.pb2.Payload(timestamp=ms)
        msg.metrics.add(name=REBIRTH_METRIC, timestamp=ms, datatype=BOOLEAN_TYPE, boolean_value=True)
        return msg.SerializeToString()
