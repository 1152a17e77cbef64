"""README's exit-code table, held against real processes: with no broker listening, ``bridge run`` and the
one-shot commands exit 4 while ``edge run`` keeps retrying (a device often boots before its network)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_fixtures import bundled, make_keys
from lab.procs import CliProcess, logs
from lab.servers import eventually, free_port

from edgeloop.cli import main
from edgeloop.modelfile import write_model_files

REPO = Path(__file__).resolve().parents[2]


def readme_exit_code(code: int) -> str:
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", (REPO / "README.md").read_text(), re.M))
    return rows[str(code)]


@pytest.mark.timeout(240)
def test_without_a_broker_the_bridge_and_one_shot_commands_exit_4_and_the_edge_retries(tmp_path):
    broker = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    make_keys(tmp_path)
    reg = ["--registry", str(tmp_path / "registry")]
    assert main(["model", "add", str(write_model_files(tmp_path / "m", *bundled())), "--promote", *reg]) == 0
    commands = {
        "bridge run": ["bridge", "run", "--broker", broker, "--influx-api", "v1", "--influx-url", "http://127.0.0.1:9",
                       "--influx-db", "x"],
        "model deploy": ["model", "deploy", "vibration_ae", "--broker", broker, "--key",
                         str(tmp_path / "keys" / "deploy.key"), *reg],
        "model retrain": ["model", "retrain", "vibration_ae", "--request", "--broker", broker],
        "devices simulate": ["devices", "simulate", "--broker", broker, "--devices", "1", "--count", "1"],
    }
    edge = CliProcess(["edge", "run", "--broker", broker], tmp_path / "edge.log").start()
    try:
        procs = {name: subprocess.Popen([sys.executable, "-m", "edgeloop.cli", *args], cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, args in commands.items()}
        results = {name: proc.communicate(timeout=120) for name, proc in procs.items()}
        codes = {name: proc.returncode for name, proc in procs.items()}
        assert codes == dict.fromkeys(commands, 4), results
        for name, (_out, err) in results.items():
            assert f"no connection to broker {broker} within 10s" in err, (name, err)
        # The edge outlived all of them, retrying.
        assert edge.alive(), logs(edge)
        eventually(lambda: f"cannot connect to broker {broker}" in edge.log() and "retrying in" in edge.log(),
                   timeout=30, message=logs(edge))
        assert edge.alive(), logs(edge)
    finally:
        code = edge.terminate()
    assert code == 0, logs(edge)

    row = readme_exit_code(4)
    assert row.startswith("no broker within 10 s: `bridge run` at startup")
    for name in commands:
        assert f"`{name.split()[0]} {name.split()[1]}" in row.replace("\\|", "|"), (name, row)
    text = (REPO / "README.md").read_text()
    assert "`edge run` never exits for an unreachable broker: it retries with backoff" in text
