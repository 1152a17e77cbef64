"""The ``influx`` codec: InfluxDB line protocol, as Telegraf's MQTT output and many gateways publish it.

One message holds one or more lines (``measurement,tag=v field=1.0,n=3i 1700000000000000000``),
separated by ``\\n`` (``\\r\\n`` too); blank lines and ``#`` comments are skipped. Each
line of the configured ``measurement`` (any measurement when none is set) is one sample
row: ``fields`` name, in channel order, the field keys that fill the channels. Lines of
other measurements are ignored (Telegraf batches several plugins' lines into one
message); a message with none of the configured measurement is rejected
(``wrong_measurement``). Field values: floats (``1.5``, ``-2e-3``), integers (``3i``),
unsigned (``3u``) and booleans (``t``/``true``/... = 1, ``f``/``false``/... = 0); a
string field on a channel is ``not_a_number``, a missing one ``missing_field``;
fields not mapped are ignored.

The timestamp is read in ``precision`` (``ns``, Telegraf's and InfluxDB's default,
``us``, ``ms`` or ``s``); a line without one takes the edge's arrival time. A
timestamp that is no integer, or lies outside 2000..2100 (wrong precision, or a clock
never set), is ``bad_timestamp``; any other syntax error is ``bad_line``. One bad line
rejects the whole message.
Line protocol has no sequence number: the engine numbers messages and cannot detect
lost or repeated ones. The device is the topic's ``{device}`` or, with ``device_tag``,
that tag's value on each line (a gateway's batch may then carry several devices; the
engine validates the name like any topic level).

Parsing is ``line-protocol-parser`` (PyPI, MIT, maintained; a small C extension that
follows the InfluxDB parser's escaping rules: ``\\,`` ``\\ `` ``\\=`` in measurement and
tags, ``\\"`` and ``\\\\`` in string fields, 64-bit integer bounds), imported only when an
influx input is configured. Lines are split on newlines before parsing: line protocol
does not allow a raw newline inside a value (InfluxDB's own writers and influxdb-client
escape it in keys and tags), so a string field holding one is rejected as ``bad_line``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from edgeloop.contract import MAX_CHANNELS, MAX_SAMPLES_PER_READING
from edgeloop.errors import MissingExtra, PayloadError
from edgeloop.edge.ingest.codec import Decoded, InputBase, Reading

MIN_TS = 946684800.0
MAX_TS = 4102444800.0
_DIVISOR = {"ns": 1e9, "us": 1e6, "ms": 1e3, "s": 1.0}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_KEY = Annotated[str, Field(min_length=1, max_length=200)]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class InfluxLineInput(InputBase):
    """InfluxDB line protocol, fields mapped to channels in order (see edgeloop.edge.ingest.influx_line)."""

    codec: Literal["influx"]
    measurement: _KEY | None = Field(
        default=None, description="only lines of this measurement are read (others are ignored); absent: any")
    fields: Annotated[list[_KEY], Field(min_length=1, max_length=MAX_CHANNELS)] = Field(
        description="field keys that fill the channels, in channel order")
    device_tag: _KEY | None = Field(
        default=None, description="tag whose value is the device (e.g. host); absent: the topic's {device}")
    precision: Literal["ns", "us", "ms", "s"] = Field(
        default="ns", description="unit of the line's timestamp; a line without one takes the arrival time")

    @model_validator(mode="after")
    def _distinct(self) -> "InfluxLineInput":
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("a field key is mapped twice")
        return self

    @property
    def n_channels(self) -> int | None:
        return len(self.fields)

    def build(self) -> "InfluxLineCodec":
        return InfluxLineCodec(self)


def _load_parser() -> Any:
    try:
        import line_protocol_parser
    except ImportError as exc:
        raise MissingExtra("an influx input", "edge", ["line-protocol-parser"]) from exc
    return line_protocol_parser


class InfluxLineCodec:
    name: ClassVar[str] = "influx"

    def __init__(self, settings: InfluxLineInput) -> None:
        lpp = _load_parser()
        self.parse_line = lpp.parse_line
        self.parse_error = lpp.LineFormatError
        self.measurement = settings.measurement
        self.fields = settings.fields
        self.device_tag = settings.device_tag
        self.divisor = _DIVISOR[settings.precision]
        self.precision = settings.precision

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("bad_line", "payload is not UTF-8 text") from None
        topic_device = fields.get("device", "")
        readings: list[Reading] = []
        seen = 0
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            seen += 1
            if seen > MAX_SAMPLES_PER_READING:
                raise PayloadError("bad_line", f"more than {MAX_SAMPLES_PER_READING} lines in one message")
            point = self._parse(line, number)
            if self.measurement is not None and point["measurement"] != self.measurement:
                continue
            readings.append(self._reading(point, number, topic_device))
        if not seen:
            raise PayloadError("bad_line", "no line of line protocol in the message")
        if not readings:
            raise PayloadError("wrong_measurement", f"no line of measurement {self.measurement!r}")
        return Decoded(readings)

    def _parse(self, line: str, number: int) -> dict:
        try:
            point = self.parse_line(line)
        except (self.parse_error, ValueError, OverflowError) as exc:  # LineFormatError, odd Unicode
            why = str(exc)[:80]
            raise PayloadError("bad_timestamp" if "timestamp" in why else "bad_line", f"line {number}: {why}") from None
        if not isinstance(point, dict):  # the parser's None for a comment: handled above, kept strict
            raise PayloadError("bad_line", f"line {number}: no point")
        return point

    def _reading(self, point: dict, number: int, topic_device: str) -> Reading:
        values = point["fields"]
        row = []
        for key in self.fields:
            if key not in values:
                raise PayloadError("missing_field", f"line {number}: no field {key!r}")
            value = values[key]
            if isinstance(value, bool):
                value = 1.0 if value else 0.0
            elif isinstance(value, (int, float)):
                value = float(value)
            else:
                raise PayloadError("not_a_number", f"line {number}: field {key!r} is {_show(value)}, not a number")
            if not math.isfinite(value) or abs(value) > _FLOAT32_MAX:
                raise PayloadError("non_finite", f"line {number}: field {key!r} is too large for float32")
            row.append(value)
        ts = None
        if point["time"] is not None:
            ts = point["time"] / self.divisor
            if not MIN_TS <= ts < MAX_TS:
                raise PayloadError("bad_timestamp", f"line {number}: timestamp {point['time']} ({self.precision}) "
                                   "is outside 2000..2100 (wrong precision, or clock not set?)")
        device = topic_device
        if self.device_tag is not None:
            device = point["tags"].get(self.device_tag, "")
            if not device:
                raise PayloadError("missing_tag", f"line {number}: no tag {self.device_tag!r} to take the device from")
        return Reading(device, np.array([row], dtype=np.float32), ts=ts)
