"""Every example in examples/ingest/ runs as its header says: the edge started with the example file, the
traffic its ``# traffic:`` line names (the simulator, or a third-party library's publisher), a real bridge,
and the results in a real InfluxDB under the device's own name as the ``device`` tag, one per window.

Parametrized over the folder: a new example is covered as soon as it is there (it must name its traffic).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.mqtt import Watcher
from lab.procs import REPO, CliProcess, logs, terminate_all
from lab.servers import eventually

EXAMPLES = sorted((REPO / "examples" / "ingest").glob("*.yaml"))
BRIDGE = "edgeloop-bridge"


def traffic_command(example: Path) -> list[str]:
    """The example's ``# traffic:`` line as a command: ``edgeloop ...`` or ``python -m ...``."""
    lines = [line for line in example.read_text().splitlines() if line.startswith("# traffic: ")]
    assert len(lines) == 1, f"{example.name}: needs one '# traffic: <command>' header line"
    words = shlex.split(lines[0][len("# traffic: "):])
    if words[0] == "edgeloop":
        return [sys.executable, "-m", "edgeloop.cli", *words[1:]]
    assert words[0] == "python", f"{example.name}: traffic is an edgeloop or a python -m command"
    return [sys.executable, *words[1:]]


def windows_per_device(example: Path, messages: int) -> int:
    (pipeline,) = yaml.safe_load(example.read_text())["pipelines"]
    window = next(s for s in pipeline["stages"] if s["type"] == "window")
    return (messages - window["size"]) // window["hop"] + 1 if messages >= window["size"] else 0


def test_the_examples_are_there():
    assert {p.stem for p in EXAMPLES} >= {"zigbee2mqtt", "tasmota", "senml", "influx-line", "sparkplug"}


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_results_land_in_influxdb_under_the_devices_own_names(example, mosquitto, influx_db, tmp_path,
                                                                       unique_id):
    influx, db = influx_db
    node = f"ex-{unique_id}"
    watcher = Watcher(mosquitto.port, ["status/#", "deadletter/#"])
    bridge = CliProcess(["bridge", "run", "--broker", mosquitto.url, "--influx-api", "v1",
                         "--influx-url", influx.url, "--influx-db", db], tmp_path / "bridge.log").start()
    edge = CliProcess(["edge", "run", "-c", str(example.relative_to(REPO)), "--broker", mosquitto.url,
                       "--node-id", node], tmp_path / "edge.log").start()
    try:
        watcher.wait_online(node, edge)
        watcher.wait_online(BRIDGE, bridge)
        command = traffic_command(example)
        run = subprocess.run([*command, "--broker", mosquitto.url], cwd=REPO, capture_output=True, text=True,
                             timeout=120, check=False)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        expected = {d: windows_per_device(example, n) for d, n in report["sent_by_device"].items()}
        assert sum(expected.values()) > 0

        def stored():
            rows = influx.points('SELECT "score", "anomaly" FROM "inference" GROUP BY "device", "model", "node"', db)
            return rows if len(rows) >= sum(expected.values()) else None

        eventually(stored, timeout=90, interval=0.5, alive=[edge, bridge],
                   message=f"{sum(expected.values())} results of {example.name} in influxd")
    finally:
        codes = terminate_all(edge, bridge)
        watcher.sync("deadletter/sync")
        watcher.close()
    assert codes == [0, 0], logs(edge, bridge)
    rows = stored() or []
    counted: dict[str, int] = {}
    for r in rows:
        counted[r["device"]] = counted.get(r["device"], 0) + 1
    assert counted == expected  # the device's own name, one point per window, nothing else
    assert {(r["model"], r["node"]) for r in rows} == {("climate_ae", node)}
    assert [m.topic for m in watcher.messages("deadletter/") if m.topic != "deadletter/sync"] == []
