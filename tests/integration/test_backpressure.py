"""QoS 1 back-pressure with tiny queues: a full queue holds the broker back; nothing is dropped.

The edge's input queue and the bridge's queue are two items long, and the
stage behind each is stalled for longer than a QoS 0 message may wait. The
promise (README, docs/reliability.md): at QoS 1 the network thread waits for
room, so the broker keeps the rest, and every message is processed and
acknowledged once the stall ends -- none dropped, none acked unprocessed.

MQTT 3.1.1 on purpose: with MQTT 5 the bridge sends its queue size as Receive
Maximum, so the broker itself never has more in flight than the queue holds
and the overflow path is not reached (the edge announces its queue size plus
the readings it may hold, tests/integration/test_inflight_window.py); in 3.1.1
mosquitto sends up to its ``max_inflight_messages`` (20) to a client.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter

from integration.test_bridge_faults import count, messages, publish
from lab import configs
from lab.configs import SYNTHETIC_RESULTS
from lab.faultrig import expected_windows, fleet_readings
from lab.mqtt import Watcher, close, connect, publish_all
from lab.servers import InfluxDB1, eventually

from edgeloop.bridge import Bridge, BridgeConfig
from edgeloop.bridge.app import QUEUE_BLOCK_S
from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import EdgeConfig

#: How long the stage behind the queue is stalled: past the 1 s a QoS 0 message may wait for room.
STALL_S = 2 * QUEUE_BLOCK_S


def wait_for(measure, want: int, timeout: float) -> int:  # noqa: ANN001
    """Poll ``measure()`` until it reaches ``want`` (bounded); return its last value, so a shortfall is
    reported as a number (how much was lost), not only as a timeout."""
    try:
        eventually(lambda: measure() >= want, timeout=timeout, interval=0.1)
    except AssertionError:
        pass
    return measure()


def test_bridge_with_a_tiny_queue_drops_no_qos1_result(tmp_path, mosquitto, unique_id):
    db = f"bp_{unique_id}"
    n = 100
    with InfluxDB1(tmp_path / "influxdb") as influxdb:  # its own influxd: the test kills it
        influxdb.create_database(db)
        cfg = BridgeConfig.model_validate({
            "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{unique_id}", "protocol": "3.1.1"},
            "queue_size": 2,
            "influx": {"api": "v1", "url": influxdb.url, "db": db, "batch_size": 5, "flush_interval_ms": 20,
                       "timeout_s": 2},
            **SYNTHETIC_RESULTS,  # made-up results: no edge announces their version
        })
        bridge = Bridge(cfg)
        bridge.start(5)
        try:
            assert bridge._link.subscribed.wait(5)
            influxdb.kill()  # the writer retries its batch; the queue behind it fills
            publish(mosquitto, unique_id, messages(unique_id, range(n)))
            eventually(lambda: bridge.stats()["queue_depth"] == 2 and bridge.stats()["retries"] >= 1, timeout=15,
                       message="queue full while influxd is down")
            time.sleep(STALL_S)  # the stall itself: a dropping bridge drops here
            influxdb.restart()
            written = wait_for(lambda: count(influxdb, db), n, timeout=45)
            stats = bridge.stats()
        finally:
            drained = bridge.stop(timeout_s=10)
    assert written == n, f"{n - written} of {n} results never written; bridge stats {stats}"
    assert stats["dropped_queue_full"] == 0 and stats["points_dropped"] == 0, stats
    assert stats["results"] == n  # each received once: none was dropped and sent again
    assert drained  # everything received was written and acknowledged


def test_edge_with_a_tiny_inbox_drops_no_qos1_reading(tmp_path, mosquitto, unique_id):
    node = f"edge-{unique_id}"
    outbox = tmp_path / "outbox.sqlite"
    cfg = EdgeConfig.model_validate(configs.edge_config(
        node, mosquitto.url, {"mqtt": {"protocol": "3.1.1"}, "input": {"qos": 1, "queue_size": 2},
                              "outbox": {"path": str(outbox)}},
    ))
    readings = fleet_readings(3, 20)
    want = expected_windows(readings)
    watcher = Watcher(mosquitto.port, ["results/#"])
    app = EdgeApp(cfg)
    app.start(connect_timeout_s=10)
    client = connect(mosquitto.port)
    try:
        assert app.link.subscribed.wait(5)
        # Stall the worker: hold the outbox's write lock, so its first append waits (SQLite busy timeout).
        lock = sqlite3.connect(outbox, timeout=0)
        lock.execute("BEGIN IMMEDIATE")
        try:
            publish_all(client, [(t, p) for t, p, _, _ in readings])
            eventually(lambda: app.inbox.qsize() == 2, timeout=10, message="inbox full behind the stalled worker")
            time.sleep(STALL_S)  # the stall itself: a dropping edge takes the rest of the stream here
        finally:
            lock.rollback()
            lock.close()
        windows = lambda: len({(r.device, r.seq) for r in watcher.results(node)} & want)  # noqa: E731
        stored = wait_for(windows, len(want), timeout=30)
        counters = app.counters()
    finally:
        stopped = app.stop()
        watcher.close()
        close(client)
    assert stored == len(want), f"{len(want) - stored} of {len(want)} windows lost; edge counters {counters}"
    assert counters["dropped_queue_full"] == 0
    assert counters["readings_in"] == len(readings)  # each reading processed once: none dropped
    seen = Counter((r.device, r.seq) for r in watcher.results(node))
    assert set(seen) == want and set(seen.values()) == {1}
    assert stopped
