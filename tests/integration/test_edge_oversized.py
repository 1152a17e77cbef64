"""An oversized sensor message is refused at the edge's door, before it takes queue memory.

Real mosquitto, the real EdgeApp. The message is counted, dead-lettered and acknowledged (so a
persistent session does not deliver it again after a restart), and never reaches the engine.
"""

from __future__ import annotations

import json

from lab.mqtt import Watcher, close, connect
from lab.servers import eventually

from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import load_edge_config

LIMIT = 1024


def test_oversized_readings_are_refused_at_the_door_and_acknowledged(mosquitto, tmp_path, unique_id):
    cfg = load_edge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": f"edge-{unique_id}", "input": {"qos": 1, "max_payload_bytes": LIMIT},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "sampling": {"enabled": False},
    })
    watcher = Watcher(mosquitto.port, ["deadletter/edge"])
    device = connect(mosquitto.port)

    def letters() -> list[dict]:
        return [json.loads(p) for p in watcher.on("deadletter/edge")]

    topic = f"sensors/{unique_id}/vibration"
    # A retained junk reading: the edge gets it on every SUBSCRIBE, so its dead-letter says "subscribed".
    device.publish(f"sensors/{unique_id}-probe/vibration", b"{probe", qos=1, retain=True).wait_for_publish(10)
    try:
        app = EdgeApp(cfg)
        app.start()
        eventually(lambda: len(letters()) == 1)
        device.publish(topic, b"[" + b" " * (LIMIT + 10) + b"]", qos=1).wait_for_publish(10)
        device.publish(topic, b"{not json", qos=1).wait_for_publish(10)  # small: goes through the queue
        eventually(lambda: app.rejects.by_reason.get("malformed_json") == 2)
        assert app.rejects.by_reason == {"oversized": 1, "malformed_json": 2}
        assert app.engine.counters["readings_in"] == 2  # the oversized one never reached the engine
        assert app.stop()

        # Same node id, persistent session: the oversized message is not delivered again (it was acked).
        again = EdgeApp(cfg)
        again.start()
        eventually(lambda: len(letters()) == 4)
        device.publish(topic, b"{not json either", qos=1).wait_for_publish(10)
        eventually(lambda: again.rejects.by_reason.get("malformed_json") == 2)
        assert again.rejects.by_reason == {"malformed_json": 2}
        assert again.stop()
        eventually(lambda: len(letters()) == 5)
        seen = letters()
        assert [letter["reason"] for letter in seen] == ["malformed_json", "oversized", "malformed_json",
                                                         "malformed_json", "malformed_json"]
        assert seen[1]["payload_bytes"] == LIMIT + 12 and seen[1]["truncated"] is True
    finally:
        watcher.close()
        close(device)
