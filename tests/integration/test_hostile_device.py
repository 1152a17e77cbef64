"""One hostile device on the shipped broker ACL cannot break the store or steer the loop (issue 11, items 4-6).

Real parts: mosquitto with the production TLS listener and ACL (tests/securebroker.py), every
client with its own certificate; influxd with a low ``max-values-per-tag`` (40), so what a tag
of unbounded cardinality does to a production database shows in seconds; the bridge with its
default admission settings and a model registry.

The ACL (generated from ``FLEET``: the edge runtime on each device, as its own identity serving
that device) lets ``dev-evil`` publish ``results/dev-evil/+``, ``samples/dev-evil/+`` and
``status/dev-evil`` with any payload: a compromised edge. (A sensor publisher, ``device`` in a
fleet file, may not publish results at all.) It sends results of 60 made-up versions (announcing each
in its status first, the strongest form), results dated 1970 and 2099, samples of a made-up
version, of the wrong width, and a flood of samples. Before these checks the made-up versions
pushed influxd past its limit and a newly deployed version's results were refused; the
timestamps opened a shard per 7 days. Now: every legitimate result lands, a newly deployed
version's too, and the device's own writes are bounded and dead-lettered with their reasons.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from certs import TestCA
from deploy_fixtures import BASE_VERSION, MODEL, seeded_registry, variant
from securebroker import OBSERVER, identity_link, secure_broker

from edgeloop.bridge import Bridge, BridgeConfig
from edgeloop.contract import DeadLetter, ModelRef, NodeStatus, SampleBatch, SampleRow
from edgeloop.mqtt import wait_for_all
from lab.servers import InfluxDB1, eventually

SHA = "ab" * 32
WIDTH = 30  # the bundled model's input
MAX_VALUES_PER_TAG = 40
TAG_VALUES = 8


def status(node: str, version: str) -> bytes:
    return NodeStatus(node=node, state="online", ts=time.time(),
                      models={MODEL: ModelRef(version=version, sha256=SHA)}).model_dump_json().encode()


def result(device: str, version: str, seq: int, ts: float | None = None) -> bytes:
    return json.dumps({"device": device, "sensor": "vibration", "model": MODEL, "model_version": version,
                       "model_sha256": SHA, "ts": time.time() if ts is None else ts, "seq": seq, "outputs": [0.1],
                       "score": 0.1, "anomaly": False, "label": "normal", "latency_ms": 1.0}).encode()


def samples(device: str, version: str, rows: int, width: int = WIDTH, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return SampleBatch(device=device, sensor="vibration", model=MODEL, model_version=version, model_sha256=SHA,
                       rows=[SampleRow(ts=time.time(), seq=seed * 10_000 + k, features=rng.normal(size=width).tolist(),
                                       score=0.1, anomaly=True, reason="random") for k in range(rows)]
                       ).model_dump_json().encode()


#: Each identity an edge serving itself; the bridge and its extra connections (BridgeConfig.identities).
FLEET = """\
edge dev-a dev-a
edge dev-b dev-b
edge dev-evil dev-evil
bridge edgeloop-bridge
bridge edgeloop-bridge-loop
status-reader edgeloop-bridge-status
"""


@pytest.mark.timeout(240)
def test_a_hostile_device_cannot_break_influxdb_or_the_loop_for_the_fleet(tmp_path):
    ca = TestCA(tmp_path / "pki")
    registry = seeded_registry(tmp_path / "registry")
    with secure_broker(tmp_path / "broker", ca.ca_file, ca.server(), fleet=FLEET) as broker, \
            InfluxDB1(tmp_path / "influxdb", max_values_per_tag=MAX_VALUES_PER_TAG) as influx:
        db = "hostile"
        influx.create_database(db)
        bridge_id, loop_id, status_id = (ca.client(n) for n in ("edgeloop-bridge", "edgeloop-bridge-loop",
                                                                 "edgeloop-bridge-status"))
        cfg = BridgeConfig.model_validate({
            "mqtt": {"url": f"mqtts://127.0.0.1:{broker.port}",
                     "tls": {"ca_file": str(ca.ca_file), "cert_file": str(bridge_id.cert),
                             "key_file": str(bridge_id.key)}},
            "identities": {"loop": {"cert_file": str(loop_id.cert), "key_file": str(loop_id.key)},
                           "status": {"cert_file": str(status_id.cert), "key_file": str(status_id.key)}},
            "influx": {"api": "v1", "url": influx.url, "db": db, "flush_interval_ms": 100},
            "store": {"max_tag_values": TAG_VALUES},
            "samples": {"enabled": True, "dir": str(tmp_path / "samples"), "flush_interval_s": 0.2,
                        "device_budget_bytes": 256 * 1024},
            "drift": {"enabled": True, "window_s": 5, "interval_s": 1},
            "retrain": {"enabled": False, "registry": str(registry.root)},
        })
        letters: list[DeadLetter] = []
        observer = identity_link(broker.port, ca.ca_file, ca.client(OBSERVER), "observer",
                                 [("deadletter/#", 1)], lambda m: letters.append(DeadLetter.model_validate_json(m.payload)))
        bridge = Bridge(cfg)
        bridge.start(10)
        legit = identity_link(broker.port, ca.ca_file, ca.client("dev-a"), "dev-a")
        other = identity_link(broker.port, ca.ca_file, ca.client("dev-b"), "dev-b")
        evil = identity_link(broker.port, ca.ca_file, ca.client("dev-evil"), "dev-evil")
        try:
            # The fleet: dev-a's edge announces the registry's version and sends results and samples.
            infos = [legit.publish("status/dev-a", status("dev-a", BASE_VERSION), qos=1, retain=True)]
            infos += [legit.publish(f"results/dev-a/{MODEL}", result("dev-a", BASE_VERSION, seq), qos=1)
                      for seq in range(5)]
            infos += [legit.publish(f"samples/dev-a/{MODEL}", samples("dev-a", BASE_VERSION, 20, seed=1), qos=1)]
            # The hostile device, on topics the ACL grants it: results dated 1970 .. 2099 of a version it announces,
            infos.append(evil.publish("status/dev-evil", status("dev-evil", "evil-ts"), qos=1, retain=True))
            for k, ts in enumerate((1.0, 86_400.0 * 7, 4_102_444_000.0, time.time() + 3600)):
                infos.append(evil.publish(f"results/dev-evil/{MODEL}", result("dev-evil", "evil-ts", 200 + k, ts), qos=1))
            for i in range(60):  # 60 versions > max-values-per-tag, each announced in its own status first
                infos.append(evil.publish("status/dev-evil", status("dev-evil", f"evil-{i}"), qos=1, retain=True))
                infos.append(evil.publish(f"results/dev-evil/{MODEL}", result("dev-evil", f"evil-{i}", i), qos=1))
            infos += [evil.publish(f"results/dev-evil/{MODEL}", result("dev-evil", "never-announced", 100), qos=1)]
            infos += [
                evil.publish(f"samples/dev-evil/{MODEL}", samples("dev-evil", "made-up", 10), qos=1),
                evil.publish(f"samples/dev-evil/{MODEL}", samples("dev-evil", BASE_VERSION, 1, width=4096), qos=1),
            ]
            infos += [evil.publish(f"samples/dev-evil/{MODEL}", samples("dev-evil", BASE_VERSION, 100, seed=k), qos=1)
                      for k in range(2, 12)]  # ~600 KB of valid rows: past the 256 KiB budget
            assert wait_for_all(infos, 30)

            # A version the deployer rolls out is in the registry before any edge runs it ...
            content, meta = variant("2.0.0")
            registry.add(MODEL, content, meta)
            infos = [legit.publish(f"results/dev-a/{MODEL}", result("dev-a", "2.0.0", seq), qos=1) for seq in range(5, 10)]
            # ... and one deployed by other means is announced in the edge's status before its first result.
            infos += [other.publish("status/dev-b", status("dev-b", "3.0.0"), qos=1, retain=True)]
            infos += [other.publish(f"results/dev-b/{MODEL}", result("dev-b", "3.0.0", seq), qos=1) for seq in range(5)]
            assert wait_for_all(infos, 30)

            def points(where: str) -> list[dict]:
                return influx.points(f'SELECT * FROM "inference" WHERE {where}', db)

            eventually(lambda: len(points("device = 'dev-a'")) == 10 and len(points("device = 'dev-b'")) == 5,
                       timeout=120, message="legitimate results not all stored")
            assert sorted({p["model_version"] for p in points("device <> 'dev-evil'")}) == [BASE_VERSION, "2.0.0",
                                                                                             "3.0.0"]
            hostile = points("device = 'dev-evil'")
            assert len({p["model_version"] for p in hostile}) <= TAG_VALUES
            assert all(abs(p["seq"] - 200) > 3 for p in hostile), "a far timestamp was stored"
            shards = [row for row in influx.points("SHOW SHARDS", db) if row.get("database") == db]
            assert len(shards) <= 2, shards  # this week's (and at most the next's, near a boundary)

            loop = bridge.loop
            eventually(lambda: (loop.store.read(MODEL).device == "dev-a").sum() == 20
                       and loop.rejects.by_reason["device_budget"] > 0, timeout=30, message=f"samples: {loop.stats()}")
            frame = loop.store.read(MODEL)
            assert set(frame.device) <= {"dev-a", "dev-evil"} and (frame.device == "dev-a").sum() == 20
            assert (frame.device == "dev-evil").sum() < 600  # the flood was cut by the byte budget
            assert frame.features.shape[1] == WIDTH
            eventually(lambda: {"unknown_model_version", "timestamp_out_of_range", "tag_cardinality", "feature_width",
                                "device_budget"} <= {letter.reason for letter in letters},
                       timeout=30, message=f"dead letters: {sorted({letter.reason for letter in letters})}")
            assert all(letter.topic.split("/")[1] == "dev-evil" for letter in letters
                       if letter.topic.startswith(("results/", "samples/")))
        finally:
            assert bridge.stop(timeout_s=10)
            for link in (observer, legit, other, evil):
                link.stop()
        # The bridge's three connections, each its own identity: none took over another's session.
        assert "already connected" not in broker.log_path.read_text()


def test_a_restarted_bridge_stores_the_backlog_of_announced_versions(mosquitto, influx_db, unique_id):
    """Known versions must not cost the backlog: a persistent session delivers the results queued while
    the bridge was down before the retained statuses, so the bridge reads those first (KnownVersions.follow)."""
    from edgeloop.mqtt import MqttLink, MqttSettings

    influx, db = influx_db
    cfg = BridgeConfig.model_validate({
        "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{unique_id}"},
        "influx": {"api": "v1", "url": influx.url, "db": db, "flush_interval_ms": 100},
    })
    device = MqttLink(MqttSettings(url=mosquitto.url), f"edge-{unique_id}")
    device.start(10)
    try:
        assert wait_for_all([device.publish(f"status/edge-{unique_id}", status(f"edge-{unique_id}", "7.0.0"),
                                            qos=1, retain=True)], 10)
        first = Bridge(cfg)
        first.start(10)  # makes the persistent session
        assert first.stop(timeout_s=10)
        backlog = [device.publish(f"results/dev-{unique_id}/{MODEL}", result(f"dev-{unique_id}", "7.0.0", seq), qos=1)
                   for seq in range(20)]
        assert wait_for_all(backlog, 10)
        second = Bridge(cfg)
        second.start(10)
        try:
            eventually(lambda: len(influx.points('SELECT * FROM "inference"', db)) == 20, timeout=30,
                       message=f"backlog not stored: {second.stats()}")
            assert second.stats()["rejected"] == {}
        finally:
            assert second.stop(timeout_s=10)
    finally:
        device.stop()
