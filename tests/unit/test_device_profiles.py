"""Board profiles (devices/boards/) pass `edgeloop config check`; the systemd unit is what systemd accepts."""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeloop.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]
BOARDS = REPO / "devices" / "boards"
UNIT = REPO / "docker" / "systemd" / "edgeloop-edge.service"

#: profile -> interpreter threads it must set (the board's cores)
EXPECTED_THREADS = {"rpi-64bit.yaml": 4, "rpi-32bit-legacy.yaml": 4, "jetson.yaml": 6}


def test_every_profile_is_listed():
    assert sorted(p.name for p in BOARDS.glob("*.yaml")) == sorted(EXPECTED_THREADS)


@pytest.mark.parametrize("profile", sorted(EXPECTED_THREADS))
def test_board_profile_passes_config_check(profile, capsys, monkeypatch):
    for var in ("EDGELOOP_NODE_ID", "EDGELOOP_SITE", "EDGELOOP_BROKER"):
        monkeypatch.delenv(var, raising=False)
    assert main(["config", "check", str(BOARDS / profile)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {BOARDS / profile}: valid edge configuration")
    effective = json.loads(out.split("\n", 1)[1])
    assert [p["model"]["num_threads"] for p in effective["pipelines"]] == [EXPECTED_THREADS[profile]]
    assert effective["metrics"]["enabled"] is False  # zero open ports on a device by default
    assert effective["mqtt"]["url"] == "mqtt://broker.local:1883"


def test_profile_values_come_from_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("EDGELOOP_NODE_ID", "pi-42")
    monkeypatch.setenv("EDGELOOP_BROKER", "mqtt://10.1.2.3:1883")
    assert main(["config", "check", str(BOARDS / "rpi-64bit.yaml")]) == 0
    effective = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert (effective["node_id"], effective["mqtt"]["url"]) == ("pi-42", "mqtt://10.1.2.3:1883")


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_runs_the_edge_unprivileged_with_restart_watchdog_and_state():
    service = unit()["Service"]
    assert service["Type"] == "notify"  # READY=1 from edgeloop/systemd.py
    assert service["WatchdogSec"] and service["NotifyAccess"] == "main"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "edgeloop" and service["Group"] == "edgeloop"
    assert service["StateDirectory"] == "edgeloop" and service["WorkingDirectory"] == "/var/lib/edgeloop"
    assert service["RestartPreventExitStatus"].split() == ["2", "3"]  # config / model errors (edgeloop/cli.py)
    assert service["KillSignal"] == "SIGTERM"
    binary, *args = shlex.split(service["ExecStart"])
    assert binary.endswith("/edgeloop")
    parsed = build_parser().parse_args(args)
    assert (parsed.command, parsed.action, parsed.config) == ("edge", "run", "/etc/edgeloop/edge.yaml")


def test_systemd_accepts_the_unit(tmp_path):
    """systemd-analyze verify (systemd is part of the Debian base image; `make deps` installs it if not)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze not found: apt-get install systemd"
    local = tmp_path / "edgeloop-edge.service"
    edgeloop = Path(sys.executable).parent / "edgeloop"
    local.write_text(UNIT.read_text().replace("/opt/edgeloop/bin/edgeloop", str(edgeloop)))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "edgeloop-edge.service" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
