"""The ``json`` codec: whatever JSON a device already publishes, mapped to channels.

Two payload shapes:

- an object (Zigbee2MQTT, Tasmota, most firmware): ``fields`` lists, in channel order,
  the paths of the values, dotted into nested objects (``ENERGY.Power``,
  ``AM2301.Temperature``; a numeric segment indexes an array), each with an optional
  ``scale`` and ``offset`` (channel = value * scale + offset);
- a bare value: a number (``21.5``), a numeric string (``"21.5"``) or an array of
  numbers (one value per channel): one sample per message.

Values: JSON numbers, numeric strings and booleans (``true`` = 1: a contact or leak
sensor). ``timestamp`` names the field with the device's time (``timestamp_format``:
``epoch_s``, ``epoch_ms`` or ``iso8601``; an ISO time without zone is read in
``timezone``); without it the edge's arrival time is used. ``sequence`` names a
per-message counter; without it the engine numbers messages as they arrive, so lost
or repeated messages cannot be detected (docs/ingest.md).

Parsing is pydantic-core's ``from_json`` (Rust, already a dependency): no second JSON
library.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone as dt_timezone
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import from_json

from edgeloop.contract import MAX_CHANNELS
from edgeloop.errors import PayloadError
from edgeloop.edge.ingest.codec import Decoded, InputBase, Reading

#: Device times before 2000 are a clock that was never set (e.g. Tasmota before NTP): refused.
MIN_TS = 946684800.0
MAX_TS = 4102444800.0  # 2100, as the contract's Timestamp

_PATH = r"^[^.\s][^\s]{0,199}$"


class FieldMap(BaseModel):
    """One channel: a dotted path into the object, optionally scaled (value * scale + offset)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Annotated[str, Field(pattern=_PATH)]
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    offset: Annotated[float, Field(allow_inf_nan=False)] = 0.0


def _show(value: Any) -> str:
    """A payload value for a reject message: repr, truncated (payload text is never logged raw)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 64):
        try:
            return float(value)
        except (ValueError, OverflowError):  # not numeric text; an integer beyond float range
            pass
    raise PayloadError("not_a_number", f"{what} is {_show(value)}, not a number")


def _walk(doc: Any, path: tuple[str, ...], dotted: str) -> Any:
    for key in path:
        if isinstance(doc, dict):
            if key not in doc:
                raise PayloadError("missing_field", f"no field {dotted!r}")
            doc = doc[key]
        elif isinstance(doc, list) and key.isdigit() and int(key) < len(doc):
            doc = doc[int(key)]
        else:
            raise PayloadError("missing_field", f"no field {dotted!r}")
    return doc


class JsonCodec:
    name: ClassVar[str] = "json"

    def __init__(self, settings: "JsonInput") -> None:
        fields = settings.fields or []
        self.paths = [(tuple(f.path.split(".")), f.path) for f in fields]
        self.scale = np.array([f.scale for f in fields], dtype=np.float64)
        self.offset = np.array([f.offset for f in fields], dtype=np.float64)
        self.scaled = bool(fields) and not (np.all(self.scale == 1.0) and np.all(self.offset == 0.0))
        self.n_fields = len(fields)
        self.ts_path = (tuple(settings.timestamp.split(".")), settings.timestamp) if settings.timestamp else None
        self.ts_format = settings.timestamp_format
        self.zone = settings.zone()
        self.seq_path = (tuple(settings.sequence.split(".")), settings.sequence) if settings.sequence else None

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded:
        try:
            doc = from_json(payload)
        except ValueError:
            raise PayloadError("invalid_json", "payload is not JSON") from None
        ts = seq = None
        if isinstance(doc, dict):
            if not self.paths:
                raise PayloadError("wrong_shape", "an object, but this input takes bare values (no fields mapped)")
            values = [_number(_walk(doc, path, dotted), f"field {dotted!r}") for path, dotted in self.paths]
            if self.ts_path is not None:
                ts = self._timestamp(_walk(doc, *self.ts_path))
            if self.seq_path is not None:
                seq = self._sequence(_walk(doc, *self.seq_path))
        elif isinstance(doc, list):
            if not doc or len(doc) > MAX_CHANNELS:
                raise PayloadError("wrong_shape", f"an array of {len(doc)} values (1..{MAX_CHANNELS})")
            values = [_number(v, f"element {i}") for i, v in enumerate(doc)]
        else:
            values = [_number(doc, "payload")]
        if self.n_fields and len(values) != self.n_fields:
            raise PayloadError("wrong_shape", f"{len(values)} values, this input maps {self.n_fields}")
        row = np.array(values, dtype=np.float64)
        if self.scaled:
            row = row * self.scale + self.offset
        with np.errstate(over="ignore"):  # beyond float32 becomes inf: the engine rejects it (non_finite)
            samples = row.astype(np.float32).reshape(1, -1)
        return Decoded([Reading(fields.get("device", ""), samples, ts, seq)])

    def _timestamp(self, value: Any) -> float:
        try:
            if self.ts_format == "iso8601":
                if not isinstance(value, str) or len(value) > 64:
                    raise ValueError
                when = datetime.fromisoformat(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=self.zone) if self.zone is not None else when.astimezone()
                ts = when.timestamp()
            else:
                if isinstance(value, bool):
                    raise ValueError
                ts = float(value) if isinstance(value, (int, float)) else float(str(value)[:64])
                if self.ts_format == "epoch_ms":
                    ts /= 1000.0
        except (ValueError, TypeError, OverflowError, OSError):
            raise PayloadError("bad_timestamp", f"timestamp {_show(value)} is not {self.ts_format}") from None
        if not (math.isfinite(ts) and MIN_TS <= ts < MAX_TS):
            raise PayloadError("bad_timestamp", f"timestamp {_show(value)} is outside 2000..2100 (clock not set?)")
        return ts

    @staticmethod
    def _sequence(value: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
            return value
        raise PayloadError("bad_sequence", f"sequence {_show(value)} is not an integer in 0..2^63")


class JsonInput(InputBase):
    """JSON objects mapped to channels by field path, or bare numbers (see edgeloop.edge.ingest.json_codec)."""

    codec: Literal["json"]
    fields: Annotated[list[FieldMap], Field(min_length=1, max_length=MAX_CHANNELS)] | None = Field(
        default=None,
        description="channels in order: dotted paths into the object (e.g. ENERGY.Power), each a string or "
        "{path, scale, offset}; absent: the payload is a bare number or an array of numbers",
    )
    timestamp: Annotated[str, Field(pattern=_PATH)] | None = Field(
        default=None, description="field with the device's time; absent: the edge's arrival time")
    timestamp_format: Literal["epoch_s", "epoch_ms", "iso8601"] = "epoch_s"
    timezone: str = Field(
        default="UTC",
        description="zone of an ISO 8601 time without offset: an IANA name (Europe/Berlin), UTC, or 'local' "
        "(the edge host's zone)")
    sequence: Annotated[str, Field(pattern=_PATH)] | None = Field(
        default=None,
        description="field with a per-message counter; absent: the edge numbers messages as they arrive and "
        "cannot detect lost or repeated ones")

    @field_validator("fields", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value != "local":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin, UTC or local)") from None
        return value

    def zone(self) -> dt_timezone | ZoneInfo | None:
        """The zone for times without offset (None: the host's local zone)."""
        if self.timezone == "local":
            return None
        return dt_timezone.utc if self.timezone == "UTC" else ZoneInfo(self.timezone)

    @property
    def n_channels(self) -> int | None:
        return len(self.fields) if self.fields else None

    def build(self) -> JsonCodec:
        return JsonCodec(self)
