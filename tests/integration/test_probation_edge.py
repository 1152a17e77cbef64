"""Probation on a real edge process (``edgeloop edge run``) and a real mosquitto: a blind candidate is
rolled back naming the rule, and one device sending +-3e38 during a good model's probation does not
roll it back. Candidates are the bundled model with rewritten metadata, signed with a test key.
"""

from __future__ import annotations

import json

import pytest
from deploy_fixtures import BASE_VERSION, MODEL, deploy_state, make_keys, seeded_registry, variant, watch_fleet

from edgeloop.bridge.deployer import Deployer
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.mqtt import MqttSettings
from lab import configs
from lab.mqtt import Publisher, paced
from lab.procs import CliProcess, logs
from lab.servers import eventually

NODE = "edge-probation"
EXTREME = "dev-001"


@pytest.fixture
def rig(mosquitto, tmp_path):
    """(registry, deployer, watcher, edge process): the edge runs signed deployment with a 20-window probation."""
    keys = make_keys(tmp_path)
    registry = seeded_registry(tmp_path / "registry")
    cfg = configs.edge_config(NODE, mosquitto.url, {"input": {"qos": 1}},
                              configs.signed_deploy(keys.public_file, tmp_path / "state", canary_windows=20))
    edge = CliProcess(["edge", "run", "-c", str(configs.write_config(tmp_path / "edge.yaml", cfg))],
                      tmp_path / "edge.log").start()
    deployer = Deployer.connect(MqttSettings(url=mosquitto.url), registry, keys.signing, canary_timeout_s=60,
                                rollout_timeout_s=60, chunk_size=4096)
    watcher = watch_fleet(mosquitto.port)
    try:
        eventually(lambda: NODE in deployer.nodes(), timeout=30, message=f"{NODE} not online\n{logs(edge)}")
        yield registry, deployer, watcher, edge
    finally:
        edge.terminate()
        deployer.close()
        watcher.close()


def readings(devices: int, extreme: str | None = None):
    """(topic, payload) of simulated vibration readings; every reading of ``extreme`` is +-3e38 instead."""
    sim = FleetSimulator(devices, seed=5, anomaly_rate=0.0, sensors=("vibration",))
    for topic, reading in sim.readings(count=10**9):
        if extreme is not None and f"/{extreme}/" in topic:
            reading = reading.model_copy(update={"values": [[3e38 if (i + j) % 2 else -3e38 for j in range(len(row))]
                                                            for i, row in enumerate(reading.values)]})
        yield topic, reading.model_dump_json(exclude_none=True).encode()


def test_a_blind_candidate_is_rolled_back_as_blind(rig, mosquitto):
    registry, deployer, watcher, edge = rig
    registry.add(MODEL, *variant("2.0.0", threshold=1e9), parent=BASE_VERSION)  # never flags
    publisher = Publisher(mosquitto.port, paced(readings(3), 150.0)).start()
    try:
        eventually(lambda: len(watcher.results(NODE)) >= 10, timeout=30, message=f"no results\n{logs(edge)}")
        report = deployer.deploy(MODEL, "2.0.0", canary=[NODE])
    finally:
        publisher.stop()
        publisher.close()
    assert report.outcome == "canary_failed" and report.nodes[NODE] == "rolled_back:unhealthy", report
    state = eventually(lambda: deploy_state(watcher, NODE), timeout=10, message="no deploy state")
    assert state.state == "rolled_back" and state.detail.startswith("blind: "), state
    assert "anomaly_rate" not in state.detail and "latency" not in state.detail
    on_probation = [r for r in watcher.results(NODE) if r.model_version == "2.0.0"]
    assert on_probation and not any(r.anomaly for r in on_probation)  # its anomaly rate was a perfect 0
    eventually(lambda: watcher.status(NODE).models[MODEL].version == BASE_VERSION, timeout=10,
               message="not back on the proven model")
    assert "2.0.0" in registry.refused(MODEL) and registry.current(MODEL) == BASE_VERSION


def test_one_device_sending_extreme_values_does_not_roll_back_a_good_model(rig, mosquitto):
    registry, deployer, watcher, edge = rig
    registry.add(MODEL, *variant("1.1.0"), parent=BASE_VERSION)
    publisher = Publisher(mosquitto.port, paced(readings(3, extreme=EXTREME), 150.0)).start()
    try:
        eventually(lambda: len(watcher.results(NODE)) >= 10, timeout=30, message=f"no results\n{logs(edge)}")
        report = deployer.deploy(MODEL, "1.1.0", canary=[NODE])
    finally:
        publisher.stop()
        publisher.close()
    assert report.outcome == "deployed" and report.nodes[NODE] == "healthy", (report, logs(edge))
    # The deployer heard "healthy" on its own connection; the watcher's copy of the status may be a moment behind.
    eventually(lambda: (s := deploy_state(watcher, NODE)) is not None and s.state == "healthy", timeout=10,
               message="the edge never reported the deployment healthy")
    letters = [json.loads(d) for d in watcher.on("deadletter/")]
    invalid = [d for d in letters if d["reason"] == "invalid_input"]
    assert invalid and all(EXTREME in d["topic"] for d in invalid)
    assert not any(d["reason"] == "invalid_output" for d in letters)
    assert not any(r.device == EXTREME for r in watcher.results(NODE))
    assert registry.current(MODEL) == "1.1.0"
