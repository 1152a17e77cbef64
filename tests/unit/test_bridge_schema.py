"""Line protocol of the bridge: exact strings, escaping, and a round-trip property.

The round trip uses a small parser written from influxd 1.x's rules (below), and
compares with influxdb-client's ``Point`` encoding of the same values.
"""

from __future__ import annotations

import json
import math
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision

from edgeloop.bridge.config import InfluxSettings
from edgeloop.bridge.schema import (
    LineEncoder,
    escape_measurement,
    escape_string,
    escape_tag,
    result_line,
    status_line,
)
from edgeloop.contract import TOPIC_LEVEL_PATTERN, ContractError, decode_results, decode_status

SHA = "0123456789abcdef" * 4
CFG = InfluxSettings(tags={"env": "prod"})


def result_payload(**over) -> dict:
    base = {
        "device": "dev-1",
        "sensor": "accel",
        "model": "vibration_ae",
        "model_version": "1.0.0",
        "model_sha256": SHA,
        "ts": 1795740561.25,
        "seq": 42,
        "outputs": [1, 0.5, -2.0],
        "score": 0.0123,
        "anomaly": True,
        "label": "fault",
        "latency_ms": 1.5,
        "node": "edge-1",
        "site": "plant-a",
    }
    base.update(over)
    return base


def decode_one(**over):
    return decode_results(json.dumps(result_payload(**over)).encode(), 1 << 20)[0]


# --------------------------------------------------------------------------- exact strings


def test_result_line_is_exactly_the_documented_shape():
    line = result_line(decode_one(), CFG)
    assert line == (
        "inference,device=dev-1,env=prod,model=vibration_ae,model_version=1.0.0,node=edge-1,"
        "sensor=accel,site=plant-a "
        'score=0.0123,anomaly=true,label="fault",latency_ms=1.5,seq=42i,'
        f'model_sha256="{SHA}",out_0=1.0,out_1=0.5,out_2=-2.0 1795740561250000000'
    )


def test_optional_tags_are_left_out_and_outputs_may_be_empty():
    line = result_line(decode_one(node=None, site=None, outputs=[], anomaly=False), InfluxSettings())
    assert line == (
        "inference,device=dev-1,model=vibration_ae,model_version=1.0.0,sensor=accel "
        'score=0.0123,anomaly=false,label="fault",latency_ms=1.5,seq=42i,'
        f'model_sha256="{SHA}" 1795740561250000000'
    )


def test_measurement_names_come_from_the_config():
    cfg = InfluxSettings(measurements={"results": "edge results", "status": "st,at"})
    assert result_line(decode_one(), cfg).startswith("edge\\ results,device=dev-1,")
    status = decode_status(json.dumps({"node": "n1", "state": "online", "ts": 10.0}).encode(), 4096)
    assert status_line(status, cfg).startswith("st\\,at,node=n1 ")


def test_status_line():
    status = decode_status(
        json.dumps(
            {
                "node": "edge-1",
                "state": "online",
                "ts": 1795740561.5,
                "site": "plant-a",
                "runtime_version": '0.1 "beta"',
                "models": {
                    "zeta": {"version": "2", "sha256": SHA},
                    "alpha": {"version": "1.0.0", "sha256": SHA},
                },
            }
        ).encode(),
        4096,
    )
    assert status_line(status, CFG) == (
        'node_status,env=prod,node=edge-1,site=plant-a online=true,models="alpha=1.0.0,zeta=2",'
        'runtime_version="0.1 \\"beta\\"" 1795740561500000000'
    )
    offline = decode_status(json.dumps({"node": "edge-1", "state": "offline", "ts": 2.0}).encode(), 4096)
    assert status_line(offline, InfluxSettings()) == 'node_status,node=edge-1 online=false,models="" 2000000000'


def test_redelivery_encodes_to_the_same_line():
    assert result_line(decode_one(), CFG) == result_line(decode_one(), CFG)


