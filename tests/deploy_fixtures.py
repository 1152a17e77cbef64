"""Helpers for the deployment tests: keys, a seeded registry, model variants, edges, a reading stream.

Test models: the bundled model's bytes with a few trailing padding bytes make
a byte-different artifact (new sha256) that scores exactly like the bundled
one (LiteRT ignores bytes after the flatbuffer); a "broken" variant is the
same with threshold 0, so every window is an anomaly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop.bridge.registry import Registry
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.app import EdgeApp
from edgeloop.mqtt import MqttSettings
from edgeloop.signing import SigningKey, generate_keypair
from edgeloop.edge.config import BUNDLED_MODEL, DeploySettings, EdgeConfig, InputSettings
from edgeloop.contract import InferenceResult, NodeStatus
from edgeloop.modelfile import ModelMetadata, load_model_files, sha256_bytes

MODEL = "vibration_ae"
BASE_VERSION = "1.0.0"


def bundled() -> tuple[bytes, ModelMetadata]:
    return load_model_files(BUNDLED_MODEL)


def variant(version: str, threshold: float | None = None, pad: int = 16) -> tuple[bytes, ModelMetadata]:
    """The bundled model as another version: different bytes (padding), same behaviour."""
    content, meta = bundled()
    content = content + b"\0" * pad
    update = {"version": version, "sha256": sha256_bytes(content)}
    if threshold is not None:
        update["threshold"] = threshold
    return content, meta.model_copy(update=update)


@dataclass
class Keys:
    signing: SigningKey
    public_file: Path
    other: SigningKey


def make_keys(directory: Path) -> Keys:
    private, public, _ = generate_keypair(directory / "keys")
    return Keys(SigningKey.load(private), public, SigningKey.generate())


def seeded_registry(root: Path) -> Registry:
    """A registry whose current version is the bundled model the edges start with."""
    registry = Registry(root, actor="test")
    content, meta = bundled()
    registry.add(MODEL, content, meta)
    registry.promote(MODEL, BASE_VERSION)
    return registry


def edge_config(broker_url: str, node: str, keys: Keys, tmp: Path, **deploy) -> EdgeConfig:
    settings = {"enabled": True, "public_key_file": keys.public_file, "canary_windows": 10,
                "chunk_timeout_s": 2.0, "state_dir": tmp / f"state-{node}", **deploy}
    return EdgeConfig(
        node_id=node,
        mqtt=MqttSettings(url=broker_url),
        input=InputSettings(qos=1),
        deploy=DeploySettings(**settings),
        status_interval_s=30,
    )


def start_edge(cfg: EdgeConfig) -> EdgeApp:
    app = EdgeApp(cfg)
    app.start(connect_timeout_s=10)
    return app


class Watcher:
    """Keeps every result and the latest status per node."""

    def __init__(self, port: int) -> None:
        self.results: list[InferenceResult] = []
        self.status: dict[str, NodeStatus] = {}
        self.deadletters: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("results/#", 1), ("status/+", 1), ("deadletter/#", 1)])
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            if msg.topic.startswith("results/"):
                self.results.append(InferenceResult.model_validate_json(msg.payload))
            elif msg.topic.startswith("status/") and msg.payload:
                status = NodeStatus.model_validate_json(msg.payload)
                self.status[status.node] = status
            elif msg.topic.startswith("deadletter/"):
                self.deadletters.append(msg.payload)

    def results_of(self, node: str) -> list[InferenceResult]:
        with self._lock:
            return [r for r in self.results if r.node == node]

    def deploy_state(self, node: str):
        with self._lock:
            status = self.status.get(node)
        return status.last_deploy.get(MODEL) if status else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Stream:
    """Publishes simulated vibration readings (QoS 1) for ``devices`` devices, in a thread or all at once."""

    port: int
    devices: int = 2
    seed: int = 5
    readings: list = field(default_factory=list)
    published: int = 0

    def __post_init__(self) -> None:
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        sim = FleetSimulator(self.devices, seed=self.seed, anomaly_rate=0.0, sensors=("vibration",))
        self._iter = sim.readings(count=10**9)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def publish(self, n: int) -> None:
        """Publish the next ``n`` readings and wait for the broker's acks."""
        infos = []
        for _ in range(n):
            topic, reading = next(self._iter)
            self.readings.append((topic, reading))
            infos.append(self.client.publish(topic, reading.model_dump_json(exclude_none=True).encode(), qos=1))
            self.published += 1
        for info in infos:
            info.wait_for_publish(10)

    def run(self, per_s: float = 200.0, limit: int = 5000) -> None:
        """Keep publishing in the background (bounded by ``limit`` readings) until ``stop()``."""

        def loop() -> None:
            while not self._stop.is_set() and self.published < limit:
                self.publish(1)
                self._stop.wait(1.0 / per_s)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        self.stop()
        self.client.loop_stop()
        self.client.disconnect()


def expected_windows(readings: list) -> int:
    """Windows of 128 samples, hop 64, from 64-sample readings: one per reading after each device's first."""
    per_device: dict[str, int] = {}
    for topic, _ in readings:
        per_device[topic] = per_device.get(topic, 0) + 1
    return sum(n - 1 for n in per_device.values())


def wait_quiet(watcher: Watcher, settle_s: float = 0.5, timeout_s: float = 30.0) -> None:
    """Until no result has arrived for ``settle_s`` (bounded)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        n = len(watcher.results)
        if n == last:
            return
        last = n
        time.sleep(settle_s)


def tiny_variant(version: str = "9.9.9") -> tuple[bytes, ModelMetadata]:
    """A real model under the deployed model's name whose input (4 int8 values) the pipeline cannot feed."""
    from unit.test_inference_int8 import TINY_INT8

    meta = ModelMetadata.model_validate({
        "name": MODEL,
        "version": version,
        "sha256": sha256_bytes(TINY_INT8),
        "task": "regression",
        "input": {"shape": [None, 4], "dtype": "int8"},
        "outputs": [{"name": "out", "shape": [None, 2]}],
        "threshold": 0.0,
        "labels": ["value"],
        "normalization": {"mean": [0.0] * 4, "std": [1.0] * 4},
    })
    return TINY_INT8, meta
