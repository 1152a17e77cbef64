"""Edge configuration: defaults, unknown keys, env expansion, errors that name file and field."""

from __future__ import annotations

import pytest

from edgeloop.configfile import redacted
from edgeloop.errors import ConfigError
from edgeloop.mqtt import parse_broker_url, redact_url
from edgeloop.edge.config import BUNDLED_MODEL, DEFAULT_VIBRATION_STAGES, load_edge_config


def write(tmp_path, text):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def test_no_file_gives_a_runnable_default():
    cfg = load_edge_config(None)
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"
    assert cfg.mqtt.protocol == "5"
    assert cfg.pipelines[0].subscription == "sensors/+/vibration"
    assert cfg.pipelines[0].model.path == BUNDLED_MODEL
    assert [s.type for s in cfg.pipelines[0].stages] == [s["type"] for s in DEFAULT_VIBRATION_STAGES]


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, "mqtt:\n  url: mqtt://10.0.0.1:1883\n  keepalive_s: 60\n")
    cfg = load_edge_config(path, {"mqtt": {"url": "mqtt://127.0.0.1:2000"}})
    assert cfg.mqtt.url == "mqtt://127.0.0.1:2000"
    assert cfg.mqtt.keepalive_s == 60


@pytest.mark.parametrize(
    "text,fragments",
    [
        ("mqtt:\n  urll: mqtt://x\n", ["edge.yaml", "mqtt.urll", "unknown key"]),
        ("batching:\n  max_batch: 0\n", ["edge.yaml", "batching.max_batch", "greater than or equal to 1"]),
        ("mqtt:\n  url: http://x\n", ["mqtt.url", "mqtt:// or mqtts://"]),
        ("mqtt:\n  protocol: 4\n", ["mqtt.protocol"]),
        ("pipelines:\n  - stages:\n      - type: window\n        size: 4\n        hop: 8\n", ["pipelines.0.stages.0", "hop must be <= size"]),
        ("pipelines:\n  - stages:\n      - type: fft\n", ["pipelines.0.stages.0"]),
        ("pipelines: []\n", ["pipelines"]),
        ("node_id: a/b\n", ["node_id"]),
        ("- a\n- b\n", ["must be a mapping"]),
        ("mqtt: [\n", ["edge.yaml", "not valid YAML", "line"]),
        ("mqtt:\n  password: ${EDGELOOP_TEST_UNSET_VAR}\n", ["mqtt.password", "EDGELOOP_TEST_UNSET_VAR", "not set"]),
    ],
)
def test_config_errors_name_file_and_field(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read file"):
        load_edge_config(tmp_path / "nope.yaml")


def test_env_expansion_and_secret_masking(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_PW", "s3cret-pw")
    path = write(tmp_path, "mqtt:\n  username: dev1\n  password: ${EDGE_PW}\n  url: ${EDGE_URL:-mqtt://127.0.0.1:1884}\n")
    cfg = load_edge_config(path)
    assert cfg.mqtt.password.get_secret_value() == "s3cret-pw"
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1884"
    shown = str(redacted(cfg))
    assert "s3cret-pw" not in shown and "********" in shown
    assert "s3cret-pw" not in repr(cfg)


def test_broker_urls():
    addr = parse_broker_url("mqtts://user:p%40ss@broker.example:8884")
    assert (addr.host, addr.port, addr.tls, addr.username) == ("broker.example", 8884, True, "user")
    assert addr.password.get_secret_value() == "p@ss"
    assert parse_broker_url("mqtt://h").port == 1883
    assert parse_broker_url("mqtts://h").port == 8883
    assert redact_url("mqtt://u:secret@h:1") == "mqtt://u:****@h:1"
    for bad in ["h:1883", "mqtt://", "mqtt://h:99999", "mqtt://h/path"]:
        with pytest.raises(ValueError):
            parse_broker_url(bad)
