"""Secrets and TLS in configuration: where secrets may come from, what is refused, what is never shown.

Policy (edgeloop/secrets.py, docs/security.md): secrets come from ${ENV} or *_file;
a secret spelled out in a config file every user can read is a ConfigError naming the file and
the field; a world-readable secret *file* is used with a warning (container secret mounts are
0444/0644); TLS files are loaded while the config is validated.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from certs import TestCA
from lab.procs import run_cli

from edgeloop.bridge.config import load_bridge_config
from edgeloop.configfile import redacted
from edgeloop.errors import ConfigError
from edgeloop.mqtt import MqttLink, MqttSettings, TlsSettings
from edgeloop.secrets import MAX_SECRET_FILE_BYTES
from edgeloop.edge.config import load_edge_config

SECRET = "s3cr3t-Zq8vLx-never-shown"


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = TestCA(tmp_path_factory.mktemp("pki"))
    return ca, ca.client("dev-1"), ca.client("dev-enc", key_password=SECRET.encode())


# ----------------------------------------------------------------------------- inline secrets


@pytest.mark.parametrize(("loader", "text", "field"), [
    (load_bridge_config, f"influx: {{api: v2, token: {SECRET}}}\n", "influx.token"),
    (load_bridge_config, f"influx: {{api: v1, username: w, password: {SECRET}}}\n", "influx.password"),
    (load_edge_config, f"mqtt: {{username: dev-1, password: {SECRET}}}\n", "mqtt.password"),
    (load_edge_config, f"mqtt: {{url: 'mqtt://dev-1:{SECRET}@broker:1883'}}\n", "mqtt.url (password in the URL)"),
])
def test_a_secret_inline_in_a_world_readable_file_is_refused(tmp_path, loader, text, field):
    path = write(tmp_path / "c.yaml", text, 0o644)
    with pytest.raises(ConfigError) as info:
        loader(path)
    message = str(info.value)
    assert str(path) in message and field in message and "chmod 600" in message
    assert SECRET not in message
    path.chmod(0o600)  # the same file, readable by its owner only: accepted
    assert loader(path) is not None


def test_influx_url_with_credentials_is_refused_without_echoing_them():
    for url in (f"http://writer:{SECRET}@db:8086", f"ftp://writer:{SECRET}@db"):
        with pytest.raises(ConfigError) as info:
            load_bridge_config(None, {"influx": {"url": url}})
        assert "influx.url" in str(info.value) and "credentials" in str(info.value) and SECRET not in str(info.value)


def test_secrets_from_env_or_files_are_fine_in_a_world_readable_file(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELOOP_TEST_TOKEN", SECRET)
    token_file = write(tmp_path / "token", SECRET + "\n", 0o600)
    by_env = write(tmp_path / "a.yaml", "influx: {api: v2, token: '${EDGELOOP_TEST_TOKEN}'}\n", 0o644)
    by_file = write(tmp_path / "b.yaml", f"influx: {{api: v2, token_file: {token_file}}}\n", 0o644)
    for path in (by_env, by_file):
        assert load_bridge_config(path).influx.token.get_secret_value() == SECRET


def test_a_world_readable_token_file_is_used_with_a_warning_that_does_not_show_it(tmp_path, caplog):
    token_file = write(tmp_path / "token", SECRET, 0o644)
    with caplog.at_level(logging.WARNING):
        cfg = load_bridge_config(None, {"influx": {"token_file": str(token_file)}})
    assert cfg.influx.token.get_secret_value() == SECRET
    warnings = [r.getMessage() for r in caplog.records if str(token_file) in r.getMessage()]
    assert len(warnings) == 1 and "chmod 600" in warnings[0] and "0644" in warnings[0]
    assert SECRET not in caplog.text


@pytest.mark.parametrize(("setup", "words"), [
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: p.write_text(""), "is empty"),
    (lambda p: p.write_bytes(b"\xff\xfe"), "not UTF-8"),
    (lambda p: p.write_text("x" * (MAX_SECRET_FILE_BYTES + 1)), "larger than"),
    (lambda p: None, "No such file"),
])
def test_unusable_password_files_name_the_field(tmp_path, setup, words):
    secret_file = tmp_path / "pw"
    setup(secret_file)
    with pytest.raises(ConfigError) as info:
        load_edge_config(None, {"mqtt": {"password_file": str(secret_file)}})
    assert "mqtt" in str(info.value) and "password_file" in str(info.value) and words in str(info.value)


def test_password_file_is_read_and_password_and_file_are_exclusive(tmp_path):
    pw = write(tmp_path / "pw", f"  {SECRET}\n", 0o600)
    cfg = load_edge_config(None, {"mqtt": {"username": "dev-1", "password_file": str(pw)}})
    assert cfg.mqtt.password.get_secret_value() == SECRET
    assert SECRET not in repr(cfg) and SECRET not in str(redacted(cfg))
    with pytest.raises(ConfigError, match="not both"):
        load_edge_config(None, {"mqtt": {"password": "x", "password_file": str(pw)}})


# ----------------------------------------------------------------------------- TLS settings


def test_tls_files_are_loaded_at_config_time(pki, tmp_path):
    ca, dev, enc = pki
    ok = TlsSettings(ca_file=ca.ca_file, cert_file=dev.cert, key_file=dev.key, min_version="1.3")
    assert ok.ssl_context().minimum_version == ssl.TLSVersion.TLSv1_3
    assert TlsSettings().ssl_context().minimum_version == ssl.TLSVersion.TLSv1_2
    # A private CA is the only trust anchor: the system store is not added to it.
    assert [c["subject"] for c in ok.ssl_context().get_ca_certs()] == [((("commonName", "edgeloop-test CA"),),)]
    pw_file = write(tmp_path / "keypw", SECRET, 0o600)
    assert TlsSettings(ca_file=ca.ca_file, cert_file=enc.cert, key_file=enc.key, key_password_file=pw_file)
    garbage = write(tmp_path / "garbage.pem", "not a certificate", 0o644)
    cases = [
        ({"ca_file": tmp_path / "missing.crt"}, "ca_file", "does not exist"),
        ({"ca_file": garbage}, "ca_file", "no PEM CA certificate"),
        ({"cert_file": dev.cert, "key_file": enc.key}, "cert_file", "not a PEM certificate and its private key"),
        ({"cert_file": enc.cert, "key_file": enc.key}, "cert_file", "key_password is wrong or missing"),
        ({"cert_file": enc.cert, "key_file": enc.key, "key_password": "wrong"}, "cert_file", "wrong"),
        ({"key_file": dev.key}, "key_file", "needs cert_file"),
        ({"key_password": "a", "key_password_file": pw_file}, "key_password", "not both"),
        ({"min_version": "1.1"}, "min_version", "'1.2' or '1.3'"),
    ]
    for fields, field, words in cases:
        with pytest.raises(ConfigError) as info:
            load_edge_config(None, {"mqtt": {"url": "mqtts://broker", "tls": {k: str(v) for k, v in fields.items()}}})
        message = str(info.value)
        assert "mqtt.tls" in message and field in message and words in message, (fields, message)
        assert SECRET not in message


def test_tls_needs_an_mqtts_url_and_mqtts_defaults_to_8883(pki):
    ca, _, _ = pki
    with pytest.raises(ConfigError, match="use mqtts://"):
        load_edge_config(None, {"mqtt": {"url": "mqtt://broker:1883", "tls": {"ca_file": str(ca.ca_file)}}})
    link = MqttLink(MqttSettings(url="mqtts://broker", tls=TlsSettings(ca_file=ca.ca_file)), "x")
    assert (link.address.port, link.address.tls) == (8883, True)


def test_credentials_over_plain_tcp_to_another_host_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        MqttLink(MqttSettings(url="mqtt://broker.example", username="u", password=SECRET), "x")
        MqttLink(MqttSettings(url="mqtt://127.0.0.1", username="u", password=SECRET), "y")
    assert [r.getMessage() for r in caplog.records] == [
        "sending MQTT credentials to broker.example without TLS: use mqtts://"
    ]


# ----------------------------------------------------------------------------- never shown


def test_config_check_masks_every_secret_and_logs_none(pki, tmp_path):
    """``edgeloop config check`` (the real CLI) on configs holding every kind of secret."""
    ca, _, enc = pki
    token_file = write(tmp_path / "token", SECRET + "-token", 0o644)  # world-readable: warns
    key_pw = write(tmp_path / "keypw", SECRET, 0o600)
    bridge = write(tmp_path / "bridge.yaml", f"""\
