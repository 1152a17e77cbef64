"""The ``senml`` codec: SenML packs (RFC 8428), JSON or CBOR, mapped to channels by record name.

A pack is resolved as RFC 8428 section 4.6 says: a record's name is the base name in
effect (``bn``) + its ``n``; its time is ``bt`` + ``t``, and a resolved time below
2**28 is relative to now (the edge's arrival time); its unit is ``u`` or else ``bu``;
its value is ``bv`` + ``v``, or ``bs`` + ``s`` for a record that carries only a sum, or
``vb`` as 1/0 (a contact or a switch is a usable channel). ``vs`` and ``vd`` (string and
data values) on a configured channel are rejected (``not_a_number``); records whose
names no channel claims are ignored, whatever they hold. ``ut`` is ignored. A pack
with ``bver`` above 10, or with a field whose label ends in ``_`` (RFC 8428 section 4.4:
must understand), is rejected.

Channels are matched by resolved name: exactly, or (``match: suffix``, the default) by
the name's tail after its last ``:`` or ``/`` -- so channel ``current`` takes
``urn:dev:ow:10e2073a0108006:current``. A channel may name only a unit (RFC 8428
section 5.1.3: a device that names itself and tells quantities apart by unit). A
configured unit is checked against the record's (``wrong_unit``); a record without
any unit is accepted.

Records are grouped by resolved time into rows, oldest first, one ``Reading`` per row
(so each row keeps its own time). A row must have every channel: a pack with a
partial row is rejected (``missing_channel``) rather than guessed at, and two records
for one channel at one time are rejected (``duplicate_record``). SenML has no sequence
number: the engine numbers messages and cannot detect lost or repeated packs.

Device identity is the topic's ``{device}``; with ``device: base_name`` it is the base
name in effect for each record, less trailing ``:``/``/`` (a pack may then carry
several devices, RFC 8428 section 5.1.6); the engine validates it like any topic level.

CBOR (RFC 8428 section 6, integer labels) is decoded with ``cbor2``, imported only when
a senml input is configured; ``format: auto`` takes a payload that starts with a CBOR
array head (0x80..0x9f) or the self-described CBOR tag as CBOR, anything else as JSON,
which starts with ``[`` or whitespace. JSON is parsed by pydantic-core, already a dependency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import from_json

from edgeloop.contract import MAX_CHANNELS
from edgeloop.errors import MissingExtra, PayloadError
from edgeloop.edge.ingest.codec import Decoded, InputBase, Reading

#: RFC 8428 section 6, table 4: CBOR labels of the SenML fields.
CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
               0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
KNOWN = frozenset(CBOR_LABELS.values())
#: RFC 8949 section 3.4.6: the self-described CBOR tag (55799) some encoders put in front.
SELF_DESCRIBED = b"\xd9\xd9\xf7"
#: The SenML version this codec implements (RFC 8428 section 4.4).
VERSION = 10
#: RFC 8428 section 4.5.3: a resolved time below this is relative to now.
RELATIVE_BELOW = 2**28
MAX_RECORDS = 4096
#: Resolved times before 2000 are a clock that was never set: refused (as the json codec does).
MIN_TS = 946684800.0
MAX_TS = 4102444800.0
_NUMBER_FIELDS = ("bt", "bv", "bs", "v", "s", "t")
_TEXT_FIELDS = ("bn", "bu", "n", "u", "vs", "vd")
_SEPARATORS = ":/"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class SenmlChannel(BaseModel):
    """One channel: the record name that fills it and/or the unit it must carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="record name (resolved: base name + name) that fills the channel")
    unit: Annotated[str, Field(min_length=1, max_length=32)] | None = Field(
        default=None, description="SenML unit the record must carry (e.g. Cel, %RH); alone: the channel is "
        "the record with this unit")

    @model_validator(mode="after")
    def _named(self) -> "SenmlChannel":
        if self.name is None and self.unit is None:
            raise ValueError("a channel needs a name, a unit or both")
        return self


