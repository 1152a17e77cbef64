"""The bridge when its peers fail: influxd down, a broker restart (a missing or dropped database, refused
credentials: tests/integration/test_bridge_influx_setup.py)."""

from __future__ import annotations

import time

from helpers import result_payload
from lab.configs import SYNTHETIC_RESULTS
from lab.servers import InfluxDB1, eventually

from edgeloop.bridge import Bridge, BridgeConfig
from edgeloop.mqtt import MqttLink, MqttSettings, wait_for_all

NOW = time.time() - 600


def messages(uid: str, seqs: range) -> list[tuple[str, bytes]]:
    return [(f"results/dev-{uid}/m1", result_payload(f"dev-{uid}", seq=seq, ts=NOW + seq)) for seq in seqs]


def publish(mosquitto, uid: str, items: list[tuple[str, bytes]]) -> None:
    link = MqttLink(MqttSettings(url=mosquitto.url), f"pub-{uid}-{time.monotonic_ns()}")
    link.start(5)
    try:
        assert wait_for_all([link.publish(t, p, qos=1) for t, p in items], 15)
    finally:
        link.stop()


def count(influxdb: InfluxDB1, db: str) -> int:
    rows = influxdb.points('SELECT count("seq") FROM inference', db)
    return rows[0]["count"] if rows else 0


def config(mosquitto, uid: str, influxdb: InfluxDB1, db: str) -> BridgeConfig:
    return BridgeConfig.model_validate({
        "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{uid}", "reconnect_min_s": 0.5, "reconnect_max_s": 2},
        "influx": {"api": "v1", "url": influxdb.url, "db": db, "batch_size": 100, "flush_interval_ms": 50,
                   "timeout_s": 2},
        **SYNTHETIC_RESULTS,
    })


def test_influxd_down_then_back_nothing_is_lost(tmp_path, mosquitto, unique_id):
    db = f"faults_{unique_id}"
    with InfluxDB1(tmp_path / "influxdb") as influxdb:
        influxdb.create_database(db)
        bridge = Bridge(config(mosquitto, unique_id, influxdb, db))
        bridge.start(5)
        try:
            influxdb.kill()
            publish(mosquitto, unique_id, messages(unique_id, range(50)))
            eventually(lambda: bridge.stats()["retries"] >= 2, timeout=15, message="bridge retries while influxd is down")
            assert bridge.stats()["write_errors"].get("unavailable", 0) >= 2
            influxdb.restart()
            eventually(lambda: count(influxdb, db) == 50, timeout=30, message="all points written after restart")
            # 50 results plus the bridge's own birth status (status/{node_id} is subscribed too). The points
            # are queryable a moment before the writer, back from its HTTP call, counts them.
            stats = eventually(lambda: (s := bridge.stats())["points_written"] == 50 + s["statuses"] and s,
                               timeout=10, message="written points counted")
            assert stats["points_dropped"] == 0
        finally:
            assert bridge.stop(timeout_s=10)


def test_broker_restart_resubscribes(mosquitto, influxdb, unique_id):
    db = f"broker_{unique_id}"
    influxdb.create_database(db)
    bridge = Bridge(config(mosquitto, unique_id, influxdb, db))
    bridge.start(5)
    try:
        publish(mosquitto, unique_id, messages(unique_id, range(5)))
        eventually(lambda: count(influxdb, db) == 5, timeout=15)
        mosquitto.restart()
        eventually(lambda: bridge.stats()["mqtt_reconnects"] >= 1, timeout=20, message="bridge reconnected")
        publish(mosquitto, unique_id, messages(unique_id, range(5, 10)))
        eventually(lambda: count(influxdb, db) == 10, timeout=15, message="written after broker restart")
    finally:
        assert bridge.stop(timeout_s=10)