@pytest.mark.parametrize(
    ("ts", "ns"),
    [
        (0.000001, 1000),
        (1.0, 1_000_000_000),
        (1795740561.25, 1795740561_250000000),
        (1795740561.123456, 1795740561_123456000),
        (1795740561.123457, 1795740561_123457000),  # windows 1 µs apart stay apart
        (4102444799.999999, 4102444799_999999000),
    ],
)
def test_timestamp_is_device_time_in_whole_microseconds(ts, ns):
    line = result_line(decode_one(ts=ts), CFG)
    assert line.rsplit(" ", 1)[1] == str(ns)


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [("inference", "inference"), ("a b", "a\\ b"), ("a,b", "a\\,b"), ("a=b", "a=b"), ('a"b', 'a"b')],
)
def test_escape_measurement(raw, escaped):
    assert escape_measurement(raw) == escaped


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a b", "a\\ b"),
        ("a,b", "a\\,b"),
        ("a=b", "a\\=b"),
        (" ,=", "\\ \\,\\="),
        ('a"b', 'a"b'),
        ("é€😀", "é€😀"),
    ],
)
def test_escape_tag(raw, escaped):
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize("raw", ["", "a\\b", "trailing\\", "a\nb", "a\rb", "a\tb", "nul\x00", "del\x7f"])
def test_tags_influxd_would_alter_or_reject_are_unencodable(raw):
    with pytest.raises(ContractError) as info:
        escape_tag(raw)
    assert info.value.reason == "unencodable"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("trailing\\", "trailing\\\\"),
        ('\\"', '\\\\\\"'),
        ("tab\tand nul\x00", "tab\tand nul\x00"),
        ("a,b=c d", "a,b=c d"),
    ],
)
def test_escape_string(raw, escaped):
    assert escape_string(raw) == escaped


@pytest.mark.parametrize("raw", ["a\nb", "a\rb", "\r\n"])
def test_line_breaks_in_string_fields_are_unencodable(raw):
    with pytest.raises(ContractError) as info:
        escape_string(raw)
    assert info.value.reason == "unencodable"


def test_result_with_unencodable_values_raises_contract_error():
    for over in ({"label": "two\nlines"}, {"model_version": "1.0\\"}, {"model_version": "v\t1"}):
        with pytest.raises(ContractError) as info:
            result_line(decode_one(**over), CFG)
        assert info.value.reason == "unencodable"


def test_awkward_but_representable_values_are_escaped():
    line = result_line(decode_one(model_version="1.0 rc,1=x", label='a "b" \\ c'), CFG)
    assert "model_version=1.0\\ rc\\,1\\=x," in line
    assert 'label="a \\"b\\" \\\\ c"' in line


# --------------------------------------------------------------------------- a parser from influxd's rules


def _scan(line: str, i: int, stops: str, escapable: str) -> tuple[str, int]:
    """Read until an unescaped char of ``stops``; unescape ``\\x`` only for x in ``escapable``."""
    out = []
    while i < len(line) and line[i] not in stops:
        if line[i] == "\\" and i + 1 < len(line) and line[i + 1] in escapable:
            out.append(line[i + 1])
            i += 2
        else:
            out.append(line[i])
            i += 1
    return "".join(out), i


def parse_line(line: str) -> tuple[str, dict, dict, int]:
    """(measurement, tags, fields, timestamp) of one line, with influxd 1.x's type rules."""
    assert "\n" not in line and "\r" not in line
    measurement, i = _scan(line, 0, ", ", ", ")
    tags: dict[str, str] = {}
    while line[i] == ",":
        key, i = _scan(line, i + 1, "=", ",= ")
        value, i = _scan(line, i + 1, ", ", ",= ")
        assert key and value and not value.endswith("\\"), line
        tags[key] = value
    assert line[i] == " "
    i += 1
    fields: dict[str, object] = {}
    while True:
        key, i = _scan(line, i, "=", ",= ")
        i += 1
        if line[i] == '"':
            value, i = _scan(line, i + 1, '"', '"\\')
            fields[key] = value
            i += 1
        else:
            token, i = _scan(line, i, ", ", "")
            if token.endswith("i"):
                fields[key] = int(token[:-1])
            elif token in ("true", "false"):
                fields[key] = token == "true"
            else:
                fields[key] = ("float", float(token), token)
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    return measurement, tags, fields, int(line[i + 1 :])


def _floats_only(fields: dict) -> dict:
    return {k: (v[1] if isinstance(v, tuple) else v) for k, v in fields.items()}


def point_line(r) -> str:
    p = Point("inference")
    for key in ("device", "sensor", "model", "model_version", "node", "site"):
        if getattr(r, key) is not None:
            p = p.tag(key, getattr(r, key))
    p = p.tag("env", "prod")
    p = p.field("score", r.score).field("anomaly", r.anomaly).field("label", r.label)
    p = p.field("latency_ms", r.latency_ms).field("seq", r.seq).field("model_sha256", r.model_sha256)
    for i, value in enumerate(r.outputs):
        p = p.field(f"out_{i}", value)
    return p.time(round(r.ts * 1e6) * 1000, WritePrecision.NS).to_line_protocol()


