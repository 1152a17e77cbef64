"""Helpers for the deployment tests: keys, a seeded registry, model variants, edges, a reading stream.

Test models: the bundled model's bytes with a few trailing padding bytes make
a byte-different artifact (new sha256) that scores exactly like the bundled
one (LiteRT ignores bytes after the flatbuffer); a "broken" variant is the
same with threshold 0, so every window is an anomaly.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeloop.bridge.registry import Registry
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.app import EdgeApp
from edgeloop.signing import SigningKey, generate_keypair
from edgeloop.edge.config import BUNDLED_MODEL, EdgeConfig
from edgeloop.modelfile import ModelMetadata, load_model_files, sha256_bytes
from lab import configs
from lab.mqtt import Publisher, Watcher, close, connect, paced, publish_all
from lab.procs import CliProcess

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
    """An in-process edge with signed deployment on (short canary, fast chunk timeout) and QoS 1 input."""
    settings = {"canary_windows": 10, "chunk_timeout_s": 2.0, **deploy}
    cfg = configs.edge_config(node, broker_url, {"input": {"qos": 1}, "status_interval_s": 30},
                              configs.signed_deploy(keys.public_file, tmp / f"state-{node}", **settings))
    return EdgeConfig.model_validate(cfg)


def start_edge(cfg: EdgeConfig) -> EdgeApp:
    app = EdgeApp(cfg)
    app.start(connect_timeout_s=10)
    return app


def watch_fleet(port: int) -> Watcher:
    """Results, statuses and dead letters of every node."""
    return Watcher(port, ["results/#", "status/+", "deadletter/#"])


def deploy_state(watch: Watcher, node: str):  # noqa: ANN201 -- DeployState | None
    """What ``node`` last reported about deployments of MODEL."""
    status = watch.status(node)
    return status.last_deploy.get(MODEL) if status else None


class Stream:
    """Simulated vibration readings (QoS 1) of ``devices`` devices: ``publish(n)`` at once, or ``run()`` paced."""

    def __init__(self, port: int, devices: int = 2, seed: int = 5) -> None:
        self.port = port
        sim = FleetSimulator(devices, seed=seed, anomaly_rate=0.0, sensors=("vibration",))
        self._iter = sim.readings(count=10**9)
        self._sent: list = []  # published by publish()
        self._drawn: list = []  # read by the background publisher (its first `published` went out)
        self.client = connect(port)
        self.background: Publisher | None = None

    @property
    def readings(self) -> list:
        """(topic, reading) of every reading published, in order."""
        return self._sent + self._drawn[: self.background.published if self.background else 0]

    @property
    def published(self) -> int:
        return len(self.readings)

    def _next(self) -> tuple[str, bytes, object]:
        topic, reading = next(self._iter)
        return topic, reading.model_dump_json(exclude_none=True).encode(), reading

    def publish(self, n: int) -> None:
        """Publish the next ``n`` readings and wait for the broker's acks."""
        batch = [self._next() for _ in range(n)]
        publish_all(self.client, [(topic, payload) for topic, payload, _ in batch])
        self._sent += [(topic, reading) for topic, _, reading in batch]

    def run(self, per_s: float = 200.0, limit: int = 5000) -> None:
        """Keep publishing in the background (bounded by ``limit`` readings in all) until ``stop()``."""
        def schedule():
            for _ in range(limit - len(self._sent)):
                topic, payload, reading = self._next()
                self._drawn.append((topic, reading))
                yield topic, payload

        self.background = Publisher(self.port, paced(schedule(), per_s)).start()

    def stop(self) -> None:
        if self.background is not None:
            self.background.stop()

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
        close(self.client)


def expected_windows(readings: list) -> int:
    """Windows of 128 samples, hop 64, from 64-sample readings: one per reading after each device's first."""
    per_device: dict[str, int] = {}
    for topic, _ in readings:
        per_device[topic] = per_device.get(topic, 0) + 1
    return sum(n - 1 for n in per_device.values())


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


# --------------------------------------------------------------------------- hostile artifacts and edge processes

_LOAD_FROM_OFFSET = """
import struct, sys
from edgeloop.edge.inference import load_interpreter_class
cls, _ = load_interpreter_class()
content = sys.stdin.buffer.read()
start, value = int(sys.argv[1]), int(sys.argv[2])
for off in range(start, len(content) - 3, 4):
    if not 0 <= struct.unpack_from("<i", content, off)[0] < 64:
        continue  # only small int32 fields: tensor, buffer and operator indices, sizes
    mutated = bytearray(content)
    struct.pack_into("<i", mutated, off, value)
    print(off, flush=True)
    try:
        interpreter = cls(model_content=bytes(mutated))
        interpreter.allocate_tensors()
    except Exception:
        pass
print("end", flush=True)
"""


