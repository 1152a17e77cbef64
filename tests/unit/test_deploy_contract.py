"""The signed manifest, chunk topics and keys: what verifies, what is refused, and that nothing crashes."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.errors import ConfigError
from edgeloop.signing import SigningKey, VerifyKey, generate_keypair
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.contract import ContractError
from edgeloop.deploy_contract import (
    REFUSAL_REASONS,
    DeployRefused,
    ModelManifest,
    SelfTest,
    canonical_bytes,
    chunk_count,
    chunk_filter,
    chunk_topic,
    deploy_topic,
    expected_chunk_length,
    parse_chunk_topic,
    parse_deploy_topic,
    sign_manifest,
    split_chunks,
    verify_manifest,
)
from edgeloop.modelfile import load_model_files

KEY = SigningKey.generate()
OTHER = SigningKey.generate()
CONTENT, META = load_model_files(BUNDLED_MODEL)


def manifest(**update) -> ModelManifest:
    fields = {
        "model": META.name, "version": META.version, "sha256": META.sha256, "size": len(CONTENT),
        "chunk_size": 1024, "chunks": chunk_count(len(CONTENT), 1024), "targets": ["*"],
        "deploy_id": "0123456789abcdef", "created": 1.7e9, "metadata": META,
        "selftest": SelfTest(inputs=[[0.0] * 30], expected=[[1.0]]),
    }
    fields.update(update)
    return ModelManifest(**fields)


def signed(**update) -> bytes:
    return sign_manifest(manifest(**update), KEY)


def refused(payload: bytes, key=KEY.public) -> str:
    with pytest.raises(DeployRefused) as info:
        verify_manifest(payload, key)
    assert info.value.reason in REFUSAL_REASONS
    return info.value.reason


def test_a_signed_manifest_verifies_to_the_same_manifest():
    original = manifest(targets=["edge-1", "site-a-*"], phase="canary", parent="0.9.0")
    parsed = verify_manifest(sign_manifest(original, KEY), KEY.public)
    assert parsed.unsigned_dict() | {"key_id": KEY.key_id} == original.unsigned_dict() | {"key_id": KEY.key_id}
    assert parsed.key_id == KEY.key_id and parsed.signature
    assert parsed.targets_node("edge-1") and parsed.targets_node("site-a-7") and not parsed.targets_node("edge-2")


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d: d.pop("signature"), "unsigned"),
        (lambda d: d.update(signature=None), "unsigned"),
        (lambda d: d.update(targets=["evil-*"]), "bad_signature"),
        (lambda d: d.update(sha256="0" * 64), "bad_signature"),
        (lambda d: d["metadata"].update(threshold=99.0), "bad_signature"),
        (lambda d: d.update(signature="not base64!"), "bad_signature"),
        (lambda d: d.update(signature=base64.b64encode(b"x" * 64).decode()), "bad_signature"),
        (lambda d: d.update(signature=12), "bad_signature"),
        (lambda d: d.update(key_id="f" * 16), "unknown_key"),
        (lambda d: d.pop("key_id"), "unknown_key"),
    ],
    ids=["no signature", "null signature", "targets changed", "sha changed", "threshold changed",
         "signature garbage", "signature of other bytes", "signature not a string", "other key id", "no key id"],
)
def test_any_change_after_signing_is_refused(mutate, reason):
    body = json.loads(signed())
    mutate(body)
    assert refused(json.dumps(body).encode()) == reason


def test_wrong_key_and_forged_key_id():
    assert refused(sign_manifest(manifest(), OTHER)) == "unknown_key"
    forged = json.loads(sign_manifest(manifest(), OTHER))
    forged["key_id"] = KEY.key_id  # claims our key, signed with another
    body = {k: v for k, v in forged.items() if k != "signature"}
    forged["signature"] = base64.b64encode(OTHER.sign(canonical_bytes(body))).decode()
    assert refused(json.dumps(forged).encode()) == "bad_signature"


def test_signed_but_inconsistent_manifests_are_invalid():
    body = manifest().unsigned_dict() | {"key_id": KEY.key_id}
    for change in ({"chunks": 1}, {"version": "other"}, {"targets": []}, {"size": 0}, {"extra": 1}):
        candidate = body | change
        candidate["signature"] = base64.b64encode(KEY.sign(canonical_bytes(candidate))).decode()
        assert refused(canonical_bytes(candidate)) == "invalid_manifest", change


def test_malformed_and_oversized_manifests():
    assert refused(b"not json") == "malformed_manifest"
    assert refused(b"[1, 2]") == "malformed_manifest"
    assert refused(b"\xff\xfe") == "malformed_manifest"
    assert refused(b"{" * 100_000 + b"}" * 100_000) in ("malformed_manifest",)
    with pytest.raises(DeployRefused) as info:
        verify_manifest(signed(), KEY.public, max_bytes=100)
    assert info.value.reason == "oversized_manifest"


def test_key_order_and_whitespace_do_not_matter():
    body = json.loads(signed())
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=3).encode()
    assert verify_manifest(reordered, KEY.public).version == META.version


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_never_crash(payload):
    refused(payload)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), JSON, max_size=8))
def test_arbitrary_json_objects_are_refused(obj):
    refused(json.dumps(obj).encode())


MUTABLE = ["version", "sha256", "size", "chunk_size", "chunks", "targets", "phase", "deploy_id", "parent", "created",
           "selftest", "metadata"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(MUTABLE), JSON)
def test_replacing_any_signed_field_is_refused_unless_unchanged(field_name, value):
    body = json.loads(signed(parent="0.9.0"))
    original = body[field_name]
    body[field_name] = value
    payload = json.dumps(body).encode()
    if canonical_bytes(value) == canonical_bytes(original):
        assert verify_manifest(payload, KEY.public).version == META.version
    else:
        assert refused(payload) == "bad_signature"


# --------------------------------------------------------------------------- topics and chunks


def test_topics_round_trip():
    assert deploy_topic("m1") == "models/m1/deploy" and parse_deploy_topic("models/m1/deploy") == "m1"
    assert chunk_topic("m1", "1.2.0", 7) == "models/m1/1.2.0/chunk/7"
    assert parse_chunk_topic("models/m1/1.2.0/chunk/7") == ("m1", "1.2.0", 7)
    assert chunk_filter("m1", "1.2.0") == "models/m1/1.2.0/chunk/+"
    for bad in ("models/m1/1.2.0/chunk/07", "models/m1/1.2.0/chunk/-1", "models/m1/1.2.0/chunk/x", "models/+/v/chunk/1",
                "models/m1/1.2.0/chunk/1/2", "models/m1/1.2.0/chunk/١", "models/m1/deploy/x"):
        with pytest.raises(ContractError):
            parse_chunk_topic(bad)
    with pytest.raises(ContractError):
        chunk_topic("m1", "1/2", 0)
    for bad in ("models/m1/deploy/x", "models//deploy", "model/m1/deploy", "models/#/deploy"):
        with pytest.raises(ContractError):
            parse_deploy_topic(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_chunk_topic_parsing_never_crashes(topic):
    try:
        model, version, index = parse_chunk_topic(topic)
    except ContractError:
        return
    assert chunk_topic(model, version, index) == topic


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(min_value=64, max_value=2048))
def test_chunks_reassemble_exactly(content, chunk_size):
    parts = split_chunks(content, chunk_size)
    assert len(parts) == chunk_count(len(content), chunk_size)
    assert [len(p) for p in parts] == [expected_chunk_length(len(content), chunk_size, i) for i in range(len(parts))]
    assert b"".join(parts) == content


# --------------------------------------------------------------------------- keys


def test_generated_keys_are_private_and_load(tmp_path):
    private, public, key_id = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    key = SigningKey.load(private)
    assert key.key_id == key_id == VerifyKey.load(public).key_id
    assert "PRIVATE" not in repr(key) and key_id in repr(key)
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(tmp_path / "k")
    _, _, new_id = generate_keypair(tmp_path / "k", overwrite=True)
    assert new_id != key_id


def test_unusable_key_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        SigningKey.load(bad)
    assert str(bad) in str(info.value) and "nope" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        VerifyKey.load(tmp_path / "missing.pub")
    _, public, _ = generate_keypair(tmp_path / "k")
    with pytest.raises(ConfigError):
        SigningKey.load(public)  # a public key is not a signing key