# --------------------------------------------------------------------------- property

levels = st.from_regex(TOPIC_LEVEL_PATTERN, fullmatch=True)
awkward = st.sampled_from(
    ['"', "\\", "\\\\", '\\"', " ", ",", "=", "a b,c=d", "é", "€", "😀", "\u200b", "\ufeff", "\x00",
     "\t", "\n", "\r\n", "ß", "\u0301", "日本語", "\U0010ffff", "i", "1i", "true", "-"]
)
texts = st.one_of(
    st.text(min_size=1, max_size=64),
    st.lists(awkward, min_size=1, max_size=8).map("".join).filter(lambda s: len(s) <= 64),
    st.text(alphabet=string.printable, min_size=1, max_size=64),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
results = st.fixed_dictionaries(
    {
        "device": levels,
        "sensor": levels,
        "model": levels,
        "model_version": texts,
        "model_sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
        "ts": st.floats(min_value=1e-6, max_value=4102444799.0),
        "seq": st.integers(min_value=0, max_value=2**63 - 1),
        "outputs": st.lists(st.one_of(finite, st.integers(-(2**40), 2**40)), max_size=20),
        "score": finite,
        "anomaly": st.booleans(),
        "label": texts,
        "latency_ms": st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    },
    optional={"node": levels, "site": levels},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results)
def test_any_valid_result_round_trips_or_is_refused_as_unencodable(payload):
    result = decode_results(json.dumps(payload).encode(), 1 << 20)[0]
    encoder = LineEncoder(CFG)
    try:
        line = encoder.result(result)
    except ContractError as exc:
        assert exc.reason == "unencodable"
        assert re.search(r"[\\\x00-\x1f\x7f]", result.model_version) or re.search(r"[\r\n]", result.label)
        return
    measurement, tags, fields, ts = parse_line(line)
    assert measurement == "inference"
    expected_tags = {k: getattr(result, k) for k in ("device", "sensor", "model", "model_version", "node", "site")}
    assert tags == {**{k: v for k, v in expected_tags.items() if v is not None}, "env": "prod"}
    assert ts == round(result.ts * 1e6) * 1000
    assert fields["seq"] == result.seq and type(fields["seq"]) is int
    assert fields["anomaly"] is result.anomaly
    assert fields["label"] == result.label
    assert fields["model_sha256"] == result.model_sha256
    for key in ("score", "latency_ms"):
        assert fields[key][1] == getattr(result, key)
    outs = {k: v for k, v in fields.items() if k.startswith("out_")}
    assert list(outs) == [f"out_{i}" for i in range(len(result.outputs))]
    for i, value in enumerate(result.outputs):
        kind, parsed, token = outs[f"out_{i}"]
        assert parsed == value and math.copysign(1, parsed) == math.copysign(1, value)
        assert re.search(r"[.e]", token), f"out_{i}={token} would be stored as an integer-looking float"
    # Same point as influxdb-client's own encoder (which writes 1.0 as "1" and sorts fields).
    _, p_tags, p_fields, p_ts = parse_line(point_line(result))
    assert (p_tags, _floats_only(p_fields), p_ts) == (tags, _floats_only(fields), ts)


@settings(max_examples=100, deadline=None)
@given(
    node=levels,
    site=st.one_of(st.none(), levels),
    state=st.sampled_from(["online", "offline"]),
    versions=st.dictionaries(levels, st.text(min_size=1, max_size=64), max_size=5),
    runtime_version=st.one_of(st.none(), st.text(max_size=64)),
)
def test_any_status_round_trips_or_is_refused(node, site, state, versions, runtime_version):
    payload = {
        "node": node,
        "site": site,
        "state": state,
        "ts": 1795740561.0,
        "runtime_version": runtime_version,
        "models": {name: {"version": v, "sha256": SHA} for name, v in versions.items()},
    }
    status = decode_status(json.dumps(payload).encode(), 1 << 20)
    try:
        line = status_line(status, CFG)
    except ContractError as exc:
        assert exc.reason == "unencodable"
        assert any(re.search(r"[\r\n]", s or "") for s in [runtime_version, *versions.values()])
        return
    measurement, tags, fields, ts = parse_line(line)
    assert measurement == "node_status"
    assert tags == {"node": node, **({"site": site} if site else {}), "env": "prod"}
    assert fields["online"] is (state == "online")
    assert fields["models"] == ",".join(f"{k}={versions[k]}" for k in sorted(versions))
    assert fields.get("runtime_version") == runtime_version
    assert ts == 1795740561000000000
