"""Test-side helpers shared by the end-to-end tests: CLI processes and a broker-side collector."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lab.servers import eventually
from edgeloop.contract import NodeStatus

REPO = Path(__file__).resolve().parents[1]


class Proc:
    """An ``edgeloop`` CLI process whose output goes to a file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, *, program: list[str] | None = None,
                 cwd: Path = REPO, env: dict[str, str] | None = None) -> None:
        """``program`` (default: this interpreter's ``-m edgeloop.cli``) runs e.g. an installed console script."""
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 -- closed in terminate()
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*(program or [sys.executable, "-m", "edgeloop.cli"]), *args], cwd=cwd, stdout=self._log,
            stderr=subprocess.STDOUT, env=env,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 30.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.alive():
                self.proc.kill()
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()


class Collector:
    """Subscribes to topics on the test broker and keeps every message."""

    def __init__(self, port: int, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for topic in topics:
            self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:  # noqa: ANN001
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def on(self, prefix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.startswith(prefix)]

    def online(self, node: str, proc: Proc, timeout: float = 60.0) -> None:
        """Wait for ``node``'s retained online status (its birth follows its subscriptions)."""

        def check() -> bool:
            assert proc.alive(), proc.log()
            return any(NodeStatus.model_validate_json(p).state == "online" for p in self.on(f"status/{node}"))

        eventually(check, timeout=timeout, message=f"{node} never published an online status")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publisher(port: int) -> paho.Client:
    """A plain MQTT v5 client on the test broker, network loop running."""
    client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def publish_all(client: paho.Client, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait until the broker acknowledged every message."""
    infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(10)
        assert info.is_published()
