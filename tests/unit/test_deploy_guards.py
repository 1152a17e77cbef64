"""Issue 11 without a broker: deployment order and memory, forged strings, keys, chunk digests, ``${X:-}``.

The edge's model manager is fed by hand (``unit.test_model_manager.Node``); every installed model still goes
through the real out-of-process trial. The same findings against real processes: tests/integration/
test_deploy_hardening.py.
"""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from edgeloop.deploy_contract import (
    ModelManifest,
    chunk_count,
    chunk_digest,
    chunk_topic,
    deploy_topic,
    sign_manifest,
    split_chunks,
)
from edgeloop.edge.config import DeploySettings, load_edge_config
from edgeloop.errors import ConfigError
from edgeloop.modelfile import sha256_bytes
from edgeloop.signing import SigningKey, VerifyKey, generate_keypair
from unit.test_model_manager import BASE_CONTENT, BASE_META, MODEL, Node, selftest_for

SECRET = "s3cr3t-Zq8vLx-never-shown"


def variant(version: str, pad: int = 8):
    """The bundled model as another version, with its own bytes (``pad`` trailing zeros) and sha256."""
    content = BASE_CONTENT + b"\0" * pad
    return content, BASE_META.model_copy(update={"version": version, "sha256": sha256_bytes(content)})


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    private, public, _ = generate_keypair(tmp_path_factory.mktemp("keys") / "k")
    return SigningKey.load(private), public


def manifest_for(content, meta, *, seq, deploy_id, digests=True, targets=("*",)) -> ModelManifest:
    return ModelManifest(
        model=MODEL, version=meta.version, sha256=meta.sha256, size=len(content), chunk_size=1024,
        chunks=chunk_count(len(content), 1024),
        chunk_digests=[chunk_digest(c) for c in split_chunks(content, 1024)] if digests else None,
        targets=list(targets), deploy_id=deploy_id, seq=seq, created=time.time(), metadata=meta,
        selftest=selftest_for(content, meta),
    )


def send(node: Node, payload: bytes, content: bytes | None = None, version: str | None = None) -> None:
    node.manager._handle(deploy_topic(MODEL), payload)
    for i, part in enumerate(split_chunks(content, 1024) if content is not None else []):
        node.manager._handle(chunk_topic(MODEL, version, i), part)


def settle(node: Node) -> None:
    """Feed windows until the swapped model is judged, then let the manager write what the worker decided."""
    node.feed(4 + 8)
    node.manager._drain_persist()


# ----------------------------------------------------------------------------- order and memory


def test_replayed_and_unsequenced_manifests_are_refused_and_the_head_is_not_acted_on_twice(tmp_path, key_pair):
    key, public = key_pair
    node = Node(tmp_path, public)
    old_content, old_meta = variant("1.1.0")
    old = sign_manifest(manifest_for(old_content, old_meta, seq=10, deploy_id="0a" * 8), key)
    send(node, old, old_content, "1.1.0")
    settle(node)
    assert node.version == "1.1.0" and node.state().state == "healthy"
    new_content, new_meta = variant("1.2.0", pad=24)
    new = sign_manifest(manifest_for(new_content, new_meta, seq=11, deploy_id="0b" * 8), key)
    send(node, new, new_content, "1.2.0")
    settle(node)
    assert node.version == "1.2.0" and node.state().state == "healthy"

    send(node, old)  # recorded earlier, published again
    state = node.state()
    assert (state.state, state.reason, state.version) == ("refused", "replayed", "1.1.0")
    assert node.version == "1.2.0" and not node.manager._transfers
    unsequenced = sign_manifest(manifest_for(old_content, old_meta, seq=None, deploy_id="0c" * 8), key)
    send(node, unsequenced)
    assert (node.state().reason, node.version) == ("unsequenced", "1.2.0")

    restarted = Node(tmp_path, public)  # same state_dir: serves the kept 1.2.0, remembers the ledger
    assert restarted.version == "1.2.0"
    send(restarted, new)  # the head, redelivered as the retained manifest
    assert restarted.state() is None and not restarted.manager._transfers
    assert restarted.manager.counters["deploy_already_running"] == 1
    send(restarted, old)
    assert restarted.state().reason == "replayed" and restarted.version == "1.2.0"
    # An intended rollback: the old artifact under a new, higher seq.
    send(restarted, sign_manifest(manifest_for(old_content, old_meta, seq=12, deploy_id="0d" * 8), key),
         old_content, "1.1.0")
    settle(restarted)
    assert restarted.version == "1.1.0" and restarted.state().state == "healthy"
    assert [e.state for e in restarted.manager.ledger.entries(MODEL)] == ["healthy", "healthy", "healthy"]


