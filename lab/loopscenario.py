"""A drift scenario for the whole closed loop, shared by the e2e test, ``make demo`` and the benchmark.

Why one module: the three need the same moving parts and the same figures,
measured the same way -- real edge processes with signed deployment on, the
bridge with its closed loop (sample store, drift monitor, retrain worker,
deployer), a paced simulated fleet whose regime changes at ``drift_at_s``
(optionally with one device's burst of faults before that), and a watcher
that keeps every result and node status:

    time from drift onset to detection, to a deployed model on every edge node;
    false-positive rate before drift, during drift (old model), after redeploy;
    recall of injected fault episodes before drift and after redeploy.

Servers (mosquitto, InfluxDB) are passed in: tests use their fixtures, the
demo and the benchmark start their own. Nothing here is a mock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop.contract import InferenceResult, NodeStatus

MODEL = "vibration_ae"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Burst:
    """One device breaks down (``anomaly_rate``) between ``start_s`` and ``end_s`` (wall seconds after start)."""

    device: int
    start_s: float
    end_s: float
    anomaly_rate: float = 0.3


# --------------------------------------------------------------------------- fleet


class FleetPublisher(threading.Thread):
    """Publishes a simulated fleet (vibration only) paced at ``rate_hz`` readings/s per device.

    Reading ``ts`` follows the wall clock (``start + time_scale * t``); the
    regime changes ``drift_at_s`` wall seconds after the start; with a
    ``burst``, that device's readings come from the same machine with a high
    fault rate during the burst. Ground truth: ``faults`` lists the
    (device, seq) of every reading labelled fault.
    """

    def __init__(self, port: int, devices: int, rate_hz: float, drift_at_s: float | None, *, seed: int = 42,
                 anomaly_rate: float = 0.002, burst: Burst | None = None, max_s: float = 600.0) -> None:
        super().__init__(name="fleet-publisher", daemon=True)
        from edgeloop.devices.simulator import FleetSimulator

        natural = 1000.0 / 64
        self.time_scale = natural / rate_hz
        sim_drift = None if drift_at_s is None else drift_at_s / self.time_scale
        kw = {"seed": seed, "drift_at_s": sim_drift, "time_scale": self.time_scale, "sensors": ("vibration",)}
        self.sims = [FleetSimulator(devices, anomaly_rate=anomaly_rate, **kw)]
        if burst is not None:
            self.sims.append(FleetSimulator(devices, anomaly_rate=burst.anomaly_rate, **kw))
        self.devices, self.drift_at_s, self.burst, self.max_s = devices, drift_at_s, burst, max_s
        self.stop_event = threading.Event()
        self.faults: list[tuple[str, int]] = []
        self.burst_faults: list[tuple[str, int]] = []
        self.sent = 0
        self.start_wall = 0.0
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"fleet-publisher-{os.getpid()}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    @property
    def drift_wall(self) -> float | None:
        return None if self.drift_at_s is None else self.start_wall + self.drift_at_s

    def run(self) -> None:
        self.start_wall = time.time()
        start_mono = time.monotonic()
        for sim in self.sims:
            sim.start_ts = self.start_wall
        normal = self.sims[0].readings()
        faulty = self.sims[1].readings() if self.burst else None
        burst_topic = f"sensors/dev-{self.burst.device:03d}/vibration" if self.burst else None
        for topic, reading in normal:
            if faulty is not None:
                _, f_reading = next(faulty)  # the same order: the fleets differ only in faults
                offset = reading.ts - self.start_wall
                if topic == burst_topic and self.burst.start_s <= offset < self.burst.end_s:
                    reading = f_reading
            offset = reading.ts - self.start_wall
            if offset >= self.max_s or self.stop_event.is_set():
                break
            lag = offset - (time.monotonic() - start_mono)
            if lag > 0 and self.stop_event.wait(lag):
                break
            self.client.publish(topic, reading.model_dump_json(exclude_none=True), qos=0)
            self.sent += 1
            if reading.label == "fault":
                device = topic.split("/")[1]
                self.faults.append((device, reading.seq))
                if topic == burst_topic and self.burst.start_s <= offset < self.burst.end_s:
                    self.burst_faults.append((device, reading.seq))

    def close(self) -> None:
        self.stop_event.set()
        self.join(10)
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- watching


@dataclass
class Row:
    received: float
    node: str
    device: str
    seq: int
    ts: float
    version: str
    anomaly: bool
    score: float


class FleetWatch:
    """Every result (compact) and, per node, when it first reported each model version in its status."""

    def __init__(self, port: int) -> None:
        self.rows: list[Row] = []
        self.versions: dict[str, dict[str, float]] = {}
        self.status: dict[str, NodeStatus] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"fleet-watch-{os.getpid()}-{id(self) % 10000}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("results/#", 0), ("status/+", 1)])
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("watcher did not get its SUBACK")

    def _on_message(self, _c, _u, msg) -> None:
        now = time.time()
        try:
            if msg.topic.startswith("results/"):
                r = InferenceResult.model_validate_json(msg.payload)
                row = Row(now, r.node or "", r.device, r.seq, r.ts, r.model_version, r.anomaly, r.score)
                with self._lock:
                    self.rows.append(row)
            elif msg.topic.startswith("status/") and msg.payload:
                s = NodeStatus.model_validate_json(msg.payload)
                with self._lock:
                    self.status[s.node] = s
                    if s.state == "online" and MODEL in s.models:
                        self.versions.setdefault(s.node, {}).setdefault(s.models[MODEL].version, now)
        except ValueError:
            pass

    def node_version(self, node: str) -> str | None:
        with self._lock:
            s = self.status.get(node)
        return s.models[MODEL].version if s and s.state == "online" and MODEL in s.models else None

    def snapshot(self) -> list[Row]:
        with self._lock:
            return list(self.rows)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- processes and config


def edge_config(path: Path, node: str, topic: str, broker_url: str, public_key: Path, state_dir: Path,
                fraction: float, seed: int, canary_windows: int = 20) -> Path:
    """An edge.yaml (JSON is YAML) with deployment and sampling on."""
    cfg = {
        "node_id": node,
        "mqtt": {"url": broker_url},
        "pipelines": [{"sensor": "vibration", "topic": topic}],
        "deploy": {"enabled": True, "public_key_file": str(public_key), "state_dir": str(state_dir),
                   "canary_windows": canary_windows, "chunk_timeout_s": 10.0},
        "sampling": {"fraction": fraction, "budget_per_hour_per_device": 1_000_000, "seed": seed},
        "status_interval_s": 5,
    }
    path.write_text(json.dumps(cfg, indent=2))
    return path


class EdgeProcess:
    """``python -m edgeloop.cli edge run -c CONFIG``, output to a log file, stopped with SIGTERM."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "edge", "run", "-c", str(config)], cwd=REPO,
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def bridge_config(broker_url: str, influx_url: str, db: str, workdir: Path, signing_key: Path,
                  drift: dict | None = None, retrain: dict | None = None) -> Any:
    """A bridge config with the whole closed loop on (influx v1), tuned by ``drift`` / ``retrain`` overrides."""
    from edgeloop.bridge.config import BridgeConfig

    return BridgeConfig.model_validate({
        "mqtt": {"url": broker_url},
        "influx": {"api": "v1", "url": influx_url, "db": db, "flush_interval_ms": 200},
        "samples": {"enabled": True, "dir": str(workdir / "samples"), "flush_interval_s": 0.5},
        "drift": {"enabled": True, **(drift or {})},
        "retrain": {"enabled": True, "registry": str(workdir / "registry"), "signing_key_file": str(signing_key),
                    **(retrain or {})},
    })