class SenmlInput(InputBase):
    """SenML (RFC 8428) packs in JSON or CBOR, records mapped to channels by name (see edgeloop.edge.ingest.senml)."""

    codec: Literal["senml"]
    channels: Annotated[list[SenmlChannel], Field(min_length=1, max_length=MAX_CHANNELS)] = Field(
        description="channels in order: a record name (e.g. temperature), or {name, unit} (unit checked, "
        "'wrong_unit' when a record carries another), or {unit} alone for packs told apart by unit")
    match: Literal["suffix", "exact"] = Field(
        default="suffix",
        description="suffix: a channel name also matches the part of a resolved name after its last ':' "
        "or '/' (the base name is a device URN); exact: the whole resolved name")
    format: Literal["auto", "json", "cbor"] = Field(
        default="auto", description="payload encoding; auto: CBOR when the first byte is a CBOR array head")
    device: Literal["topic", "base_name"] = Field(
        default="topic",
        description="where the device identity comes from: the topic's {device}, or the pack's base name "
        "(less trailing ':' or '/')")

    @field_validator("channels", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _distinct(self) -> "SenmlInput":
        keys = [(c.name, c.unit if c.name is None else None) for c in self.channels]
        if len(set(keys)) != len(keys):
            raise ValueError("two channels claim the same record name (or the same unit)")
        return self

    @property
    def n_channels(self) -> int | None:
        return len(self.channels)

    def build(self) -> "SenmlCodec":
        return SenmlCodec(self)


def _load_cbor() -> Any:
    try:
        import cbor2
    except ImportError as exc:
        raise MissingExtra("a senml input", "edge", ["cbor2"]) from exc
    return cbor2


class SenmlCodec:
    name: ClassVar[str] = "senml"

    def __init__(self, settings: SenmlInput) -> None:
        self.settings = settings
        self.channels = settings.channels
        self.suffix = settings.match == "suffix"
        self.by_name = {c.name: i for i, c in enumerate(self.channels) if c.name is not None}
        self.by_unit = {c.unit: i for i, c in enumerate(self.channels) if c.name is None}
        self.format = settings.format
        self.from_base_name = settings.device == "base_name"
        self.cbor = _load_cbor() if settings.format != "json" else None

    # ------------------------------------------------------------------ parsing

    def _parse(self, payload: bytes) -> list[Any]:
        cbor = self.format == "cbor" or (self.format == "auto" and bool(payload) and (
            0x80 <= payload[0] <= 0x9F or payload.startswith(SELF_DESCRIBED)))
        if cbor:
            if payload.startswith(SELF_DESCRIBED):  # cbor2 would hand the tagged pack back immutable
                payload = payload[len(SELF_DESCRIBED):]
            try:
                doc = self.cbor.loads(payload)
            except Exception as exc:  # cbor2 raises CBORDecodeError, but also ValueError/TypeError/... on odd input
                raise PayloadError("invalid_cbor", f"payload is not CBOR: {type(exc).__name__}") from None
            if not isinstance(doc, list):
                raise PayloadError("invalid_senml", "a SenML pack is a CBOR array of maps")
            return [self._cbor_record(r) for r in doc[: MAX_RECORDS + 1]]
        try:
            doc = from_json(payload, allow_inf_nan=False)
        except ValueError:
            raise PayloadError("invalid_json", "payload is not JSON (or has NaN/Infinity)") from None
        if not isinstance(doc, list):
            raise PayloadError("invalid_senml", "a SenML pack is a JSON array of objects")
        return doc

    @staticmethod
    def _cbor_record(record: Any) -> Any:
        if not isinstance(record, dict):
            return record
        out: dict[Any, Any] = {}
        for key, value in record.items():
            if isinstance(key, int) and not isinstance(key, bool):
                if key not in CBOR_LABELS:
                    raise PayloadError("invalid_senml", f"unknown CBOR label {key}" if -256 < key < 256
                                       else "unknown CBOR label")
                out[CBOR_LABELS[key]] = value
            else:
                out[key] = value
        return out

    # ------------------------------------------------------------------ decoding

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded:
        records = self._parse(payload)
        if not records:
            raise PayloadError("invalid_senml", "an empty pack")
        if len(records) > MAX_RECORDS:
            raise PayloadError("invalid_senml", f"more than {MAX_RECORDS} records")
        topic_device = fields.get("device", "")
        n = len(self.channels)
        # (device, time) -> one row of values, NaN where no record filled the channel yet
        rows: dict[tuple[str, float], list[float]] = {}
        bn, bt, bu, bv, bs = "", 0.0, None, 0.0, 0.0
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise PayloadError("invalid_senml", f"record {i} is not an object")
            self._check(record, i)
            if "bver" in record:
                bver = record["bver"]
                if isinstance(bver, bool) or not isinstance(bver, int) or bver < 1:
                    raise PayloadError("invalid_senml", f"record {i}: bver {_show(bver)} is not a positive integer")
                if bver > VERSION:
                    raise PayloadError("unsupported_version", f"SenML version {bver}; this edge reads up to {VERSION}")
            bn = record.get("bn", bn)
            bt = record.get("bt", bt)
            bu = record.get("bu", bu)
            bv = record.get("bv", bv)
            bs = record.get("bs", bs)
            name = bn + record.get("n", "")
            channel = self._channel(name, record.get("u", bu))
            if channel is None:
                continue
            value = self._value(record, bv, bs, name, i)
            if value is None:
                if "n" in record:
                    raise PayloadError("missing_value", f"record {i} ({_show(name)}) has no value")
                continue  # a record of base fields only (RFC 8428 section 5.1.7)
            unit = record.get("u", bu)
            want = self.channels[channel].unit
            if want is not None and unit is not None and unit != want:
                raise PayloadError("wrong_unit", f"record {i} ({_show(name)}) is in {_show(unit)}, channel wants {want!r}")
            when = float(bt) + float(record.get("t", 0.0))
            if when < RELATIVE_BELOW:
                when = arrival + when
            if not MIN_TS <= when < MAX_TS:  # also catches inf from two huge finite terms
                raise PayloadError("bad_timestamp", f"record {i}: time {when!r} is outside 2000..2100 (clock not set?)")
            device = bn.rstrip(_SEPARATORS) if self.from_base_name else topic_device
            if self.from_base_name and not device:
                raise PayloadError("missing_device", f"record {i} has no base name to take the device from")
            row = rows.setdefault((device, when), [math.nan] * n)
            if not math.isnan(row[channel]):
                raise PayloadError("duplicate_record", f"two records for channel {channel} ({_show(name)}) at one time")
            row[channel] = value
        if not rows:
            raise PayloadError("missing_channel", "no record in the pack matches a configured channel")
        readings = []
        for (device, when), row in sorted(rows.items(), key=lambda kv: kv[0][1]):
            missing = [self._label(c) for c in range(n) if math.isnan(row[c])]
            if missing:
                raise PayloadError("missing_channel", f"no {', '.join(missing[:3])} at time {when:.3f} "
                                   "(a row needs every channel)")
            readings.append(Reading(device, np.array([row], dtype=np.float32), ts=when))
        return Decoded(readings)

    @staticmethod
    def _check(record: dict, i: int) -> None:
        for key, value in record.items():
            if key not in KNOWN:
                if isinstance(key, str) and key.endswith("_"):
                    raise PayloadError("must_understand", f"record {i}: field {_show(key)} must be understood")
                continue  # an extension this codec does not need (RFC 8428 section 4.4)
            if key in _NUMBER_FIELDS:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise PayloadError("invalid_senml", f"record {i}: {key} is {_show(value)}, not a number")
                try:
                    finite = math.isfinite(value)
                except OverflowError:  # an integer beyond any float
                    finite = False
                if not finite:
                    reason = "bad_timestamp" if key in ("t", "bt") else "non_finite"
                    raise PayloadError(reason, f"record {i}: {key} is not a finite number")
            if key in _TEXT_FIELDS and not isinstance(value, str):
                if not (key == "vd" and isinstance(value, bytes)):  # CBOR carries data values as bytes
                    raise PayloadError("invalid_senml", f"record {i}: {key} is {_show(value)}, not a string")
            if key == "vb" and not isinstance(value, bool):
                raise PayloadError("invalid_senml", f"record {i}: vb is {_show(value)}, not a boolean")

    def _channel(self, name: str, unit: str | None) -> int | None:
        channel = self.by_name.get(name)
        if channel is None and self.suffix:
            cut = max(name.rfind(":"), name.rfind("/"))
            if cut >= 0:
                channel = self.by_name.get(name[cut + 1:])
        if channel is None and self.by_unit and unit is not None:
            channel = self.by_unit.get(unit)
        return channel

    @staticmethod
    def _value(record: dict, bv: float, bs: float, name: str, i: int) -> float | None:
        if "v" in record:
            value = float(bv) + float(record["v"])
        elif "s" in record:
            value = float(bs) + float(record["s"])
        elif "vb" in record:
            value = 1.0 if record["vb"] else 0.0
        elif "vs" in record or "vd" in record:
            raise PayloadError("not_a_number", f"record {i} ({_show(name)}) has a string or data value")
        else:
            return None
        value = float(value)
        if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
            raise PayloadError("non_finite", f"record {i} ({_show(name)}): value too large for float32")
        return value

    def _label(self, c: int) -> str:
        ch = self.channels[c]
        return repr(ch.name) if ch.name is not None else f"unit {ch.unit!r}"
