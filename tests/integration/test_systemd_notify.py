"""sd_notify from a real ``edgeloop edge run`` process, as systemd would see it.

The test plays systemd: it binds the unix datagram socket named by
``NOTIFY_SOCKET``, sets ``WATCHDOG_USEC`` and starts the edge through the CLI
with ``--log-format json``. It must hear READY=1 once the edge runs,
WATCHDOG=1 pings from the worker loop, and STOPPING=1 on SIGTERM; every log
line must be a JSON object, and the broker password must appear in none.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from edgeloop.systemd import SystemdNotifier
from lab.servers import eventually

REPO = Path(__file__).resolve().parents[2]


class FakeSystemd:
    """A bound AF_UNIX datagram socket collecting notifications."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._recv, daemon=True)
        self._thread.start()

    def _recv(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def states(self) -> list[str]:
        return [line for msg in list(self.messages) for line in msg.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_notifier_is_a_no_op_outside_systemd():
    notifier = SystemdNotifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    notifier.ping()  # must not raise


def test_notifier_pings_at_half_the_watchdog_period_on_an_abstract_socket(unique_id):
    fake = FakeSystemd(f"@edgeloop-test-{unique_id}")
    try:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": fake.path, "WATCHDOG_USEC": "600000000"})
        assert notifier.ping_every_s == 300.0
        notifier.ready("up")
        for _ in range(100):
            notifier.ping()  # rate-limited: only the first one goes out within 300 s
        notifier.stopping()
        eventually(lambda: "STOPPING=1" in fake.states())
        assert fake.states() == ["READY=1", "STATUS=up", "WATCHDOG=1", "STOPPING=1"]
    finally:
        fake.close()


def test_watchdog_for_another_pid_is_ignored():
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert notifier.ping_every_s is None


def test_edge_process_notifies_ready_watchdog_stopping_and_logs_json(mosquitto, tmp_path):
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    secret = "s3cret-pass-word"
    env = {**os.environ, "NOTIFY_SOCKET": fake.path, "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    log_path = tmp_path / "edge.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "--log-format", "json", "edge", "run",
             "--broker", f"mqtt://edge:{secret}@127.0.0.1:{mosquitto.port}", "--node-id", "edge-sd"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        eventually(lambda: "READY=1" in fake.states(), timeout=60, message="READY=1")
        # The worker pings every 0.2 s (half of 0.4 s) even with no input at all.
        eventually(lambda: fake.states().count("WATCHDOG=1") >= 3, timeout=10, message="watchdog pings")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    try:
        assert rc == 0
        eventually(lambda: "STOPPING=1" in fake.states(), timeout=5)
        states = fake.states()
        assert states.index("READY=1") < states.index("STOPPING=1")
        assert "STATUS=node edge-sd" in states
    finally:
        fake.close()

    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    # LiteRT's C++ code prints one line of its own straight to fd 2 (no env var silences it);
    # docs/operations.md says so. Every line that comes from Python logging is one JSON object.
    native = [line for line in lines if not line.startswith("{")]
    assert set(native) <= {"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."}, native
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, "the edge logged nothing"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any("starting" in r["message"] for r in records)
    assert secret not in log_path.read_text()
