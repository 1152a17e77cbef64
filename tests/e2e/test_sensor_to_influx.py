"""The whole path with real processes: simulator -> mosquitto -> edge -> mosquitto -> bridge -> InfluxDB.

The edge and the bridge run as separate processes started through the real
CLI (``python -m edgeloop.cli ...``), exactly as a user starts them.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from edgeloop.devices.simulator import FleetSimulator
from reference import reference_features
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.contract import DeadLetter, NodeStatus, sensor_topic
from edgeloop.edge.inference import TfliteModel
from lab.mqtt import Watcher, connect, publish_all
from lab.procs import CliProcess, logs, terminate_all
from lab.servers import eventually

BRIDGE = "edgeloop-bridge"  # the bridge's default node id: its retained birth says it has subscribed
DEVICES = 3
READINGS = 40  # vibration readings per device -> READINGS - 1 windows each (size 128, hop 64, 64-sample readings)


def fleet_readings(seed: int = 11) -> list[tuple[str, object]]:
    """READINGS vibration readings from each of DEVICES simulated machines, in time order."""
    # Device time now: the bridge stores only timestamps near arrival (store.max_past_s).
    sim = FleetSimulator(DEVICES, seed=seed, anomaly_rate=0.01, sensors=("vibration",), start_ts=time.time() - 60)
    readings = list(sim.readings(count=READINGS * DEVICES))
    per_device = {}
    for topic, _ in readings:
        per_device[topic] = per_device.get(topic, 0) + 1
    assert set(per_device.values()) == {READINGS}, per_device
    return readings


def start_edge(broker, tmp_path: Path, node: str) -> CliProcess:
    return CliProcess(["edge", "run", "--broker", broker.url, "--node-id", node], tmp_path / "edge.log").start()


def expected_scores(readings, device: str, seqs: list[int]) -> dict[int, float]:
    """Score windows straight from the raw readings: numpy reference features, stored statistics, the model."""
    model = TfliteModel(BUNDLED_MODEL)
    norm = model.normalization
    chunks = {r.seq: np.asarray(r.values, dtype=np.float32) for t, r in readings if f"/{device}/" in t}
    out = {}
    for seq in seqs:
        window = np.concatenate([chunks[seq - 1], chunks[seq]])
        feats = (reference_features(window) - np.asarray(norm["mean"])) / np.asarray(norm["std"])
        out[seq] = float(model.run(feats[None, :].astype(np.float32))[0, model.score_output])
    return out


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_every_window_is_stored_once_with_the_right_tags_and_scores(api, mosquitto, influx_db, victoria, tmp_path, unique_id):
    influx, db = influx_db
    node = f"e2e-{unique_id}"
    collector = Watcher(mosquitto.port, ["status/#", "deadletter/#"])
    if api == "v1":
        sink_args = ["--influx-api", "v1", "--influx-url", influx.url, "--influx-db", db]
    else:
        token = tmp_path / "token"
        token.write_text("not-a-real-token\n")
        token.chmod(0o600)
        sink_args = [
            "--influx-api", "v2", "--influx-url", victoria.url, "--influx-bucket", f"b{unique_id}",
            "--influx-org", "edgeloop", "--influx-token-file", str(token),
        ]
    bridge = CliProcess(["bridge", "run", "--broker", mosquitto.url, *sink_args], tmp_path / "bridge.log").start()
    edge = start_edge(mosquitto, tmp_path, node)
    try:
        collector.wait_online(node, edge)
        collector.wait_online(BRIDGE, bridge)
        readings = fleet_readings()
        pub = connect(mosquitto.port)
        publish_all(pub, [(t, r.model_dump_json(exclude_none=True).encode()) for t, r in readings])
        windows = DEVICES * (READINGS - 1)

        if api == "v1":
            def stored():
                rows = influx.points(
                    'SELECT "score", "seq", "anomaly", "model_sha256" FROM "inference" '
                    'GROUP BY "device", "sensor", "model", "model_version", "node"',
                    db,
                )
                return rows if len(rows) >= windows else None

            eventually(stored, timeout=60, interval=0.5, message=f"fewer than {windows} points in influxd",
                       alive=[edge, bridge])
        else:
            def stored():
                series = victoria.export('{__name__="inference_score"}')
                rows = [
                    {**s["metric"], "score": v, "time": ts}
                    for s in series if s["metric"].get("node") == node
                    for v, ts in zip(s["values"], s["timestamps"])
                ]
                return rows if len(rows) >= windows else None

            eventually(stored, timeout=60, interval=1.0, message=f"fewer than {windows} points in VictoriaMetrics",
                       alive=[edge, bridge])
    finally:
        codes = terminate_all(edge, bridge)  # both drain: whatever they would still send is sent by now
        collector.sync("deadletter/sync")
        collector.close()
    assert codes == [0, 0], logs(edge, bridge)

    # Read back after the drain, so a duplicate written at any time is counted (export() flushes VictoriaMetrics).
    rows = stored() or []
    assert len(rows) == windows  # exactly one point per window
    written = bridge.final_stats()
    assert written["points_written"] == windows + written["statuses"], written  # and the bridge wrote each once
    model = TfliteModel(BUNDLED_MODEL)
    assert {r["device"] for r in rows} == {f"dev-{i:03d}" for i in range(DEVICES)}
    assert {(r["sensor"], r["model"], r["model_version"], r["node"]) for r in rows} == {
        ("vibration", model.name, model.version, node)
    }
    if api == "v1":
        assert {r["model_sha256"] for r in rows} == {model.sha256}
        per_device = {}
        for r in rows:
            per_device.setdefault(r["device"], {})[int(r["seq"])] = r
        assert all(sorted(seqs) == list(range(1, READINGS)) for seqs in per_device.values())
        device = "dev-001"
        spot = [1, 2, READINGS // 2, READINGS - 1]
        want = expected_scores(readings, device, spot)
        for seq in spot:
            got = per_device[device][seq]
            assert got["score"] == pytest.approx(want[seq], rel=1e-3, abs=1e-5)
            assert got["anomaly"] == (want[seq] > model.threshold)
    # Nothing was rejected on the way.
    assert collector.on("deadletter/") == []


def test_bad_input_is_dead_lettered_and_good_input_around_it_is_processed(mosquitto, influx_db, tmp_path, unique_id):
    influx, db = influx_db
    node = f"bad-{unique_id}"
    collector = Watcher(mosquitto.port, ["status/#", "deadletter/#", "results/#"])
    bridge = CliProcess(
        ["bridge", "run", "--broker", mosquitto.url, "--influx-api", "v1", "--influx-url", influx.url, "--influx-db", db],
        tmp_path / "bridge.log",
    ).start()
    edge = start_edge(mosquitto, tmp_path, node)
    good = fleet_readings(seed=5)
    good_msgs = [(t, r.model_dump_json(exclude_none=True).encode()) for t, r in good]
    chunk3 = json.dumps({"ts": 1.7e9, "seq": 999, "values": [[0.0] * 3] * 64, "rate_hz": 1000})
    edge_junk = [
        (sensor_topic("dev-000", "vibration"), b"{not json"),
        (sensor_topic("dev-000", "vibration"), b'{"ts": 1700000000, "seq": 5, "values": [[1, 2, 3], [NaN, 1, 2]]}'),
        (sensor_topic("dev-001", "vibration"), b'{"ts": 1700000000, "seq": 5, "values": [[1, 2], [3, 4]]}'),
        (sensor_topic("dev-001", "vibration"), b'{"ts": "yesterday", "seq": 5, "values": [[1, 2, 3]]}'),
        (sensor_topic("dev-002", "vibration"), b'{"ts": 1700000000, "seq": 5, "values": [[1e999, 2, 3]]}'),
        (sensor_topic("dev-002", "vibration"), chunk3.replace("999", "-1").encode()),
        ("sensors/" + "x" * 200 + "/vibration", chunk3.encode()),
        (sensor_topic("dev-002", "vibration"), b"[" + b"1," * 200_000 + b"1]"),  # > 256 KiB
        (sensor_topic("dev-000", "vibration"), b""),
        (sensor_topic("dev-000", "vibration"), b"\xff\xfe\x00"),
    ]
    bridge_junk = [
        ("results/dev-000/vibration_ae", b"{}"),
        ("results/dev-000/vibration_ae", b"not json"),
        ("results/dev-000/vibration_ae", b'[{"v": 1}]'),
        ("results/dev-999/vibration_ae", None),  # topic/payload device mismatch, filled in below
        ("status/" + "n" * 100, b'{"v":1}'),
    ]
    try:
        collector.wait_online(node, edge)
        collector.wait_online(BRIDGE, bridge)
        pub = connect(mosquitto.port)
        # Interleave junk with the good stream so that good messages sit on both sides of each bad one.
        step = len(good_msgs) // (len(edge_junk) + 1)
        stream: list[tuple[str, bytes]] = []
        for i, junk in enumerate(edge_junk):
            stream += good_msgs[i * step : (i + 1) * step] + [junk]
        stream += good_msgs[len(edge_junk) * step :]
        publish_all(pub, stream)
        windows = DEVICES * (READINGS - 1)
        eventually(lambda: len(collector.on("results/")) >= windows, timeout=60, message="results from the edge",
                   alive=[edge, bridge])
        one_result = collector.on("results/")[0]
        bridge_junk[3] = ("results/dev-999/vibration_ae", one_result)
        publish_all(pub, bridge_junk)

        def counted():
            letters = [DeadLetter.model_validate_json(p) for p in collector.on("deadletter/")]
            edge_letters = [d for d in letters if d.component == "edge"]
            bridge_letters = [d for d in letters if d.component == "bridge"]
            ok = len(edge_letters) >= len(edge_junk) and len(bridge_letters) >= len(bridge_junk)
            return (edge_letters, bridge_letters) if ok else None

        edge_letters, bridge_letters = eventually(counted, timeout=30, message="dead letters for every bad message",
                                                   alive=[edge, bridge])
        eventually(lambda: len(influx.points('SELECT "score" FROM "inference"', db)) >= windows, timeout=30,
                   message="every good window stored", alive=[edge, bridge])
    finally:
        codes = terminate_all(edge, bridge)  # both drain
        collector.sync("deadletter/sync")  # every letter and result they sent has arrived
        collector.close()
    assert codes == [0, 0], logs(edge, bridge)
    edge_letters, bridge_letters = counted() or ([], [])
    rows = influx.points('SELECT "score" FROM "inference"', db)
    assert len(edge_letters) == len(edge_junk)
    assert len(bridge_letters) == len(bridge_junk)
    assert len(rows) == windows
    from_edge = [m.payload for m in collector.messages("results/")
                 if "dev-999" not in m.topic and f'"node":"{node}"'.encode() in m.payload]
    assert len(from_edge) == windows  # (the test's own junk on results/ is not counted)
    reasons = {d.reason for d in edge_letters}
    assert {"malformed_json", "non_finite", "wrong_shape", "invalid_schema", "bad_topic", "oversized"} <= reasons
    assert "topic_mismatch" in {d.reason for d in bridge_letters}
    assert all(d.detail for d in edge_letters + bridge_letters)


def test_sigterm_drains_every_received_reading(mosquitto, tmp_path, unique_id):
    node = f"drain-{unique_id}"
    collector = Watcher(mosquitto.port, ["status/#", "results/#"])
    edge = start_edge(mosquitto, tmp_path, node)
    try:
        collector.wait_online(node, edge)
        readings = fleet_readings(seed=9)
        publish_all(connect(mosquitto.port), [(t, r.model_dump_json(exclude_none=True).encode()) for t, r in readings])
    finally:
        rc = edge.terminate()  # immediately after the broker acked the last reading
    collector.sync("status/sync")  # everything the edge published before it exited has arrived
    collector.close()
    assert rc == 0, edge.log()
    windows = DEVICES * (READINGS - 1)
    assert len(collector.on("results/")) == windows, edge.log()
    last = NodeStatus.model_validate_json(collector.on(f"status/{node}")[-1])
    assert last.state == "offline"
    assert math.isfinite(last.ts)