def test_manifests_without_seq_still_install_until_a_sequenced_one_was_seen(tmp_path, key_pair):
    key, public = key_pair
    node = Node(tmp_path, public)
    content, meta = variant("1.1.0")
    legacy = sign_manifest(manifest_for(content, meta, seq=None, deploy_id="1a" * 8, digests=False), key)
    send(node, legacy, content, "1.1.0")
    settle(node)
    assert node.version == "1.1.0" and node.state().state == "healthy"


def test_a_refused_deployment_is_remembered_across_a_restart(tmp_path, key_pair):
    key, public = key_pair
    node = Node(tmp_path, public)
    content, meta = variant("1.6.0")
    bad = manifest_for(content, meta, seq=5, deploy_id="2a" * 8)
    bad = bad.model_copy(update={"selftest": bad.selftest.model_copy(update={"expected": [[9.0]] * 4})})
    payload = sign_manifest(bad, key)
    send(node, payload, content, "1.6.0")
    assert node.state().reason == "selftest_failed"
    restarted = Node(tmp_path, public)
    send(restarted, payload, content, "1.6.0")
    state = restarted.state()
    assert (state.state, state.reason, state.deploy_id) == ("refused", "selftest_failed", "2a" * 8)
    assert restarted.manager.counters["deploys_remembered"] == 1 and not restarted.manager._transfers
    assert restarted.rejects.by_reason.get("selftest_failed", 0) == 0  # reported again, not refused again


# ----------------------------------------------------------------------------- forged strings


def test_an_unsigned_manifest_cannot_forge_log_lines_or_hide_a_deployment_in_progress(tmp_path, key_pair, caplog):
    key, public = key_pair
    node = Node(tmp_path, public)
    forged = ('{"model": "%s", "version": "1.0\\nWARNING edgeloop.deploy: now serving evil", '
              '"deploy_id": "x\\ny", "signature": null}' % MODEL).encode()
    with caplog.at_level(logging.INFO):
        send(node, forged)
    state = node.state()
    assert (state.state, state.reason, state.version, state.deploy_id) == ("refused", "unsigned", "unknown", None)
    assert not any("\n" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]

    content, meta = variant("1.3.0")
    send(node, sign_manifest(manifest_for(content, meta, seq=3, deploy_id="3a" * 8), key))
    assert node.state().state == "receiving"
    send(node, forged.replace(b'"signature": null', b'"signature": "AAAA"'))  # bad_signature
    assert node.state().state == "receiving" and node.state().deploy_id == "3a" * 8
    assert node.manager.counters["deploys_refused"] == 2


# ----------------------------------------------------------------------------- chunks


def test_a_substituted_chunk_is_dropped_and_the_right_one_completes_the_transfer(tmp_path, key_pair):
    key, public = key_pair
    node = Node(tmp_path, public)
    content, meta = variant("1.4.0")
    send(node, sign_manifest(manifest_for(content, meta, seq=4, deploy_id="4a" * 8), key))
    parts = split_chunks(content, 1024)
    forged = bytes(len(parts[2]))  # same length, other bytes
    node.manager._handle(chunk_topic(MODEL, "1.4.0", 2), forged)
    assert node.rejects.by_reason["bad_chunk"] == 1 and node.state().state == "receiving"
    for i, part in enumerate(parts):
        node.manager._handle(chunk_topic(MODEL, "1.4.0", i), part)
    settle(node)
    assert node.version == "1.4.0" and node.state().state == "healthy"


def test_a_stalled_transfer_subscribes_again_then_a_redelivered_manifest_tries_again(tmp_path, key_pair):
    key, public = key_pair
    node = Node(tmp_path, public)
    content, meta = variant("1.8.0")
    payload = sign_manifest(manifest_for(content, meta, seq=8, deploy_id="8a" * 8), key)
    send(node, payload)  # the manifest, no chunks (lost on the way)
    for _ in range(3):
        node.manager._transfers[MODEL].deadline = 0.0
        node.manager._expire()
    assert node.manager.counters["deploy_transfer_retries"] == 2
    assert (node.state().state, node.state().reason) == ("refused", "incomplete")
    assert "after 3 attempts" in node.state().detail
    send(node, payload, content, "1.8.0")  # the retained manifest again (reconnect, restart): tried again
    settle(node)
    assert node.version == "1.8.0" and node.state().state == "healthy"


