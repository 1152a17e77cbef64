"""A device that invents device ids cannot grow the edge's memory (issue 11, finding 7).

Real mosquitto, the real EdgeApp. A hostile client publishes readings under 1,500 made-up
device ids; the pipeline keeps window state for at most ``max_streams`` of them, refuses
the rest (counted, dead-lettered ``too_many_streams``), forgets idle streams after
``stream_idle_s`` and then serves a legitimate device as before.
"""

from __future__ import annotations

import json

import numpy as np

from lab.mqtt import Watcher, close, connect, publish_all
from lab.servers import eventually

from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import load_edge_config

MAX_STREAMS = 100
FLOOD = 1500


def reading(seq: int) -> bytes:
    values = np.random.default_rng(seq).normal(0.0, 1.0, (64, 3)).round(4).tolist()
    return json.dumps({"v": 1, "ts": 1_795_740_561.0 + seq, "seq": seq, "values": values, "rate_hz": 1000.0}).encode()


def test_made_up_device_ids_are_capped_expire_and_leave_room_for_real_devices(mosquitto, tmp_path, unique_id):
    node = f"edge-{unique_id}"
    cfg = load_edge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": node, "input": {"qos": 1},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "sampling": {"enabled": False},
        "pipelines": [{"sensor": "vibration", "max_streams": MAX_STREAMS, "stream_idle_s": 3.0}],
    })
    watcher = Watcher(mosquitto.port, ["results/#", "deadletter/edge"])
    hostile = connect(mosquitto.port)
    app = EdgeApp(cfg)
    app.start()
    try:
        payload = reading(0)
        publish_all(hostile, ((f"sensors/fake-{unique_id}-{i}/vibration", payload) for i in range(FLOOD)), qos=1)
        eventually(lambda: app.engine.counters["readings_in"] == FLOOD, timeout=60)
        assert app.counters()["streams_live"] <= MAX_STREAMS
        refused = app.rejects.by_reason["too_many_streams"]
        assert refused >= FLOOD - 2 * MAX_STREAMS  # at most one expiry sweep can have freed room mid-flood
        eventually(lambda: len(watcher.on("deadletter/edge")) >= 1)
        assert json.loads(watcher.on("deadletter/edge")[0])["reason"] == "too_many_streams"

        # Silent for stream_idle_s: every made-up stream is forgotten.
        eventually(lambda: app.counters()["streams_live"] == 0, timeout=30)
        assert app.engine.counters["streams_expired"] >= MAX_STREAMS

        # A real device is served as before.
        device = f"pump-{unique_id}"
        publish_all(hostile, [(f"sensors/{device}/vibration", reading(s)) for s in range(3)], qos=1)
        eventually(lambda: len([r for r in watcher.results(node) if r.device == device]) == 2, timeout=30)
    finally:
        assert app.stop()
        watcher.close()
        close(hostile)
