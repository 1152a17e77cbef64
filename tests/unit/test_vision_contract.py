"""Frame messages on the wire: topics, FrameMeta in v5 user properties or the 3.1.1 header, top-k results."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from helpers import result
from hypothesis import strategies as st

from edgeloop.contract import (
    FRAME_HEADER_MAGIC,
    ContractError,
    FrameMeta,
    InferenceResult,
    decode_frame,
    decode_results,
    encode_frame,
    frame_topic,
    parse_frame_topic,
)

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32 + b"\xff\xd9"


def test_frame_topic_round_trip_and_bad_topics():
    assert frame_topic("cam-01", "belt") == "frames/cam-01/belt"
    assert parse_frame_topic("frames/cam-01/belt") == ("cam-01", "belt")
    for bad in ["frames/a", "frames/a/b/c", "sensors/a/b", "frames/+/belt", "frames/a/$x", "frames//b"]:
        with pytest.raises(ContractError) as info:
            parse_frame_topic(bad)
        assert info.value.reason == "bad_topic"
    with pytest.raises(ContractError):
        frame_topic("a/b", "belt")


def test_metadata_in_user_properties():
    meta = FrameMeta(ts=1_700_000_000.123456, seq=42, label="defect")
    props = meta.user_properties()
    assert dict(props) == {"v": "1", "ts": "1700000000.123456", "seq": "42", "label": "defect"}
    got, image = decode_frame(JPEG, props + [("x-broker", "ignored")], 1024)
    assert got == meta and image == JPEG


def test_metadata_in_header_wins_over_properties():
    meta = FrameMeta(ts=1_700_000_001.5, seq=7)
    payload = encode_frame(meta, JPEG, header=True)
    assert payload.startswith(FRAME_HEADER_MAGIC)
    n = int.from_bytes(payload[4:6], "big")
    assert json.loads(payload[6 : 6 + n]) == {"v": 1, "ts": 1_700_000_001.5, "seq": 7}
    other = FrameMeta(ts=1_700_000_009.0, seq=99).user_properties()
    assert decode_frame(payload, other, 1024) == (meta, JPEG)
    assert encode_frame(meta, JPEG, header=False) == JPEG


@pytest.mark.parametrize(
    "payload, props, reason",
    [
        (b"", None, "empty_frame"),
        (JPEG * 100, FrameMeta(ts=1.7e9, seq=1).user_properties(), "oversized"),
        (JPEG, None, "missing_meta"),
        (JPEG, [("ts", "1.7e9")], "missing_meta"),
        (JPEG, [("ts", "soon"), ("seq", "1")], "invalid_schema"),
        (JPEG, [("ts", "nan"), ("seq", "1")], "non_finite"),
        (JPEG, [("ts", "inf"), ("seq", "1")], "non_finite"),
        (JPEG, [("ts", "-5"), ("seq", "1")], "invalid_schema"),
        (JPEG, [("ts", "1.7e9"), ("seq", "-1")], "invalid_schema"),
        (JPEG, [("ts", "1.7e9"), ("seq", "1"), ("v", "2")], "invalid_schema"),
        (JPEG, [("ts", "1.7e9"), ("seq", "1"), ("label", "x" * 65)], "invalid_schema"),
        (b"GIF89a....", [("ts", "1.7e9"), ("seq", "1")], "not_jpeg"),
        (FRAME_HEADER_MAGIC, None, "bad_header"),
        (FRAME_HEADER_MAGIC + b"\x00\x00" + JPEG, None, "bad_header"),
        (FRAME_HEADER_MAGIC + b"\x04\x01" + b"{}" * 300, None, "bad_header"),
        (FRAME_HEADER_MAGIC + b"\x00\x40{}", None, "bad_header"),
        (FRAME_HEADER_MAGIC + b"\x00\x02{}" + JPEG, None, "invalid_schema"),
        (FRAME_HEADER_MAGIC + b"\x00\x03{x}" + JPEG, None, "malformed_json"),
        (FrameMeta(ts=1.7e9, seq=1).header(), None, "empty_frame"),
    ],
)
def test_bad_frames_have_stable_reasons(payload, props, reason):
    with pytest.raises(ContractError) as info:
        decode_frame(payload, props, 1024)
    assert info.value.reason == reason
    assert str(info.value)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=256) | st.binary(max_size=64).map(lambda b: FRAME_HEADER_MAGIC + b),
    props=st.none() | st.lists(st.tuples(st.sampled_from(["v", "ts", "seq", "label", "x"]), st.text(max_size=24))),
)
def test_decode_frame_raises_only_contract_errors(payload, props):
    try:
        meta, image = decode_frame(payload, props, 200)
    except ContractError as exc:
        assert exc.reason
    else:
        assert isinstance(meta, FrameMeta) and image[:2] == b"\xff\xd8"


def _result(**extra) -> dict:
    return result("cam-1", "parts_cnn", 3, sensor="belt", outputs=[0.1, 0.7, 0.2], score=0.7, **extra)


def test_results_carry_optional_topk():
    plain = decode_results(json.dumps(_result()).encode(), 4096)[0]
    assert plain.topk is None
    topk = [{"label": "ok", "score": 0.7}, {"label": "defect", "score": 0.2}]
    result = decode_results(json.dumps(_result(topk=topk)).encode(), 4096)[0]
    assert [(t.label, t.score) for t in result.topk] == [("ok", 0.7), ("defect", 0.2)]
    assert InferenceResult.model_validate_json(result.model_dump_json()) == result
    for bad in ([{"label": "", "score": 1.0}], [{"label": "a", "score": "x"}], [{"label": "a"}] * 33):
        with pytest.raises(ContractError):
            decode_results(json.dumps(_result(topk=bad)).encode(), 1 << 20)


def test_contract_still_imports_without_numpy():
    assert "edgeloop.contract" in sys.modules
    import subprocess

    code = "import sys, edgeloop.contract; assert 'numpy' not in sys.modules and 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_frame_samples_are_told_apart_from_feature_samples():
    import base64

    from edgeloop.contract import decode_frame_sample, decode_samples

    sample = {
        "stage": "frame", "device": "cam-1", "sensor": "belt", "model": "parts_cnn_int8", "model_version": "1.0.0",
        "model_sha256": "0" * 64, "ts": 1.7e9, "seq": 3, "label": "ok", "score": 0.55, "truth": "defect",
        "width": 160, "height": 120, "jpeg_b64": base64.b64encode(JPEG).decode(),
    }
    got = decode_frame_sample(json.dumps(sample).encode(), 1 << 20)
    assert got.jpeg() == JPEG and got.reason == "low_confidence"
    with pytest.raises(ContractError):
        decode_samples(json.dumps(sample).encode(), 1 << 20)  # the feature store refuses it, by schema
    for bad in ({"stage": "features"}, {"jpeg_b64": ""}, {"width": 0}, {"extra": 1}):
        with pytest.raises(ContractError):
            decode_frame_sample(json.dumps({**sample, **bad}).encode(), 1 << 20)
