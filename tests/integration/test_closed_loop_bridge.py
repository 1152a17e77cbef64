"""The bridge's closed loop against real servers: samples/+/+ into the Parquet store, bad samples and
commands dead-lettered, a retrain command turned into events in InfluxDB (no TensorFlow needed: the
job is refused before training because the registry has no model)."""

from __future__ import annotations

import base64
import json
import time

from lab.servers import eventually

from edgeloop.bridge import Bridge, BridgeConfig
from edgeloop.mqtt import MqttLink, MqttSettings, wait_for_all
from edgeloop.contract import DeadLetter, FrameSample, ModelRef, NodeStatus, SampleBatch, SampleRow, sample_topic

SHA = "ef" * 32


def batch(device: str, model: str, n: int, start: int = 0) -> SampleBatch:
    rows = [SampleRow(ts=time.time(), seq=start + k, features=[k * 0.5, 1.0, 2.0], score=0.2, anomaly=False,
                      reason="random") for k in range(n)]
    return SampleBatch(device=device, sensor="vibration", model=model, model_version="1.0.0", model_sha256=SHA,
                       node="edge-1", rows=rows)


def frame_sample(model: str) -> bytes:
    import cv2
    import numpy as np

    _, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    return FrameSample(device="cam-1", sensor="cam", model=model, model_version="1", model_sha256=SHA, ts=time.time(),
                       seq=1, label="x", score=0.5, reason="low_confidence", width=8, height=8,
                       jpeg_b64=base64.b64encode(jpeg.tobytes()).decode()).model_dump_json().encode()


def test_samples_are_stored_and_bad_input_is_dead_lettered_and_commands_become_events(
    mosquitto, influx_db, tmp_path, unique_id
):
    server, db = influx_db
    model = f"m{unique_id}"
    cfg = BridgeConfig.model_validate({
        "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{unique_id}"},
        "influx": {"api": "v1", "url": server.url, "db": db, "flush_interval_ms": 100},
        "samples": {"enabled": True, "dir": str(tmp_path / "samples"), "flush_interval_s": 0.2},
        "drift": {"enabled": True, "window_s": 5, "interval_s": 0.5},
        "retrain": {"enabled": True, "deploy": False, "registry": str(tmp_path / "registry"),
                    "wait_for_samples_s": 0, "min_train_samples": 20},
    })
    letters: list[tuple[str, bytes]] = []
    client = MqttLink(MqttSettings(url=mosquitto.url), f"test-{unique_id}",
                      on_message=lambda m: letters.append((m.topic, m.payload)),
                      subscriptions=[("deadletter/#", 1)])
    client.start(5)
    bridge = Bridge(cfg)
    bridge.start(5)
    try:
        loop = bridge.loop
        # The edge's retained status says which version it runs: samples of other versions are refused.
        birth = NodeStatus(node="edge-1", state="online", ts=time.time(), models={model: ModelRef(version="1.0.0", sha256=SHA)})
        assert wait_for_all([client.publish("status/edge-1", birth.model_dump_json().encode(), qos=1, retain=True)], 10)
        eventually(lambda: loop.known.is_known(model, "1.0.0"), timeout=10, message="status not seen by the loop")
        good = [(sample_topic(d, model), batch(d, model, 10, start=i * 10).model_dump_json().encode())
                for i, d in enumerate(["dev-a", "dev-b", "dev-a"])]
        bad = [
            (sample_topic("dev-a", model), b"{not json"),
            (sample_topic("dev-x", model), batch("dev-y", model, 1).model_dump_json().encode()),  # topic mismatch
            (f"samples/dev-a/{model}/extra", b"{}"),  # not delivered: the filter is samples/+/+
            ("commands/bridge/retrain", b'{"model": "a/b"}'),
            (sample_topic("dev-a", model), batch("dev-a", model, 1).model_copy(update={"model_version": "9"})
             .model_dump_json().encode()),  # a version no node runs
        ]
        frame = [(sample_topic("cam-1", model), frame_sample(model))]  # a camera's FrameSample: skipped
        infos = [client.publish(t, p, qos=1) for t, p in good + bad + frame]
        assert wait_for_all(infos, 10)

        eventually(lambda: loop.store.count(model) == 30, timeout=15, message=f"samples on disk {loop.stats()}")
        frame = loop.store.read(model)
        assert sorted(set(frame.device)) == ["dev-a", "dev-b"] and frame.features.shape == (30, 3)
        assert loop.monitor.observed == 30
        eventually(lambda: loop.stats()["frame_samples_skipped"] == 1, timeout=10, message="frame sample")
        reasons = eventually(lambda: {DeadLetter.model_validate_json(p).reason for _, p in letters} or None,
                             timeout=10, message="dead letters")
        eventually(lambda: loop.stats()["rejected"] == {"malformed_json": 1, "topic_mismatch": 1, "invalid_schema": 1,
                                                        "unknown_model_version": 1},
                   timeout=10, message=f"rejects (dead letters: {reasons})")

        done = [(cfg.retrain.command_topic, json.dumps({"model": model}).encode())]
        assert wait_for_all([client.publish(t, p, qos=1) for t, p in done], 10)

        def events() -> list[dict]:
            return server.points(f"SELECT * FROM events WHERE model = '{model}'", db)

        rows = eventually(lambda: [e for e in events() if e["kind"] == "refused"], timeout=60, message="refused event")
        assert "no current version" in rows[0]["message"]
        kinds = sorted(e["kind"] for e in events())
        assert kinds == ["refused", "retrain"]
        requested = next(e for e in events() if e["kind"] == "retrain")
        assert requested["message"] == "retrain requested (mqtt)" and requested["trigger"] == "mqtt"
        assert loop.jobs()[model]["state"] == "training" or loop.jobs()[model]["reason"]
    finally:
        assert bridge.stop(timeout_s=10)
        client.stop()
