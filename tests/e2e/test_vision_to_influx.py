"""Frames end to end with real processes: a generated video -> ``edgeloop devices camera`` -> mosquitto
-> ``edgeloop edge run`` (vision config, bundled int8 classifier) -> mosquitto -> ``edgeloop bridge run``
-> influxd, with the right label stored for known frames.

"Known frames": the video's ground truth, and what the bundled model says about each frame when run
offline on the same bytes (the video decoded by OpenCV and re-encoded as the camera publisher does).
Every stored point must carry exactly the offline label, and on the frames the model gets right
offline with confidence, that label is the ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import video_frames
from lab.mqtt import Watcher
from lab.procs import CliProcess, logs, run_cli, terminate_all
from lab.servers import eventually

from edgeloop.devices.scenes import write_video
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.vision.config import BUNDLED_VISION_MODEL
from edgeloop.edge.vision.pipeline import build_image_pipeline

FRAMES = 24
QUALITY = 85  # the camera publisher's default


def offline_predictions(video: Path) -> list[tuple[str, float]]:
    """(label, top-1 probability) per frame of the video, from the bytes the camera will publish."""
    model = TfliteModel(BUNDLED_VISION_MODEL)
    pipeline = build_image_pipeline(None, model)
    rows = [pipeline.process(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes())
            for frame in video_frames(video)]
    probs = model.run(np.stack(rows))
    return [(model.labels[int(p.argmax())], float(p.max())) for p in probs]


def test_camera_frames_are_classified_and_stored_with_the_right_labels(mosquitto, influx_db, tmp_path, unique_id):
    influx, db = influx_db
    node = f"vision-{unique_id}"
    video = tmp_path / "belt.avi"
    truth = write_video(video, FRAMES, fps=10, seed=17)
    offline = offline_predictions(video)
    known = [i for i, (label, p) in enumerate(offline) if label == truth[i] and p >= 0.9]
    assert len(known) >= FRAMES * 3 // 4, (truth, offline)  # the bundled model knows most of these frames

    (tmp_path / "edge.yaml").write_text(f"node_id: {node}\nvision:\n  cameras:\n    - camera: belt\n")
    query = "SELECT \"label\", \"score\", \"seq\", \"anomaly\" FROM \"inference\" WHERE \"sensor\" = 'belt'"
    watcher = Watcher(mosquitto.port, ["status/#", "results/#", "deadletter/#"])
    bridge = CliProcess(["bridge", "run", "--broker", mosquitto.url, "--influx-api", "v1", "--influx-url", influx.url,
                         "--influx-db", db], tmp_path / "bridge.log").start()
    edge = CliProcess(["edge", "run", "-c", str(tmp_path / "edge.yaml"), "--broker", mosquitto.url],
                      tmp_path / "edge.log").start()
    try:
        watcher.wait_online(node, edge)
        watcher.wait_online("edgeloop-bridge", bridge)
        camera = run_cli("devices", "camera", "--source", str(video), "--broker", mosquitto.url,
                         "--device", f"line-{unique_id}", "--camera", "belt", "--fps", "8", "--qos", "1", timeout=60)
        assert camera.returncode == 0, camera.stderr
        assert json.loads(camera.stdout)["published"] == FRAMES

        # Newest wins: the last frame is never overwritten, so its result means every frame was classified or shed.
        eventually(lambda: FRAMES - 1 in {r.seq for r in watcher.results(node)}, timeout=60,
                   message="the last frame's result", alive=[edge, bridge])
        eventually(lambda: len(influx.points(query, db)) >= len(watcher.results(node)), timeout=60,
                   message="points in influxd", alive=[edge, bridge])
    finally:
        codes = terminate_all(edge, bridge)
        watcher.sync("deadletter/sync")
        watcher.close()
    assert codes == [0, 0], logs(edge, bridge)
    results = watcher.results(node)
    rows = influx.points(query + ' GROUP BY "device", "model", "node"', db)
    assert watcher.on("deadletter/") == []
    # Every frame is accounted for: classified (one result, stored once) or shed by newest-wins because the
    # edge was busy when the next frame came (on a loaded machine; ~1 ms of inference here when idle).
    # Nothing else may lose a frame; the last one is always classified.
    stats = edge.final_stats()
    assert stats["frames_received"] == FRAMES and stats["frames_classified"] + stats["frames_dropped_stale"] == FRAMES
    assert stats["frames_dropped_streams"] == stats["frames_dropped_oversized"] == 0, stats
    assert sorted(r.seq for r in results) == sorted(int(r["seq"]) for r in rows)
    assert len(results) == len(set(r.seq for r in results)) == stats["frames_classified"] and FRAMES - 1 in {
        r.seq for r in results}
    assert {(r["device"], r["model"], r["node"]) for r in rows} == {(f"line-{unique_id}", "parts_cnn_int8", node)}
    for row in rows:
        seq = int(row["seq"])
        assert row["label"] == offline[seq][0], (seq, row)
        assert row["score"] == pytest.approx(offline[seq][1], abs=1e-6)
        assert row["anomaly"] == (row["label"] == "defect")
        if seq in known:
            assert row["label"] == truth[seq], (seq, row)
    assert sum(int(r["seq"]) in known for r in rows) >= len(rows) // 2
