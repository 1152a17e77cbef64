"""The real EdgeApp with a ``vision:`` section against a real mosquitto.

Bad frames (zero bytes, corrupt JPEG, truncated, wrong size, oversized, no
metadata) are dead-lettered and the good frames around them classified; a
burst far above the model's rate is shed by newest-wins slots (every frame is
either classified or counted as dropped, and the newest frame always gets a
result); status reports the frame counters and the camera model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from lab.mqtt import Watcher, close, connect, properties
from lab.servers import eventually

from edgeloop.devices.scenes import SceneSimulator, encode_jpeg
from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import load_edge_config
from edgeloop.contract import FrameMeta, InferenceResult, NodeStatus, encode_frame, frame_topic

MAX_FRAME = 64 * 1024


def publish_frame(client, device: str, jpeg: bytes, meta: FrameMeta | None, header: bool = False,
                  camera: str = "belt") -> None:
    props = None
    payload = jpeg
    if meta is not None and header:
        payload = encode_frame(meta, jpeg, header=True)
    elif meta is not None:
        props = properties(meta.user_properties())
    client.publish(frame_topic(device, camera), payload, qos=1, properties=props).wait_for_publish(10)


@pytest.fixture
def edge(mosquitto, tmp_path, unique_id):
    cfg = load_edge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": f"vision-{unique_id}", "sampling": {"enabled": False},
        "outbox": {"path": str(tmp_path / "outbox.sqlite")}, "status_interval_s": 1,
        "vision": {"max_frame_bytes": MAX_FRAME, "qos": 1, "cameras": [{
            "camera": "belt",
            "stages": [{"type": "decode", "expect_size": [320, 240]}, {"type": "color", "to": "rgb"},
                       {"type": "resize"}, {"type": "normalize", "from_model": True}],
        }]},
    })
    watcher = Watcher(mosquitto.port, ["results/#", "deadletter/#", f"status/{cfg.node_id}"])
    device = connect(mosquitto.port)
    # A retained junk frame: its dead-letter proves the edge has subscribed.
    device.publish(frame_topic(f"probe-{unique_id}", "belt"), b"probe", qos=1, retain=True).wait_for_publish(10)
    app = EdgeApp(cfg)
    app.start()
    try:
        eventually(lambda: watcher.on("deadletter/"), message="the edge's dead-letter for the retained probe")
        yield app, device, watcher
    finally:
        stopped = app.stop()
        close(device)
        watcher.close()
    assert stopped


def test_bad_frames_are_dead_lettered_and_good_frames_classified(edge):
    app, device, watcher = edge
    sim = SceneSimulator(seed=31)
    good = [(encode_jpeg(sim.render(i)[0]), sim.label(i)) for i in range(4)]
    meta = lambda seq: FrameMeta(ts=1.76e9 + seq, seq=seq)
    junk = [
        (b"", meta(100), "empty_frame"),
        (b"\xff\xd8" + bytes(range(256)) * 8, meta(101), "corrupt_image"),
        (good[0][0][:3000], meta(102), "truncated_image"),
        (encode_jpeg(np.zeros((120, 160, 3), np.uint8)), meta(103), "wrong_size"),
        (good[0][0] + b"\x00" * MAX_FRAME, meta(104), "oversized"),
        (good[0][0], None, "missing_meta"),
    ]
    for i, (jpeg, truth) in enumerate(good):
        publish_frame(device, f"line-{i}", jpeg, FrameMeta(ts=1.76e9 + i, seq=i, label=truth), header=i % 2 == 1)
        for k, (data, m, _) in enumerate(junk[i::4]):
            publish_frame(device, f"junk-{i}-{k}", data, m)  # one stream each: newest-wins would shed them
    letters = eventually(lambda: (d := watcher.on("deadletter/edge")) and len(d) >= 1 + len(junk) and d,
                         message="a dead-letter for every bad frame")
    results = eventually(lambda: (r := watcher.on("results/")) and len(r) >= 4 and r, message="4 results")
    reasons = sorted(json.loads(d)["reason"] for d in letters[1:])
    assert reasons == sorted(r for *_, r in junk)
    by_device = {r.device: r for r in map(InferenceResult.model_validate_json, results)}
    assert set(by_device) == {f"line-{i}" for i in range(4)}
    assert all(r.sensor == "belt" and r.model == "parts_cnn_int8" and r.topk for r in by_device.values())
    assert sum(by_device[f"line-{i}"].label == truth for i, (_, truth) in enumerate(good)) >= 3
    counters = app.counters()
    assert counters["frames_classified"] == 4 and counters["frames_dropped_oversized"] == 1
    assert app.rejects.by_reason["oversized"] == 1 and app._worker.is_alive() and app.vision._thread.is_alive()


def test_a_burst_is_shed_newest_first_and_status_reports_it(edge):
    app, device, watcher = edge
    jpeg = encode_jpeg(SceneSimulator(seed=4).render(0)[0])
    burst = 300
    before = app.counters()  # the retained probe frame was received (and rejected) already
    infos = []
    for seq in range(burst):  # as fast as paho can send (QoS 1, so the broker loses none of them)
        p = properties(FrameMeta(ts=1.76e9 + seq / 1000, seq=seq).user_properties())
        infos.append(device.publish(frame_topic("fast", "belt"), jpeg, qos=1, properties=p))
    for info in infos:
        info.wait_for_publish(10)

    def settled():
        c = app.counters()
        return c["frames_received"] - before["frames_received"] == burst and c["frames_waiting"] == 0 and c
    counters = eventually(settled, timeout=30, message="every frame of the burst accounted for")
    assert counters["frames_classified"] + counters["frames_dropped_stale"] == burst
    results = eventually(
        lambda: (r := [InferenceResult.model_validate_json(p) for p in watcher.on("results/fast/")])
        and len(r) == counters["frames_classified"] and r,
        message="a result per classified frame",
    )
    seqs = [r.seq for r in results]
    assert seqs == sorted(seqs) and seqs[-1] == burst - 1  # in order, and the newest frame always wins
    status = eventually(
        lambda: next((s for s in map(NodeStatus.model_validate_json, watcher.on("status/"))
                      if s.counters.get("frames_received") == counters["frames_received"]), None),
        message="a status with the frame counters",
    )
    assert "parts_cnn_int8" in status.models and "vibration_ae" in status.models
    assert status.counters["frames_dropped_stale"] == counters["frames_dropped_stale"]
