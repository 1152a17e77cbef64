"""Home Assistant MQTT discovery from a real edge process against a real mosquitto (runtime/ha_discovery.py).

A subscriber that connects *after* the edge announced gets the configs: they are retained, as Home
Assistant needs them to be to find the entities again after its own restart.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from lab.mqtt import Watcher, connect, publish_all
from lab.procs import CliProcess, logs, terminate_all
from lab.servers import eventually

from edgeloop.contract import NodeStatus
from edgeloop.devices.simulator import FleetSimulator

DEVICES = ["press-01", "lathe.02"]  # a '.' is a valid device id but not a valid Home Assistant object id


def run_edge(mosquitto, tmp_path: Path, node: str, ha: str) -> tuple[CliProcess, list[tuple[str, bytes]]]:
    config = tmp_path / "edge.yaml"
    config.write_text(f"node_id: {node}\n{ha}")
    edge = CliProcess(["edge", "run", "-c", str(config), "--broker", mosquitto.url], tmp_path / "edge.log").start()
    sim = FleetSimulator(len(DEVICES), seed=3, sensors=("vibration",), start_ts=time.time() - 30)
    readings = []
    for topic, r in sim.readings(count=4 * len(DEVICES)):
        index = int(topic.split("/")[1][4:])
        readings.append((f"sensors/{DEVICES[index]}/vibration", r.model_dump_json(exclude_none=True).encode()))
    return edge, readings


def test_an_edge_with_discovery_announces_each_device_and_model_once_retained(mosquitto, tmp_path, unique_id):
    node = f"ha-{unique_id}"
    prefix = f"ha{unique_id}"
    watcher = Watcher(mosquitto.port, ["status/#", "results/#", f"{prefix}/#"])
    edge, readings = run_edge(mosquitto, tmp_path, node,
                              f"homeassistant:\n  enabled: true\n  discovery_prefix: {prefix}\n")
    try:
        watcher.wait_online(node, edge)
        pub = connect(mosquitto.port)
        publish_all(pub, readings)
        publish_all(pub, readings[-2:])  # more results for the same pairs announce nothing more
        eventually(lambda: len(watcher.on("results/")) >= 3 * len(DEVICES), timeout=60, message="results",
                   alive=[edge])
        # A subscriber arriving later (Home Assistant restarting) still gets every config: they are retained.
        late = Watcher(mosquitto.port, [f"{prefix}/#"])
        eventually(lambda: len(late.messages()) >= 2 * len(DEVICES), timeout=30, message="retained discovery configs")
        watcher.sync(f"{prefix}/sync")
        late.sync(f"{prefix}/sync")
    finally:
        codes = terminate_all(edge)
    assert codes == [0], logs(edge)

    configs = {m.topic: json.loads(m.payload) for m in late.messages() if m.topic.endswith("/config")}
    assert all(m.retain for m in late.messages() if m.topic.endswith("/config"))
    assert len([m for m in watcher.messages(prefix) if m.topic.endswith("/config")]) == 2 * len(DEVICES)  # once
    assert len(configs) == 2 * len(DEVICES)
    status = NodeStatus.model_validate_json(watcher.on(f"status/{node}")[0])
    for topic, config in configs.items():
        _, component, node_id, object_id, last = topic.split("/")
        assert component in ("binary_sensor", "sensor") and last == "config"
        assert re.fullmatch(r"[A-Za-z0-9_-]+", node_id) and re.fullmatch(r"[A-Za-z0-9_-]+", object_id)
        device = config["device"]["name"]
        assert device in DEVICES and config["state_topic"] == f"results/{device}/vibration_ae"
        assert {"name", "unique_id", "value_template", "availability", "device"} <= set(config)
        assert config["device"]["identifiers"] and re.fullmatch(r"[A-Za-z0-9_-]+", config["unique_id"])
        (avail,) = config["availability"]
        assert avail["topic"] == f"status/{node}"
        assert (avail["payload_available"], avail["payload_not_available"]) == ("online", "offline")
        # The template reads the edge's retained status (birth, LWT and clean exit alike).
        assert avail["value_template"] == "{{ value_json.state }}" and status.state == "online"
        if component == "binary_sensor":
            assert config["device_class"] == "problem"
            assert config["value_template"] == "{{ 'ON' if value_json.anomaly else 'OFF' }}"
        else:
            assert config["value_template"] == "{{ value_json.score }}"
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    # What the templates read is in every result the edge published.
    result = json.loads(watcher.on("results/")[0])
    assert isinstance(result["anomaly"], bool) and isinstance(result["score"], float)
    # The edge's counters say what it announced.
    final = NodeStatus.model_validate_json(watcher.on(f"status/{node}")[-1])
    assert final.state == "offline" and final.counters["ha_discovery_announced"] == len(DEVICES)


def test_discovery_is_off_by_default(mosquitto, tmp_path, unique_id):
    node = f"noha-{unique_id}"
    watcher = Watcher(mosquitto.port, ["status/#", "results/#", "homeassistant/#"])
    edge, readings = run_edge(mosquitto, tmp_path, node, "")
    try:
        watcher.wait_online(node, edge)
        publish_all(connect(mosquitto.port), readings)
        eventually(lambda: len(watcher.on("results/")) >= 3 * len(DEVICES), timeout=60, message="results",
                   alive=[edge])
        watcher.sync("homeassistant/sync")
    finally:
        codes = terminate_all(edge)
    assert codes == [0], logs(edge)
    assert [m.topic for m in watcher.messages("homeassistant/") if m.topic != "homeassistant/sync"] == []
