"""Bridge configuration: defaults, unknown keys, API-specific fields, secrets, ${ENV}."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeloop.bridge.config import BridgeConfig, load_bridge_config
from edgeloop.configfile import redacted
from edgeloop.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_documented_values():
    cfg = load_bridge_config(None, {})
    assert cfg == BridgeConfig()
    assert cfg.mqtt.client_id == "edgeloop-bridge"
    assert cfg.subscribe == ["results/+/+", "status/+"]
    assert (cfg.qos, cfg.max_payload_bytes, cfg.queue_size) == (1, 262144, 10000)
    influx = cfg.influx
    assert (influx.api, influx.url, influx.db, influx.rp) == ("v2", "http://127.0.0.1:8086", "edgeloop", None)
    assert (influx.batch_size, influx.flush_interval_ms, influx.timeout_s) == (5000, 1000, 10.0)
    assert (influx.measurements.results, influx.measurements.status) == ("inference", "node_status")
    assert influx.tags == {}


def test_client_id_defaults_even_when_mqtt_section_is_given(tmp_path):
    cfg = load_bridge_config(write(tmp_path, "mqtt: {url: 'mqtt://broker:1884'}\n"), {})
    assert cfg.mqtt.client_id == "edgeloop-bridge"
    assert cfg.mqtt.url == "mqtt://broker:1884"


def test_config_is_frozen():
    with pytest.raises(Exception):
        BridgeConfig().qos = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("influx: {batchsize: 10}\n", "influx.batchsize"),
        ("influx: {measurements: {result: x}}\n", "influx.measurements.result"),
        ("mqtt: {uri: 'mqtt://x'}\n", "mqtt.uri"),
        ("subscribtions: []\n", "subscribtions"),
    ],
)
def test_unknown_key_is_rejected_naming_file_and_field(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_bridge_config(path, {})
    message = str(info.value)
    assert str(path) in message
    assert f"{field}: unknown key" in message


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("influx: {api: v2, bucket: null}\n", "influx", "needs 'bucket'"),
        ("influx: {api: v2, bucket: '', org: ''}\n", "influx", "needs 'bucket' and 'org'"),
        ("influx: {api: v1, db: null}\n", "influx", "needs 'db'"),
        ("influx: {api: v3}\n", "influx.api", "'v1' or 'v2'"),
        ("qos: 2\n", "qos", "0 or 1"),
        ("influx: {batch_size: 0}\n", "influx.batch_size", "greater than 0"),
        ("influx: {url: 'ftp://db:8086'}\n", "influx.url", "http://"),
        ("influx: {tags: {device: x}}\n", "influx.tags", "written by the bridge"),
        ("influx: {tags: {env: 'a\\\\b'}}\n", "influx.tags", "backslash"),
        ("influx: {measurements: {results: ''}}\n", "influx.measurements.results", "empty"),
        ("influx: {token: abc, token_file: /etc/hostname}\n", "influx", "not both"),
        ("subscribe: []\n", "subscribe", "at least 1"),
        ("influx: {api: v2, create_database: true}\n", "influx", "influx bucket create"),
        ("influx: {retry_max_s: 0}\n", "influx.retry_max_s", "greater than or equal to 0.05"),
    ],
)
def test_invalid_values_are_rejected_naming_the_field(tmp_path, text, field, words):
    with pytest.raises(ConfigError) as info:
        load_bridge_config(write(tmp_path, text), {})
    problems = info.value.problems
    assert any(p.startswith(f"{field}: ") and words in p for p in problems), problems


def test_v1_needs_no_bucket():
    cfg = load_bridge_config(None, {"influx": {"api": "v1", "bucket": None, "org": None, "db": "metrics"}})
    assert cfg.influx.db == "metrics"


def test_token_file_is_read_and_stripped(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret-token\n")
    cfg = load_bridge_config(None, {"influx": {"token_file": str(token_file)}})
    assert cfg.influx.token is not None and cfg.influx.token.get_secret_value() == "s3cret-token"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(redacted(cfg))


@pytest.mark.parametrize("content", [None, "   \n"])
def test_unreadable_or_empty_token_file_names_the_field(tmp_path, content):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_bridge_config(write(tmp_path, f"influx: {{token_file: {token_file}}}\n"), {})
    assert any(p.startswith("influx.token_file: ") and str(token_file) in p for p in info.value.problems)


def test_env_expansion_and_secret_masking(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGE_TEST_TOKEN", "tok-123")
    monkeypatch.setenv("BRIDGE_TEST_HOST", "influx.example")
    monkeypatch.delenv("BRIDGE_TEST_ENV", raising=False)
    path = write(
        tmp_path,
        "influx:\n"
        "  url: http://${BRIDGE_TEST_HOST}:8086\n"
        "  token: ${BRIDGE_TEST_TOKEN}\n"
        "  tags: {env: '${BRIDGE_TEST_ENV:-staging}'}\n",
    )
    cfg = load_bridge_config(path, {})
    assert cfg.influx.url == "http://influx.example:8086"
    assert cfg.influx.token.get_secret_value() == "tok-123"
    assert cfg.influx.tags == {"env": "staging"}
    assert redacted(cfg)["influx"]["token"] == "********"


def test_missing_env_variable_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("BRIDGE_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError) as info:
        load_bridge_config(write(tmp_path, "influx: {token: '${BRIDGE_TEST_MISSING}'}\n"), {})
    assert "influx.token" in str(info.value) and "BRIDGE_TEST_MISSING" in str(info.value)


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "influx: {api: v1, db: fromfile, batch_size: 10}\n")
    cfg = load_bridge_config(path, {"influx": {"db": "fromflag"}})
    assert (cfg.influx.db, cfg.influx.batch_size) == ("fromflag", 10)


def test_each_extra_connection_can_have_an_identity_of_its_own(tmp_path):
    """On a broker that makes the client id the identity, the bridge's extra connections need certificates
    (or usernames) of their own: otherwise they would take over the bridge's session (docs/security.md)."""
    from certs import TestCA

    ca = TestCA(tmp_path / "pki")
    main, status = ca.client("edgeloop-bridge"), ca.client("edgeloop-bridge-status")
    (tmp_path / "pw").write_text("loop-secret\n")
    cfg = load_bridge_config(write(tmp_path, f"""\
mqtt: {{url: "mqtts://broker", tls: {{ca_file: {ca.ca_file}, cert_file: {main.cert}, key_file: {main.key}}}}}
identities:
  status: {{cert_file: {status.cert}, key_file: {status.key}}}
  loop: {{username: edgeloop-bridge-loop, password_file: {tmp_path / "pw"}}}
"""), {})
    assert cfg.mqtt_for("deployer") == cfg.mqtt
    follower = cfg.mqtt_for("status")
    assert (follower.tls.cert_file, follower.tls.ca_file, follower.url) == (status.cert, ca.ca_file, "mqtts://broker")
    loop = cfg.mqtt_for("loop")
    assert (loop.username, loop.password.get_secret_value(), loop.tls) == ("edgeloop-bridge-loop", "loop-secret",
                                                                           cfg.mqtt.tls)
    with pytest.raises(ConfigError) as info:  # a certificate that is not there: at startup, naming the role
        load_bridge_config(write(tmp_path, f"""\
mqtt: {{url: "mqtts://broker", tls: {{ca_file: {ca.ca_file}}}}}
identities: {{status: {{cert_file: {tmp_path / "nope.crt"}, key_file: {status.key}}}}}
"""), {})
    assert "identities.status" in str(info.value) and "cert_file" in str(info.value)
