"""``edgeloop devices camera`` against a real mosquitto: a generated video file, MQTT 3.1.1 headers,
looping, and a network camera (an MJPEG HTTP stream served by the test) that goes away and comes back."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from lab.mqtt import Watcher
from lab.procs import run_cli
from lab.servers import eventually, free_port

from edgeloop.devices.scenes import SceneSimulator, encode_jpeg, write_video
from edgeloop.contract import FRAME_HEADER_MAGIC, decode_frame

REPO = Path(__file__).resolve().parents[2]


def decoded_frames(watcher: Watcher) -> list:
    """(topic, FrameMeta, jpeg) of every frame message, decoded with its v5 user properties."""
    return [(m.topic, *decode_frame(m.payload, list(m.user_properties) or None, 1 << 24))
            for m in watcher.messages("frames/")]


@pytest.fixture
def collector(mosquitto):
    with Watcher(mosquitto.port, ["frames/#"]) as watcher:
        yield watcher


def camera(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cli("devices", "camera", *args, timeout=timeout)


def test_a_video_file_is_published_frame_by_frame_with_metadata(mosquitto, collector, tmp_path):
    video = tmp_path / "belt.avi"
    labels = write_video(video, 15, fps=10, width=320, height=240, seed=11)
    started = time.time()
    run = camera("--source", str(video), "--broker", mosquitto.url, "--device", "line-1", "--camera", "belt",
                 "--fps", "50", "--width", "160", "--height", "120", "--jpeg-quality", "70", "--qos", "1")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["published"] == 15 and report["loops"] == 0 and report["dropped_offline"] == 0
    frames = eventually(lambda: (f := decoded_frames(collector)) and len(f) >= 15 and f, message="15 frames")
    assert len(frames) == 15
    assert {t for t, _, _ in frames} == {"frames/line-1/belt"}
    metas = [m for _, m, _ in frames]
    assert [m.seq for m in metas] == list(range(15))
    assert [m.label for m in metas] == labels  # ground truth from the sidecar, by position in the file
    assert all(started <= m.ts <= time.time() for m in metas)
    assert all(b.ts > a.ts for a, b in itertools.pairwise(metas))
    image = cv2.imdecode(np.frombuffer(frames[0][2], np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (120, 160, 3)
    assert all(m.user_properties for m in collector.messages())  # v5: metadata in user properties
    assert not any(m.payload.startswith(FRAME_HEADER_MAGIC) for m in collector.messages())


def test_mqtt_311_puts_metadata_in_a_header_and_loop_wraps_the_file(mosquitto, collector, tmp_path):
    video = tmp_path / "short.avi"
    labels = write_video(video, 4, fps=10, width=160, height=120, seed=3)
    run = camera("--source", str(video), "--broker", mosquitto.url, "--mqtt-protocol", "3.1.1", "--fps", "40",
                 "--loop", "--count", "10", "--qos", "1")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["loops"] == 2
    frames = eventually(lambda: (f := decoded_frames(collector)) and len(f) >= 10 and f, message="10 frames")
    assert all(m.payload.startswith(FRAME_HEADER_MAGIC) and not m.user_properties for m in collector.messages())
    assert [m.seq for _, m, _ in frames] == list(range(10))
    assert [m.label for _, m, _ in frames] == [labels[i % 4] for i in range(10)]


def test_bad_sources_are_command_line_errors(mosquitto, tmp_path):
    missing = camera("--source", str(tmp_path / "nope.avi"), "--broker", mosquitto.url, "--count", "1")
    assert missing.returncode == 2 and "nope.avi" in missing.stderr
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video" * 100)
    bad = camera("--source", str(junk), "--broker", mosquitto.url, "--count", "1")
    assert bad.returncode == 2 and "junk.avi" in bad.stderr
    level = camera("--device", "a/b", "--broker", mosquitto.url, "--count", "1")
    assert level.returncode == 2 and "device" in level.stderr


class MjpegCamera:
    """A network camera: an MJPEG stream over HTTP on a fixed port that can be switched off and on."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.jpeg = encode_jpeg(SceneSimulator(160, 120, seed=2).render(0)[0])
        self.server: ThreadingHTTPServer | None = None
        self.live = threading.Event()
        self.requests = 0

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while outer.live.is_set():
                        part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(outer.jpeg)
                        self.wfile.write(part + outer.jpeg + b"\r\n")
                        time.sleep(0.02)
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.live.set()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.live.clear()  # ends the stream: the camera sees the connection close
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def test_a_network_camera_that_goes_away_is_reopened(mosquitto, collector, tmp_path):
    cam = MjpegCamera(free_port())
    cam.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "devices", "camera", "--source", f"http://127.0.0.1:{cam.port}/stream.mjpg",
         "--broker", mosquitto.url, "--fps", "20", "--duration", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        eventually(lambda: len(collector.messages()) >= 5, timeout=30, message="frames from the stream")
        cam.stop()
        time.sleep(1.5)  # the camera is away: reopen attempts fail (connection refused)
        before = len(collector.messages())
        cam.start()
        eventually(lambda: len(collector.messages()) >= before + 5, timeout=30, message="frames after the camera came back")
    finally:
        cam.stop()
        proc.send_signal(2)  # SIGINT: stop like a user would
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["read_failures"] >= 1 and report["reopens"] >= 1, report
    assert cam.requests >= 2
    seqs = [m.seq for _, m, _ in decoded_frames(collector)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one seq counter across the outage