def seed_registry(root: Path) -> str:
    """A registry whose current version is the bundled model (what the edges start with)."""
    from edgeloop.bridge.registry import Registry
    from edgeloop.edge.config import BUNDLED_MODEL
    from edgeloop.modelfile import load_model_files

    registry = Registry(root, actor="scenario")
    content, meta = load_model_files(BUNDLED_MODEL)
    version = registry.add(meta.name, content, meta)
    registry.promote(meta.name, version)
    return version


# --------------------------------------------------------------------------- figures


def quality(rows: list[Row], faults: list[tuple[str, int]], span: int = 2) -> dict[str, Any]:
    """False-positive rate on windows not overlapping a fault, recall of fault episodes (lab.demo)."""
    from lab.demo import score_detection

    seen = {(r.device, r.seq) for r in rows}
    in_phase = [f for f in faults if any((f[0], f[1] + k) in seen for k in range(span))]  # scored in this phase
    scored = score_detection(in_phase, [{"device": r.device, "seq": r.seq, "anomaly": r.anomaly} for r in rows], span)
    return {"windows": len(rows), **scored}


def figures(rows: list[Row], faults: list[tuple[str, int]], drift_wall: float, new_version: str | None,
            old_version: str, excluded: set[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Quality before drift (old model), during drift (old model) and after the redeploy (new model)."""
    excluded = excluded or set()
    keep = [r for r in rows if (r.device, r.seq) not in excluded]
    fault_set = [f for f in faults if f not in excluded]
    before = [r for r in keep if r.ts < drift_wall and r.version == old_version]
    during = [r for r in keep if r.ts >= drift_wall and r.version == old_version]
    after = [r for r in keep if new_version is not None and r.version == new_version]
    return {
        "before": quality(before, fault_set),
        "during": quality(during, fault_set),
        "after": quality(after, fault_set),
    }


@dataclass
class Timeline:
    """Wall-clock times of the loop's milestones (None = did not happen)."""

    drift_onset: float | None = None
    detected: float | None = None
    registered: float | None = None
    deployed: float | None = None
    fleet_on_new: float | None = None
    new_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def delays(self) -> dict[str, float | None]:
        def since(t: float | None) -> float | None:
            return None if t is None or self.drift_onset is None else round(t - self.drift_onset, 2)

        return {
            "detection_s": since(self.detected),
            "registered_s": since(self.registered),
            "deploy_done_s": since(self.deployed),
            "fleet_on_new_model_s": since(self.fleet_on_new),
        }
