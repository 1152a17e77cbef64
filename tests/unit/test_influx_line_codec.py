"""The influx codec against line protocol written by a third-party encoder (influxdb-client's Point, with
nasty keys and values) and as Telegraf writes it, each reject reason, and a property test."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision
from pydantic import ValidationError
import yaml

from edgeloop.errors import PayloadError
from edgeloop.edge.ingest.codec import Decoded
from edgeloop.edge.ingest.influx_line import InfluxLineInput
from docblocks import fenced
from fuzzing import NASTY_TEXT, fuzz, tally

README = Path(__file__).resolve().parents[2] / "README.md"

NOW = 1_764_460_800.0
TS_NS = 1_700_000_000_123_456_789

# Telegraf's inputs.sensors lines (its README's example output), batched by outputs.mqtt (batch = true):
# one line per metric, "\n" after each, nanosecond timestamps.
TELEGRAF_SENSORS = (
    b"sensors,chip=power_meter-acpi-0,feature=power1,host=pi-kitchen power_average=0,power_average_interval=300"
    b" 1700000000000000000\n"
    b"sensors,chip=k10temp-pci-00c3,feature=temp1,host=pi-kitchen temp_crit=70,temp_crit_hyst=65,temp_input=29,"
    b"temp_max=70 1700000000000000000\n"
    b"sensors,chip=k10temp-pci-00c3,feature=temp1,host=pi-kitchen temp_crit=70,temp_crit_hyst=65,temp_input=29.5,"
    b"temp_max=70 1700000010000000000\n"
)
# A BME280 read by Telegraf's inputs.mqtt_consumer/exec and sent on, with integer and boolean fields.
TELEGRAF_ENV = (
    b"environment,host=gw-1,location=greenhouse\\ north temperature=21.5,humidity=45.25,pressure=101325i,"
    b'heater=false,status="ok" 1700000000000000000\r\n'
    b"environment,host=gw-1,location=greenhouse\\ north temperature=21.75,humidity=45.5,pressure=101320i,"
    b'heater=true,status="ok" 1700000001000000000\r\n'
)


def codec(**settings):
    return InfluxLineInput(codec="influx", **settings).build()


def decode(c, payload, device="dev1", arrival=NOW) -> Decoded:
    return c.decode("telegraf/" + device, {"device": device}, payload, arrival)


def rows(decoded: Decoded) -> list[tuple[str, float | None, list[float]]]:
    return [(r.device, r.ts, [float(x) for x in r.samples[0]]) for r in decoded.readings]


def reject(c, payload) -> PayloadError:
    with pytest.raises(PayloadError) as err:
        decode(c, payload)
    return err.value


# ---------------------------------------------------------------------- Telegraf


def test_telegraf_batch_one_row_per_line_of_the_measurement():
    c = codec(measurement="sensors", fields=["temp_input", "temp_max"], device_tag="host")
    # the power_meter line is the same measurement but has no temp_input: a missing field
    assert reject(c, TELEGRAF_SENSORS).reason == "missing_field"
    lines = TELEGRAF_SENSORS.split(b"\n", 1)[1]
    assert rows(decode(c, lines)) == [("pi-kitchen", 1.7e9, [29.0, 70.0]), ("pi-kitchen", 1.7e9 + 10, [29.5, 70.0])]


def test_telegraf_integers_booleans_escaped_tags_and_crlf():
    c = codec(measurement="environment", fields=["temperature", "humidity", "pressure", "heater"])
    assert rows(decode(c, TELEGRAF_ENV)) == [
        ("dev1", 1.7e9, [21.5, 45.25, 101325.0, 0.0]),
        ("dev1", 1.7e9 + 1, [21.75, 45.5, 101320.0, 1.0]),
    ]
    by_tag = codec(fields=["temperature"], device_tag="location")
    assert {r.device for r in decode(by_tag, TELEGRAF_ENV).readings} == {"greenhouse north"}


def test_other_measurements_are_ignored_and_none_is_a_reject():
    mixed = b"cpu,host=a usage_idle=99.1 1700000000000000000\nenv,host=a t=20.5 1700000000000000000\n"
    assert rows(decode(codec(measurement="env", fields=["t"]), mixed)) == [("dev1", 1.7e9, [20.5])]
    assert reject(codec(measurement="mem", fields=["t"]), mixed).reason == "wrong_measurement"


def test_the_readme_example_is_what_it_says():
    settings = yaml.safe_load(fenced(README, "yaml influx-config")[0])["input"]
    [lines] = fenced(README, "text influx-lines")
    assert rows(decode(InfluxLineInput(**settings).build(), lines.encode())) == [
        ("gw-1", 1764460800.0, [21.5, 45.0, 1013.25]), ("gw-1", 1764460801.0, [21.75, 46.0, pytest.approx(1013.2)])]


# ---------------------------------------------------------------------- influxdb-client's encoder

# Values the client must escape; a tag value ending in a backslash or holding \t \n \r is left out
# (line protocol cannot carry those in tags: the client appends a space or writes a literal "\t").
TAG_VALUES = ["a b", "a,b", "a=b", "a\\b", '"quoted"', "é🙂", "x,y=z w", "=", ",", "\\\\,"]
STRING_FIELDS = ["a b", 'say "hi"', "back\\slash", "trailing\\", "é🙂", "a,b=c", "tab\there", ""]


@pytest.mark.parametrize("value", TAG_VALUES)
def test_point_with_nasty_tags_measurement_and_keys(value):
    point = (Point("env, room=1").tag("dev ice,=", value).tag("other", value)
             .field("temp C", 21.5).field("hum,=x", 45).field("n", True).field("s", value)
             .time(TS_NS, WritePrecision.NS))
    line = point.to_line_protocol()
    c = codec(measurement="env, room=1", fields=["temp C", "hum,=x", "n"], device_tag="dev ice,=")
    [reading] = decode(c, line.encode()).readings
    assert reading.device == value
    assert reading.samples.tolist() == [[21.5, 45.0, 1.0]]
    assert reading.ts == pytest.approx(TS_NS / 1e9)


@pytest.mark.parametrize("text", STRING_FIELDS)
def test_point_with_nasty_string_fields_is_read_past(text):
    line = Point("m").field("s", text).field("v", -1.5e-3).field("u", 7).to_line_protocol()
    [(device, ts, values)] = rows(decode(codec(fields=["v", "u"]), line.encode()))
    assert (device, ts) == ("dev1", None) and values == pytest.approx([-1.5e-3, 7.0])
    assert reject(codec(fields=["s"]), line.encode()).reason == "not_a_number"


def test_a_raw_newline_in_a_string_field_is_a_bad_line():
    line = Point("m").field("s", "two\nlines").field("v", 1.0).to_line_protocol()
    assert "\n" in line  # the client does not escape it; line protocol has no room for it
    assert reject(codec(fields=["v"]), line.encode()).reason == "bad_line"


@pytest.mark.parametrize("precision, stamp", [("ns", TS_NS), ("us", TS_NS // 10**3), ("ms", TS_NS // 10**6),
                                              ("s", TS_NS // 10**9)])
def test_precisions(precision, stamp):
    line = f"m v=1 {stamp}".encode()
    [reading] = decode(codec(fields=["v"], precision=precision), line).readings
    assert reading.ts == pytest.approx(stamp / {"ns": 1e9, "us": 1e6, "ms": 1e3, "s": 1}[precision])
    if precision != "ns":  # read as nanoseconds, the same number is 1970: refused, not believed
        assert reject(codec(fields=["v"]), line).reason == "bad_timestamp"


def test_batches_of_many_devices_by_tag():
    batch = "\n".join(Point("env").tag("host", f"node-{i}").field("t", float(i)).time(TS_NS + i).to_line_protocol()
                      for i in range(50))
    out = rows(decode(codec(fields=["t"], device_tag="host"), batch.encode()))
    assert [(d, v) for d, _, v in out] == [(f"node-{i}", [float(i)]) for i in range(50)]


# ---------------------------------------------------------------------- rejects


@pytest.mark.parametrize("payload, reason", [
    (b"", "bad_line"),
    (b"\n# only a comment\n\n", "bad_line"),
    (b"\xff\xfe m v=1", "bad_line"),
    (b"m", "bad_line"),
    (b"m v=", "bad_line"),
    (b"m v=1 abc", "bad_timestamp"),
    (b'm v="unterminated', "bad_line"),
    (b"m v=1i2", "bad_line"),
    (b"m v=NaN", "bad_line"),
    (b"m v=+1", "bad_line"),
    (b"m v=9223372036854775808i", "bad_line"),
    (b"m v=-1u", "bad_line"),
    (b"m v=1\x00", "bad_line"),
    (b"m,=x v=1", "bad_line"),
    (b"m v=1 99999999999999999999999", "bad_timestamp"),
    (b"m v=1 1.5", "bad_timestamp"),
    (b"m w=1", "missing_field"),
    (b'm v="1"', "not_a_number"),
    (b"m v=1e300", "non_finite"),
    (b"m v=1 5", "bad_timestamp"),
    (b"m v=1 -1700000000000000000", "bad_timestamp"),
    (b"m v=1 9223372036854775806", "bad_timestamp"),
    (b"m v=1\nm v=2 abc", "bad_timestamp"),  # one bad line rejects the whole message
    (b"m v=1\n" * 4097, "bad_line"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_reject_reasons(payload, reason):
    assert reject(codec(fields=["v"]), payload).reason == reason


def test_device_tag_missing_on_a_line():
    assert reject(codec(fields=["v"], device_tag="host"), b"m,site=a v=1").reason == "missing_tag"


def test_blank_lines_and_comments_are_skipped_and_values_typed():
    payload = b"# written by hand\n\nm v=1e3,w=-2i,x=3u,y=T,z=FALSE\n   \nm v=.5,w=0i,x=0u,y=true,z=F\n"
    assert rows(decode(codec(fields=["v", "w", "x", "y", "z"]), payload)) == [
        ("dev1", None, [1000.0, -2.0, 3.0, 1.0, 0.0]), ("dev1", None, [0.5, 0.0, 0.0, 1.0, 0.0])]


def test_settings_are_checked():
    with pytest.raises(ValidationError, match="mapped twice"):
        InfluxLineInput(codec="influx", fields=["a", "a"])
    with pytest.raises(ValidationError):
        InfluxLineInput(codec="influx", fields=[])
    with pytest.raises(ValidationError):
        InfluxLineInput(codec="influx", fields=["a"], precision="m")
    assert InfluxLineInput(codec="influx", fields=["a", "b"]).n_channels == 2


# ---------------------------------------------------------------------- property tests

FUZZ_CODEC = codec(measurement="env", fields=["t", "h"], device_tag="host")
VALID_LINE = 'env,host=gw-1,site=a\\ b t=21.5,h=40i,ok=true,s="x \\"y\\"" 1700000000000000000'
PIECES = [" ", ",", "=", "\\", '"', "\n", "\r", "#", "i", "u", "t", "e", "-", ".", "0", "9", "\x00", "é", "🙂"]


def _never_crashes(payload: bytes) -> None:
    try:
        out = decode(FUZZ_CODEC, payload)
    except PayloadError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    for reading in out.readings:
        assert reading.samples.shape == (1, 2) and reading.device
        assert reading.ts is None or math.isfinite(reading.ts)


@fuzz
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash(payload):
    tally("influx.bytes")
    _never_crashes(payload)


@st.composite
def mutated_lines(draw: st.DrawFn) -> bytes:
    """The valid line with a few characters replaced, inserted or deleted, often where escaping matters."""
    line = list(VALID_LINE)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(line)))
        action = draw(st.sampled_from(["insert", "replace", "delete"]))
        piece = draw(st.sampled_from(PIECES + NASTY_TEXT) | st.text(max_size=3))
        if action == "insert" or at == len(line):
            line[at:at] = list(piece)
        elif action == "replace":
            line[at:at + 1] = list(piece)
        else:
            del line[at]
    lines = ["".join(line)] * draw(st.integers(1, 3))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@fuzz
@given(mutated_lines())
def test_mutated_lines_never_crash(payload):
    tally("influx.lines")
    _never_crashes(payload)
