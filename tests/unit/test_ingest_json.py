"""The json codec: field mapping, dotted paths, scale/offset, timestamps, sequence, bare values, rejects."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop.errors import PayloadError
from edgeloop.edge.ingest.edgeloop_codec import EdgeloopInput
from edgeloop.edge.ingest.json_codec import JsonInput
from tests.fuzzing import fuzz, json_values, tally

ARRIVAL = 1_800_000_000.0


def codec(**settings):
    return JsonInput(codec="json", topic="t/{device}", **settings).build()


def decode(c, payload, device="d1"):
    doc = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return c.decode("t/" + device, {"device": device}, doc, ARRIVAL)


def one(c, payload):
    decoded = decode(c, payload)
    assert len(decoded.readings) == 1 and not decoded.ended and not decoded.replies
    return decoded.readings[0]


def test_fields_in_order_with_dotted_paths_and_scale():
    # Tasmota's tele/<topic>/SENSOR with an energy monitor and an AM2301 (Tasmota docs).
    c = codec(fields=["ENERGY.Power", {"path": "ENERGY.Voltage", "scale": 0.001}, "AM2301.Temperature",
                      {"path": "AM2301.Humidity", "scale": 0.01, "offset": -0.5}])
    r = one(c, {"Time": "2019-12-02T21:14:48", "ENERGY": {"Power": 44, "Voltage": 231, "Current": 0.2},
                "AM2301": {"Temperature": 21.6, "Humidity": 43.3}, "TempUnit": "C"})
    assert r.device == "d1" and r.samples.dtype == np.float32 and r.samples.shape == (1, 4)
    np.testing.assert_allclose(r.samples[0], [44, 0.231, 21.6, 0.433 - 0.5], rtol=1e-6)
    assert r.ts is None and r.seq is None  # arrival time and arrival numbering: the engine's job


def test_array_index_in_a_path_and_booleans_and_numeric_strings():
    r = one(codec(fields=["a.1", "leak", "s"]), {"a": [1, 2.5], "leak": True, "s": " 7.25 "})
    np.testing.assert_allclose(r.samples[0], [2.5, 1.0, 7.25])


@pytest.mark.parametrize("payload,values", [
    (b"21.5", [21.5]), (b'"21.5"', [21.5]), (b"[1, 2, 3]", [1, 2, 3]), (b"-4", [-4.0]),
])
def test_a_bare_number_or_array_is_one_reading(payload, values):
    np.testing.assert_allclose(one(codec(), payload).samples, [values])


def test_bare_values_with_fields_use_their_scale_in_order():
    np.testing.assert_allclose(one(codec(fields=[{"path": "x", "scale": 10}]), b"2").samples, [[20]])


@pytest.mark.parametrize("fmt,value,zone,ts", [
    ("epoch_s", 1_800_000_123, "UTC", 1_800_000_123.0),
    ("epoch_s", "1800000123.5", "UTC", 1_800_000_123.5),
    ("epoch_ms", 1_800_000_123_456, "UTC", 1_800_000_123.456),
    ("iso8601", "2027-01-15T08:00:00Z", "UTC", datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()),
    ("iso8601", "2027-01-15T08:00:00+01:00", "UTC", datetime(2027, 1, 15, 7, tzinfo=timezone.utc).timestamp()),
    ("iso8601", "2027-01-15T08:00:00", "UTC", datetime(2027, 1, 15, 8, tzinfo=timezone.utc).timestamp()),
    ("iso8601", "2027-01-15T08:00:00", "Europe/Berlin", datetime(2027, 1, 15, 7, tzinfo=timezone.utc).timestamp()),
    ("iso8601", "2027-07-15T08:00:00", "Europe/Berlin", datetime(2027, 7, 15, 6, tzinfo=timezone.utc).timestamp()),
])
def test_timestamp_formats(fmt, value, zone, ts):
    c = codec(fields=["v"], timestamp="meta.time", timestamp_format=fmt, timezone=zone)
    assert one(c, {"v": 1, "meta": {"time": value}}).ts == pytest.approx(ts)


def test_sequence_field():
    assert one(codec(fields=["v"], sequence="n"), {"v": 1, "n": 41}).seq == 41


@pytest.mark.parametrize("settings,payload,reason", [
    ({"fields": ["v"]}, b"{not json", "invalid_json"),
    ({"fields": ["v"]}, b"", "invalid_json"),
    ({"fields": ["a.b"]}, {"a": {"c": 1}}, "missing_field"),
    ({"fields": ["a.b"]}, {"a": 5}, "missing_field"),
    ({"fields": ["a.3"]}, {"a": [1]}, "missing_field"),
    ({"fields": ["v"]}, {"v": "unavailable"}, "not_a_number"),
    ({"fields": ["v"]}, {"v": None}, "not_a_number"),
    ({"fields": ["v"]}, {"v": {"x": 1}}, "not_a_number"),
    ({}, b'"unknown"', "not_a_number"),
    ({}, b"1" + b"0" * 400, "not_a_number"),  # an integer beyond float range
    ({}, b"null", "not_a_number"),
    ({}, {"v": 1}, "wrong_shape"),
    ({}, b"[]", "wrong_shape"),
    ({"fields": ["a", "b"]}, b"[1]", "wrong_shape"),
    ({"fields": ["v"], "timestamp": "t"}, {"v": 1, "t": "yesterday"}, "bad_timestamp"),
    ({"fields": ["v"], "timestamp": "t"}, {"v": 1, "t": 12}, "bad_timestamp"),  # a clock never set
    ({"fields": ["v"], "timestamp": "t"}, {"v": 1, "t": 1e300}, "bad_timestamp"),
    ({"fields": ["v"], "timestamp": "t"}, {"v": 1, "t": True}, "bad_timestamp"),
    ({"fields": ["v"], "timestamp": "t", "timestamp_format": "iso8601"}, {"v": 1, "t": "1970-01-01T00:00:05"}, "bad_timestamp"),
    ({"fields": ["v"], "timestamp": "t", "timestamp_format": "iso8601"}, {"v": 1, "t": 1800000000}, "bad_timestamp"),
    ({"fields": ["v"], "timestamp": "t"}, {"v": 1}, "missing_field"),
    ({"fields": ["v"], "sequence": "n"}, {"v": 1, "n": -1}, "bad_sequence"),
    ({"fields": ["v"], "sequence": "n"}, {"v": 1, "n": 1.5}, "bad_sequence"),
    ({"fields": ["v"], "sequence": "n"}, {"v": 1, "n": "3"}, "bad_sequence"),
])
def test_reject_reasons(settings, payload, reason):
    with pytest.raises(PayloadError) as info:
        decode(codec(**settings), payload)
    assert info.value.reason == reason


def test_payload_strings_are_shown_truncated_never_raw():
    with pytest.raises(PayloadError) as info:
        decode(codec(fields=["v"]), {"v": "\n" + "x" * 500})
    assert "\n" not in str(info.value) and len(str(info.value)) < 120


def test_settings_refuse_paths_with_spaces_and_too_many_fields():
    with pytest.raises(ValueError):
        JsonInput(codec="json", topic="t/{device}", fields=["a b"])
    with pytest.raises(ValueError):
        JsonInput(codec="json", topic="t/{device}", fields=[f"f{i}" for i in range(65)])


# ----------------------------------------------------------------- properties: never crash

REASONS_JSON = {"invalid_json", "missing_field", "not_a_number", "wrong_shape", "bad_timestamp", "bad_sequence"}
MAPPED = codec(fields=["a", "b.c", {"path": "d.0", "scale": 2}], timestamp="t", timestamp_format="iso8601",
               sequence="n")
BARE = codec()


def _check(c, payload, reasons):
    try:
        decoded = c.decode("t/d", {"device": "d"}, payload, ARRIVAL)
    except PayloadError as exc:
        assert exc.reason in reasons, exc.reason
        return
    for r in decoded.readings:
        assert r.samples.dtype == np.float32 and r.samples.ndim == 2 and r.samples.shape[0] == 1


docs = st.fixed_dictionaries(
    {}, optional={"a": json_values, "b": st.one_of(json_values, st.fixed_dictionaries({"c": json_values})),
                  "d": st.lists(json_values, max_size=3), "t": json_values, "n": json_values})


@fuzz
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                 docs.map(lambda v: json.dumps(v).encode())))
def test_json_codec_never_crashes_on_arbitrary_bytes(payload):
    tally("edge: json codec decode", 2)
    _check(MAPPED, payload, REASONS_JSON)
    _check(BARE, payload, REASONS_JSON)


@fuzz
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())))
def test_edgeloop_codec_never_crashes_on_arbitrary_bytes(payload):
    tally("edge: edgeloop codec decode")
    _check(EdgeloopInput().build(), payload, {"malformed_json", "invalid_schema", "non_finite"})