# ----------------------------------------------------------------------------- keys


def test_an_edge_trusts_a_list_of_keys_during_a_rotation(tmp_path, key_pair):
    old_key, old_public = key_pair
    new_private, new_public, _ = generate_keypair(tmp_path / "new")
    new_key = SigningKey.load(new_private)
    node = Node(tmp_path, old_public)
    node.cfg = node.cfg.model_copy(update={"deploy": DeploySettings(
        enabled=True, public_key_file=old_public, public_key_files=[new_public], canary_windows=8,
        state_dir=tmp_path / "s")})
    from edgeloop.edge.model_manager import ModelManager

    node.manager = ModelManager(node.cfg, node.engine, node.rejects)
    assert {k.key_id for k in node.manager.keys} == {old_key.key_id, new_key.key_id}
    content, meta = variant("1.7.0")
    send(node, sign_manifest(manifest_for(content, meta, seq=7, deploy_id="7a" * 8), new_key), content, "1.7.0")
    settle(node)
    assert node.version == "1.7.0" and node.state().state == "healthy"
    stranger = SigningKey.generate()
    send(node, sign_manifest(manifest_for(content, meta, seq=8, deploy_id="7b" * 8), stranger))
    state = node.state()
    assert state.reason == "unknown_key" and old_key.key_id in state.detail and new_key.key_id in state.detail


@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_public_key_others_may_replace_is_refused(tmp_path, key_pair, what):
    _, public = key_pair
    directory = tmp_path / "keys"
    directory.mkdir()
    copy = directory / "deploy.pub"
    copy.write_bytes(public.read_bytes())
    (copy if what == "file" else directory).chmod(0o666 if what == "file" else 0o777)
    with pytest.raises(ConfigError, match="writable by group or others") as info:
        VerifyKey.load(copy)
    assert "chmod go-w" in str(info.value)
    config = tmp_path / "edge.yaml"
    config.write_text(f"deploy: {{enabled: true, public_key_file: {copy}}}\n")
    with pytest.raises(ConfigError, match="public_key_file"):
        load_edge_config(config)


def test_generated_keys_have_safe_modes_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        private, public, _ = generate_keypair(tmp_path / "keys")
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(p.stat().st_mode) for p in (private.parent, private, public)]
    assert modes == [0o700, 0o600, 0o644]
    VerifyKey.load(public)  # and the edge accepts the result
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by group or others"):
        generate_keypair(shared)


def test_a_readable_signing_key_is_used_with_a_warning(tmp_path, caplog):
    private, _, key_id = generate_keypair(tmp_path / "keys")
    with caplog.at_level(logging.WARNING, logger="edgeloop.signing"):
        SigningKey.load(private)
        assert not caplog.records
        private.chmod(0o644)
        assert SigningKey.load(private).key_id == key_id
    assert len(caplog.records) == 1 and "chmod 600" in caplog.records[0].getMessage()
    assert "PRIVATE KEY" not in caplog.text


# ----------------------------------------------------------------------------- ${X:-}


@pytest.mark.parametrize("value", ["x${EDGELOOP_NOPE:-}", "${EDGELOOP_NOPE:-%s}" % SECRET, "${EDGELOOP_PW}x"])
def test_an_inline_secret_cannot_hide_behind_an_env_reference(tmp_path, monkeypatch, value):
    monkeypatch.delenv("EDGELOOP_NOPE", raising=False)
    monkeypatch.setenv("EDGELOOP_PW", SECRET)
    path = tmp_path / "edge.yaml"
    path.write_text(f"mqtt: {{username: dev-1, password: '{value}'}}\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="mqtt.password: secret written inline"):
        load_edge_config(path)


def test_secrets_wholly_from_the_environment_stay_fine(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELOOP_PW", SECRET)
    path = tmp_path / "edge.yaml"
    path.write_text("mqtt: {username: dev-1, password: '${EDGELOOP_PW}'}\n")
    path.chmod(0o644)
    assert load_edge_config(path).mqtt.password.get_secret_value() == SECRET
    path.write_text("mqtt: {url: 'mqtt://dev-1:${EDGELOOP_PW}@broker:1883'}\n")
    assert load_edge_config(path).mqtt.password.get_secret_value() == SECRET
