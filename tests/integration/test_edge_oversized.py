"""An oversized sensor message is refused at the edge's door, before it takes queue memory.

Real mosquitto, the real EdgeApp. The message is counted, dead-lettered and acknowledged (so a
persistent session does not deliver it again after a restart), and never reaches the engine.
"""

from __future__ import annotations

import json

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from lab.servers import eventually

from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import load_edge_config

LIMIT = 1024


def test_oversized_readings_are_refused_at_the_door_and_acknowledged(mosquitto, tmp_path, unique_id):
    cfg = load_edge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": f"edge-{unique_id}", "input": {"qos": 1, "max_payload_bytes": LIMIT},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "sampling": {"enabled": False},
    })
    letters: list[dict] = []
    watcher = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    watcher.on_message = lambda _c, _u, m: letters.append(json.loads(m.payload))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.subscribe("deadletter/edge", qos=1)
    watcher.loop_start()
    device = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    device.connect("127.0.0.1", mosquitto.port)
    device.loop_start()
    topic = f"sensors/{unique_id}/vibration"
    # A retained junk reading: the edge gets it on every SUBSCRIBE, so its dead-letter says "subscribed".
    device.publish(f"sensors/{unique_id}-probe/vibration", b"{probe", qos=1, retain=True).wait_for_publish(10)
    try:
        app = EdgeApp(cfg)
        app.start()
        eventually(lambda: len(letters) == 1)
        device.publish(topic, b"[" + b" " * (LIMIT + 10) + b"]", qos=1).wait_for_publish(10)
        device.publish(topic, b"{not json", qos=1).wait_for_publish(10)  # small: goes through the queue
        eventually(lambda: app.rejects.by_reason.get("malformed_json") == 2)
        assert app.rejects.by_reason == {"oversized": 1, "malformed_json": 2}
        assert app.engine.counters["readings_in"] == 2  # the oversized one never reached the engine
        assert app.stop()

        # Same node id, persistent session: the oversized message is not delivered again (it was acked).
        again = EdgeApp(cfg)
        again.start()
        eventually(lambda: len(letters) == 4)
        device.publish(topic, b"{not json either", qos=1).wait_for_publish(10)
        eventually(lambda: again.rejects.by_reason.get("malformed_json") == 2)
        assert again.rejects.by_reason == {"malformed_json": 2}
        assert again.stop()
        eventually(lambda: len(letters) == 5)
        reasons = [letter["reason"] for letter in letters]
        assert reasons == ["malformed_json", "oversized", "malformed_json", "malformed_json", "malformed_json"]
        assert letters[1]["payload_bytes"] == LIMIT + 12 and letters[1]["truncated"] is True
    finally:
        for client in (watcher, device):
            client.loop_stop()
            client.disconnect()
