"""``edgeloop config check``: the kind of a file told by its keys, every missing ${VAR} at once, and a
pre-flight that fails exactly as ``edgeloop edge run`` would (the real CLI, as processes)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from lab.procs import run_cli

from edgeloop.bridge.config import BridgeConfig
from edgeloop.cli import detect_kind
from edgeloop.configfile import expand_env, read_yaml
from edgeloop.edge.config import BUNDLED_MODEL, EdgeConfig
from edgeloop.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
KINDS = {"edge": set(EdgeConfig.model_fields), "bridge": set(BridgeConfig.model_fields)}
BOARDS = sorted((REPO / "devices" / "boards").glob("*.yaml"))


#: ``python -m edgeloop ARGS`` to completion, as a user runs it.
edgeloop = functools.partial(run_cli, module="edgeloop")


def our_message(stderr: str) -> str:
    """stderr from edgeloop's own message on (LiteRT prints an INFO line of its own first)."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("edgeloop"))
    return "\n".join(lines[start:])


# ----------------------------------------------------------------------------- kinds


@pytest.mark.parametrize("kind, key", sorted(
    (kind, key) for kind, keys in KINDS.items() for key in keys - set().union(*(v for k, v in KINDS.items() if k != kind))
))
def test_every_key_only_one_schema_has_tells_the_kind(kind, key):
    # Derived from the pydantic models: a field added to either schema is recognised without a hand list.
    assert detect_kind("f.yaml", {key: None, "mqtt": {}}, KINDS) == kind


@pytest.mark.parametrize("doc, fragment", [
    ({"mqtt": {"url": "mqtt://b"}}, "could be either kind (its keys mqtt are in more than one)"),
    ({"node_id": "x", "metrics": {}}, "could be either kind"),
    ({}, "it is empty"),
    ({"pipelines": [], "influx": {}}, "keys of several kinds"),
    ({"brokr": 1}, "none of its keys (brokr) belongs to a known kind"),
])
def test_a_file_that_does_not_tell_its_kind_asks_for_kind(doc, fragment):
    with pytest.raises(ConfigError) as info:
        detect_kind("f.yaml", doc, KINDS)
    assert fragment in str(info.value) and "give --kind" in str(info.value) and info.value.source == "f.yaml"


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: p.name)
def test_board_profiles_are_edge_configs(board):
    assert detect_kind(str(board), read_yaml(board, expand=False), KINDS) == "edge"


def test_bridge_config_without_an_influx_section_is_recognised(tmp_path):
    config = tmp_path / "bridge.yaml"
    config.write_text("mqtt: {url: 'mqtt://broker:1883'}\nsubscribe: ['results/+/+']\nqos: 1\n")
    run = edgeloop("config", "check", str(config))
    assert run.returncode == 0, run.stderr
    assert f"{config}: valid bridge configuration" in run.stdout


def test_a_file_that_could_be_either_kind_is_a_config_error_asking_for_kind(tmp_path):
    config = tmp_path / "common.yaml"
    config.write_text("mqtt: {url: 'mqtt://broker:1883'}\n")
    run = edgeloop("config", "check", str(config))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(config) in run.stderr and "give --kind bridge|edge" in run.stderr
    assert edgeloop("config", "check", "--kind", "bridge", str(config)).returncode == 0


# ----------------------------------------------------------------------------- environment


def test_every_missing_environment_variable_is_reported_at_once(tmp_path, monkeypatch):
    for name in ("EL_TEST_A", "EL_TEST_B", "EL_TEST_C"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EL_TEST_SET", "mqtt://b:1883")
    doc = {"mqtt": {"url": "${EL_TEST_SET}", "username": "${EL_TEST_A}", "password": "${EL_TEST_B}"},
           "pipelines": [{"model": {"path": "/m/${EL_TEST_C}.tflite"}}], "site": "${EL_TEST_D:-plant}"}
    with pytest.raises(ConfigError) as info:
        expand_env(doc, "edge.yaml")
    assert info.value.problems == [
        "mqtt.username: environment variable ${EL_TEST_A} is not set",
        "mqtt.password: environment variable ${EL_TEST_B} is not set",
        "pipelines[0].model.path: environment variable ${EL_TEST_C} is not set",
    ]
    # ... and through the command, in one message with exit code 2.
    config = tmp_path / "edge.yaml"
    config.write_text("node_id: ${EL_TEST_A}\nsite: ${EL_TEST_B}\nmqtt: {password: '${EL_TEST_C}'}\n")
    run = edgeloop("config", "check", str(config))
    assert run.returncode == 2
    assert [line for line in run.stderr.splitlines() if "is not set" in line] == [
        "  - node_id: environment variable ${EL_TEST_A} is not set",
        "  - site: environment variable ${EL_TEST_B} is not set",
        "  - mqtt.password: environment variable ${EL_TEST_C} is not set",
    ]


# ----------------------------------------------------------------------------- pre-flight

_MISMATCH = """\
pipelines:
  - sensor: vibration
    stages:
      - {type: select, channels: [0, 1, 2]}
      - {type: window, size: 128, hop: 64}
      - {type: features, stats: [mean, std], fft_bands: 4}
"""
_TOO_FEW_CHANNELS = "pipelines:\n  - sensor: vibration\n    in_channels: 2\n"
_MISSING_MODEL = "pipelines:\n  - sensor: vibration\n    model: {path: /nonexistent/model.tflite}\n"
_CAMERA_ON_A_SENSOR_MODEL = f"vision:\n  cameras:\n    - camera: belt\n      model: {{path: {BUNDLED_MODEL}}}\n"


@pytest.mark.parametrize("text, code, fragment", [
    (_MISMATCH, 3, "model error: pipeline produces (18,) but model vibration_ae 1.0.0 expects (30,)"),
    (_TOO_FEW_CHANNELS, 2, "pipelines.0.stages[0]: select: channels [2] do not exist"),
    (_MISSING_MODEL, 3, "model error: cannot read model file /nonexistent/model.tflite"),
    (_CAMERA_ON_A_SENSOR_MODEL, 2, "vision.cameras.0.stages[0]: the model has no image spec"),
], ids=["pipeline-does-not-fit-model", "stage-does-not-fit-stream", "missing-model-file", "camera-pipeline"])
def test_config_check_fails_like_edge_run_with_the_same_message_and_code(tmp_path, text, code, fragment):
    config = tmp_path / "edge.yaml"
    config.write_text(text)
    check = edgeloop("config", "check", str(config))
    # Port 1: nothing listens; edge run must fail on the config before it ever connects.
    run = edgeloop("edge", "run", "-c", str(config), "--broker", "mqtt://127.0.0.1:1")
    assert (check.returncode, run.returncode) == (code, code), check.stderr + run.stderr
    assert fragment in our_message(check.stderr)
    assert our_message(check.stderr) == our_message(run.stderr)
    assert "Traceback" not in check.stderr + run.stderr and check.stdout == ""