def _python(code: str, args: list[str], stdin: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], input=stdin, capture_output=True, timeout=300)


def crashing_variant(version: str = "6.6.6") -> tuple[bytes, ModelMetadata]:
    """The bundled model with int32 fields rewritten until LiteRT crashes on it in a child process.

    Each small int32 field (an index or a size) in turn is set to -1 and the
    result loaded and allocated in a child; the first rewrite whose child dies
    by a signal, and dies again in three fresh children, is returned (LiteRT
    2.x: SIGSEGV in ``allocate_tensors``). The metadata is the bundled model's
    under ``version`` with the new sha256, so everything but the interpreter
    accepts it.
    """
    content, meta = bundled()
    start = 0
    while True:
        run = _python(_LOAD_FROM_OFFSET, [str(start), "-1"], content)
        lines = run.stdout.decode().split()
        if not lines or lines[-1] == "end":
            raise AssertionError(f"no int32 rewrite of the bundled model crashes the interpreter: {run.stderr[-500:]!r}")
        offset = int(lines[-1])
        mutated = bytearray(content)
        struct.pack_into("<i", mutated, offset, -1)
        again = [_python(_LOAD_FROM_OFFSET, [str(offset), "-1"], content).returncode for _ in range(3)]
        if all(rc < 0 for rc in again):
            bad = bytes(mutated)
            return bad, meta.model_copy(update={"version": version, "sha256": sha256_bytes(bad)})
        start = offset + 4


def looping_variant(version: str = "7.7.7") -> tuple[bytes, ModelMetadata]:
    """A model the interpreter never returns from: a WHILE loop whose condition stays true, with the bundled
    model's input and output (built with TensorFlow, the ``train`` extra)."""
    import tensorflow as tf

    _, meta = bundled()
    width = meta.input.shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32)])
    def forever(x):
        _, y = tf.while_loop(lambda i, y: tf.reduce_sum(y) > -1e30, lambda i, y: (i + 1.0, y), [tf.constant(0.0), tf.abs(x)])
        return y[:, :1]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([forever.get_concrete_function()], forever)
    content = converter.convert()
    return content, meta.model_copy(update={"version": version, "sha256": sha256_bytes(content)})


def hand_signed(deployer, content: bytes, meta: ModelMetadata, targets: list[str] | None = None):  # noqa: ANN001
    """Publish ``content`` under a manifest signed with the deployer's key but built by hand, skipping the
    deployer's own trial: what a signing host without that check (or with a stolen key) would send. Self-test
    vectors are the bundled model's."""
    import uuid

    from edgeloop.bridge.training.selftest import make_selftest
    from edgeloop.deploy_contract import ModelManifest, chunk_count, chunk_digest, split_chunks

    base_content, base_meta = bundled()
    manifest = ModelManifest(
        model=MODEL, version=meta.version, sha256=meta.sha256, size=len(content), chunk_size=deployer.chunk_size,
        chunks=chunk_count(len(content), deployer.chunk_size),
        chunk_digests=[chunk_digest(c) for c in split_chunks(content, deployer.chunk_size)],
        targets=targets or ["*"], deploy_id=uuid.uuid4().hex[:16], seq=deployer.registry.next_deploy_seq(MODEL),
        created=time.time(), metadata=meta, selftest=make_selftest(base_content, base_meta),
    )
    deployer.publish_artifact(manifest, content)
    deployer.publish_manifest(manifest)
    return manifest


def edge_process(tmp: Path, broker_url: str, node: str, keys: Keys, **deploy) -> CliProcess:
    """``edgeloop edge run`` as a real process, signed deployment on (state in ``tmp/state-{node}``)."""
    settings = {"canary_windows": 10, "chunk_timeout_s": 5.0, **deploy}
    cfg = configs.edge_config(node, broker_url, {"input": {"qos": 1}, "status_interval_s": 30},
                              configs.signed_deploy(keys.public_file, tmp / f"state-{node}", **settings))
    path = configs.write_config(tmp / f"edge-{node}.yaml", cfg)
    path.chmod(0o600)
    return CliProcess(["edge", "run", "-c", str(path)], tmp / f"edge-{node}.log")
