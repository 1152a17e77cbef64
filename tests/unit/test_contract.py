"""The wire contract: topics and payloads, including everything a hostile peer can send."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.contract import (
    ContractError,
    DeadLetter,
    InferenceResult,
    SensorReading,
    decode_reading,
    decode_results,
    parse_result_topic,
    parse_sensor_topic,
    parse_status_topic,
    result_topic,
    sensor_topic,
)

GOOD_RESULT = dict(
    device="dev-001", sensor="vibration", model="vibration_ae", model_version="1.0.0",
    model_sha256="ab" * 32, ts=1_700_000_000.5, seq=7, outputs=[0.5], score=0.5,
    anomaly=False, label="normal", latency_ms=1.5,
)


def test_contract_imports_without_numpy_or_interpreters():
    import subprocess
    import sys

    code = (
        "import sys; import edgeloop.contract, edgeloop.mqtt, edgeloop.configfile, edgeloop.rejects;"
        "bad = [m for m in ('numpy', 'ai_edge_litert', 'tflite_runtime', 'tensorflow', 'influxdb_client', 'cv2') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "topic,expected",
    [("sensors/dev-1/vibration", ("dev-1", "vibration")), ("sensors/A_b.c:d/t", ("A_b.c:d", "t"))],
)
def test_sensor_topics_parse(topic, expected):
    assert parse_sensor_topic(topic) == expected
    assert sensor_topic(*expected) == topic


@pytest.mark.parametrize(
    "topic",
    [
        "sensors/+/vibration", "sensors/#", "sensors//vibration", "sensors/dev/", "sensors/dev",
        "sensors/dev/vib/extra", "results/dev/vib", "sensors/$SYS/x", "sensors/" + "d" * 65 + "/v",
        "sensors/dev 1/v", "sensors/dév/v", "", "/sensors/dev/v", "sensors/dev/v\x00",
    ],
)
def test_bad_sensor_topics_are_rejected(topic):
    with pytest.raises(ContractError) as info:
        parse_sensor_topic(topic)
    assert info.value.reason == "bad_topic"


def test_result_and_status_topics_round_trip():
    assert parse_result_topic(result_topic("d1", "m1")) == ("d1", "m1")
    assert parse_status_topic("status/edge-1") == "edge-1"
    with pytest.raises(ContractError):
        result_topic("d/1", "m")


@given(st.text(max_size=300))
@settings(max_examples=500)
def test_any_topic_string_parses_or_raises_contract_error(topic):
    try:
        device, sensor = parse_sensor_topic(topic)
    except ContractError as exc:
        assert exc.reason == "bad_topic"
    else:
        assert "+" not in device + sensor and "#" not in device + sensor
        assert topic == f"sensors/{device}/{sensor}"


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"{", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[]", "invalid_schema"),
        (b'{"ts": 1700000000, "seq": 1, "values": [NaN]}', "non_finite"),
        (b'{"ts": 1700000000, "seq": 1, "values": [Infinity, 1]}', "non_finite"),
        (b'{"ts": 1700000000, "seq": 1, "values": []}', "invalid_schema"),
        (b'{"ts": 1700000000, "seq": 1, "values": [[1, 2], [3]]}', "invalid_schema"),
        (b'{"ts": 1700000000, "seq": -1, "values": [1]}', "invalid_schema"),
        (b'{"ts": "now", "seq": 1, "values": [1]}', "invalid_schema"),
        (b'{"ts": 1700000000, "seq": 1, "values": ["1"]}', "invalid_schema"),
        (b'{"ts": 1700000000, "seq": 1, "values": [1], "extra": 1}', "invalid_schema"),
        (b'{"ts": 1700000000, "seq": 1, "values": [1], "v": 2}', "invalid_schema"),
        (b'{"ts": 0, "seq": 1, "values": [1]}', "invalid_schema"),
        (b" " * 2000, "oversized"),
    ],
)
def test_bad_readings_get_a_reason(payload, reason):
    with pytest.raises(ContractError) as info:
        decode_reading(payload, max_bytes=1000)
    assert info.value.reason == reason
    assert str(info.value)


def test_reading_shapes():
    chunk = decode_reading(b'{"ts": 1700000000, "seq": 1, "values": [[1, 2, 3], [4, 5, 6]], "rate_hz": 1000}', 1000)
    assert (chunk.n_samples, chunk.n_channels) == (2, 3)
    single = decode_reading(b'{"ts": 1700000000, "seq": 1, "values": [21.5]}', 1000)
    assert (single.n_samples, single.n_channels) == (1, 1)


@given(st.binary(max_size=2000))
@settings(max_examples=500)
def test_any_bytes_decode_or_raise_contract_error(payload):
    try:
        reading = decode_reading(payload, max_bytes=1500)
    except ContractError as exc:
        assert exc.reason in {"malformed_json", "invalid_schema", "non_finite", "oversized"}
    else:
        assert reading.n_samples >= 1


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["ts", "seq", "values", "v", "rate_hz", "x"]), children, max_size=5),
    max_leaves=30,
)


@given(json_values)
@settings(max_examples=500)
def test_any_json_document_decodes_or_raises_contract_error(doc):
    try:
        decode_reading(json.dumps(doc).encode(), max_bytes=100_000)
    except ContractError as exc:
        assert exc.reason in {"invalid_schema", "non_finite", "malformed_json"}


def test_results_decode_single_and_array():
    one = InferenceResult(**GOOD_RESULT).model_dump_json().encode()
    assert len(decode_results(one, 10_000)) == 1
    assert len(decode_results(b"[" + one + b"," + one + b"]", 10_000)) == 2
    with pytest.raises(ContractError):
        decode_results(one.replace(b'"seq":7', b'"seq":"x"'), 10_000)


def test_result_rejects_nan_score_and_wildcard_device():
    with pytest.raises(ValueError):
        InferenceResult(**{**GOOD_RESULT, "score": float("nan")})
    with pytest.raises(ValueError):
        InferenceResult(**{**GOOD_RESULT, "device": "dev/+"})


def test_dead_letter_truncates_payload():
    letter = DeadLetter.build("edge", "sensors/x/y", b"x" * 5000, "oversized", "too big", keep_bytes=100)
    assert letter.truncated and letter.payload_bytes == 5000
    assert len(letter.payload_b64) <= 140
    assert SensorReading  # the model is exported for consumers
