"""When the bridge acknowledges a QoS 1 result, seen from a real mosquitto: what a bridge did not
acknowledge, the broker delivers again to the next bridge with the same persistent session.

The database is the sink seam (``Bridge(cfg, sink=...)``, scripted to fail or accept); the MQTT side is
all real: mosquitto, the bridge's own link with manual acks, a persistent session.
"""

from __future__ import annotations

from helpers import ScriptedSink, result_payload
from lab.configs import SYNTHETIC_RESULTS
from lab.mqtt import connect, publish_all
from lab.servers import eventually

import edgeloop.bridge.batching as batching_module
from edgeloop.bridge.app import Bridge
from edgeloop.bridge.config import BridgeConfig
from edgeloop.bridge.errors import Unavailable


def start_bridge(mosquitto, uid: str, sink: ScriptedSink) -> Bridge:
    cfg = BridgeConfig.model_validate({
        "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{uid}"},  # one persistent session for both bridges
        "influx": {"api": "v1", "batch_size": 5, "flush_interval_ms": 20},
        **SYNTHETIC_RESULTS,  # made-up results: no edge announces their version
    })
    bridge = Bridge(cfg, sink=sink)
    bridge.start(5)
    # start() returns at CONNACK; the birth status is published after the SUBSCRIBE on the same connection,
    # so once the bridge has its own birth back, results published from now on are routed to it.
    eventually(lambda: bridge.stats()["statuses"] >= 1, timeout=10, message="the bridge's birth status")
    return bridge


def results_written(sink: ScriptedSink) -> list[int]:
    """The ``seq`` field of every inference line the sink accepted (statuses are written too: skipped)."""
    return [int(line.split("seq=")[1].split("i")[0]) for batch in sink.batches for line in batch
            if line.startswith("inference,")]


def test_results_are_acknowledged_once_written_and_rejects_once_dead_lettered(mosquitto, unique_id, monkeypatch):
    monkeypatch.setattr(batching_module, "RETRY_FIRST_S", 0.05)
    topic = f"results/dev-{unique_id}/m1"
    client = connect(mosquitto.port)
    first = ScriptedSink(Unavailable("down"), Unavailable("down"))
    bridge = start_bridge(mosquitto, unique_id, first)
    try:
        publish_all(client, [(topic, result_payload(f"dev-{unique_id}", seq=seq)) for seq in range(5)]
                    + [(topic, b'{"not": "a result"}')])
        eventually(lambda: len(results_written(first)) >= 5 and bridge.stats()["rejected"], timeout=15,
                   message="results written after two failed attempts, the bad one rejected")
        assert results_written(first) == [0, 1, 2, 3, 4], first.batches
        assert bridge.stats()["retries"] == 2 and bridge.stats()["rejected"] == {"invalid_schema": 1}
    finally:
        assert bridge.stop(timeout_s=10)

    # The next bridge on the same session gets only what is new: everything before was acknowledged.
    second = ScriptedSink()
    bridge = start_bridge(mosquitto, unique_id, second)
    try:
        publish_all(client, [(topic, result_payload(f"dev-{unique_id}", seq=99))])
        eventually(lambda: 99 in results_written(second), timeout=15, message="the new result written")
        assert results_written(second) == [99] and bridge.stats()["rejected"] == {}
    finally:
        assert bridge.stop(timeout_s=10)
        client.disconnect()


def test_results_given_up_at_stop_are_not_acknowledged_and_come_again(mosquitto, unique_id, monkeypatch):
    monkeypatch.setattr(batching_module, "RETRY_FIRST_S", 0.01)
    topic = f"results/dev-{unique_id}/m1"
    client = connect(mosquitto.port)
    down = ScriptedSink(*[Unavailable("down")] * 10_000)
    bridge = start_bridge(mosquitto, unique_id, down)
    try:
        publish_all(client, [(topic, result_payload(f"dev-{unique_id}", seq=seq)) for seq in range(3)])
        eventually(lambda: bridge.stats()["retries"] >= 2, timeout=15, message="the bridge retries")
    finally:
        assert bridge.stop(timeout_s=0.3) is False
    # The three results and the bridge's own birth status (it subscribes to status/+ too).
    assert bridge.stats()["given_up_at_stop"] == 4 and down.batches == []

    up = ScriptedSink()
    bridge = start_bridge(mosquitto, unique_id, up)
    try:
        eventually(lambda: len(results_written(up)) >= 3, timeout=15,
                   message="the unacknowledged results delivered again to the next bridge")
        assert sorted(results_written(up)) == [0, 1, 2], up.batches
    finally:
        assert bridge.stop(timeout_s=10)
        client.disconnect()