mqtt:
  url: mqtts://127.0.0.1:8883
  password_file: {write(tmp_path / "pw", SECRET + "-mqtt", 0o600)}
  username: edgeloop-bridge
  tls: {{ca_file: {ca.ca_file}, cert_file: {enc.cert}, key_file: {enc.key}, key_password_file: {key_pw}}}
influx: {{api: v2, token_file: {token_file}}}
""", 0o644)
    edge = write(tmp_path / "edge.yaml", f"""\
mqtt: {{url: 'mqtts://dev-1:{SECRET}-url@127.0.0.1', tls: {{ca_file: {ca.ca_file}}}}}
""", 0o600)
    stderr = {}
    for path, kind in ((bridge, "bridge"), (edge, "edge")):
        # --kind: a file with only an mqtt: section could be either kind
        run = run_cli("--log-level", "DEBUG", "config", "check", "--kind", kind, str(path), timeout=60)
        assert run.returncode == 0, run.stderr
        assert f"valid {kind} configuration" in run.stdout and "********" in run.stdout
        assert SECRET not in run.stdout + run.stderr
        stderr[kind] = run.stderr
    assert "readable by every user" in stderr["bridge"] and str(token_file) in stderr["bridge"]
    refused = write(tmp_path / "inline.yaml", f"influx: {{token: {SECRET}}}\n", 0o644)
    run = run_cli("config", "check", str(refused), timeout=60)
    assert run.returncode == 2 and "influx.token" in run.stderr and SECRET not in run.stdout + run.stderr
