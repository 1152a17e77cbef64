"""Fault-injection kit: real edge and bridge processes, a known stream of readings, a pullable cable.

Shared by the fault tests (tests/integration/test_reliability.py) and the
reliability table (``make reliability`` -> benchmarks/reliability.py), like
``localservers`` is shared by the tests, the demo and the benchmarks.

One scenario = mosquitto (persistence on) + influxd + a bridge process (or
several, on a ``$share`` group) + an edge process, all started through the real
CLI with config files, a paced QoS 1 publisher of simulated vibration readings,
one fault in the middle of the stream, and at the end a count of what InfluxDB
holds against what the readings imply (one window per reading after the first
of each device): lost = expected - stored, duplicates = points - distinct windows.

Only the standard library, paho and the project's own modules are used; the
"network outage" is an in-process TCP forwarder (lab/tcpproxy.py)
that can stop forwarding without closing anything, like a pulled cable. The
scenario runner and the faults are in lab/faultrig.py.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lab.servers import HOST, InfluxDB1, eventually

REPO = Path(__file__).resolve().parents[2]

#: Broker settings the guarantees rely on (docs/reliability.md): mosquitto's default of 1000
#: queued messages per client would drop readings for an edge that is down for long.
BROKER_CONF = "max_queued_messages 1000000\nmax_queued_bytes 0\n"


# ---------------------------------------------------------------------- processes


class CliProcess:
    """``python -m edgeloop.cli <args>`` with its output appended to a log file; kill -9 or SIGTERM."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "CliProcess":
        with open(self.log_path, "a") as log:
            log.write(f"\n===== start {self.starts + 1}: {' '.join(self.args)}\n")
            log.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgeloop.cli", *self.args],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye, as in a crash or a power cut."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain), then SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def final_stats(self) -> dict:
        """The counters logged by the last run on SIGTERM (``bridge stopped: {...}``,
        ``edge <node> stopped: {...}``) as a dict; {} if that run did not stop cleanly."""
        last = self.log().rsplit("===== start", 1)[-1]
        for line in reversed(last.splitlines()):
            if " stopped: {" in line:
                return ast.literal_eval(line.split(" stopped: ", 1)[1])
        return {}


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))  # JSON is YAML
    return path


def edge_config(workdir: Path, node: str, broker_url: str, **over) -> dict:
    cfg = {
        "node_id": node,
        "mqtt": {"url": broker_url, "keepalive_s": 5, "reconnect_min_s": 0.5, "reconnect_max_s": 2},
        "outbox": {"path": str(workdir / f"outbox-{node}.sqlite")},
        "drain_timeout_s": 10,
    }
    return _merge(cfg, over)


def bridge_config(node: str, broker_url: str, influx: InfluxDB1, db: str, **over) -> dict:
    cfg = {
        "node_id": node,
        "mqtt": {"url": broker_url, "keepalive_s": 5, "reconnect_min_s": 0.5, "reconnect_max_s": 2},
        "influx": {"api": "v1", "url": influx.url, "db": db, "batch_size": 500, "flush_interval_ms": 100,
                   "timeout_s": 2},
    }
    return _merge(cfg, over)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# ---------------------------------------------------------------------- traffic


def fleet_readings(devices: int, per_device: int, seed: int = 3) -> list[tuple[str, bytes, str, int]]:
    """(topic, payload, device, seq) for ``per_device`` vibration readings of each device, in time order."""
    from edgeloop.devices.simulator import FleetSimulator

    sim = FleetSimulator(devices, seed=seed, anomaly_rate=0.01, sensors=("vibration",), start_ts=time.time() - 3600)
    out = []
    for topic, reading in sim.readings(count=devices * per_device):
        out.append((topic, reading.model_dump_json(exclude_none=True).encode(), topic.split("/")[1], reading.seq))
    return out


def expected_windows(readings: list[tuple[str, bytes, str, int]]) -> set[tuple[str, int]]:
    """Windows (device, seq) the default pipeline cuts: size 128, hop 64, 64-sample readings -> one per
    reading after a device's first."""
    return {(device, seq) for _, _, device, seq in readings if seq >= 1}


class Publisher:
    """Publishes readings at QoS 1 at a steady rate from a thread; paho keeps every message until its
    PUBACK and resends after reconnecting, so a broker restart costs the publisher nothing."""

    def __init__(self, broker_port: int, readings: list[tuple[str, bytes, str, int]], rate_per_s: float) -> None:
        self.readings = readings
        self.rate = rate_per_s
        self.published = 0
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"faultkit-pub-{os.getpid()}-{time.monotonic_ns()}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self._acked: set[int] = set()
        self.client.on_publish = lambda _c, _u, mid, _rc, _p: self._acked.add(mid)
        self.client.connect(HOST, broker_port)
        self.client.loop_start()
        self._mids: list[int] = []
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> "Publisher":
        self._thread.start()
        return self

    def _run(self) -> None:
        t0 = time.monotonic()
        for i, (topic, payload, _, _) in enumerate(self.readings):
            delay = t0 + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            # Published while the broker is down: paho keeps it and sends it after reconnecting.
            self._mids.append(self.client.publish(topic, payload, qos=1).mid)
            self.published = i + 1

    def sent_so_far(self) -> list[tuple[str, bytes, str, int]]:
        return self.readings[: self.published]

    def wait_acked(self, timeout: float) -> None:
        self._thread.join(timeout)
        eventually(lambda: not self._thread.is_alive() and self._acked.issuperset(self._mids),
                   timeout=timeout, interval=0.1, message="publisher: every reading acknowledged by the broker")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class StatusWatch:
    """Every status/# message seen, to wait for births and to see an LWT."""

    def __init__(self, broker_port: int) -> None:
        self.seen: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("status/#", qos=1)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(HOST, broker_port)
        self.client.loop_start()

    def _on_message(self, _c, _u, msg) -> None:
        try:
            state = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.seen.append((msg.topic.split("/", 1)[1], state))

    def states(self, node: str) -> list[str]:
        with self._lock:
            return [s.get("state") for n, s in self.seen if n == node]

    def wait_online(self, node: str, proc: CliProcess, timeout: float = 60.0, after: int = 0) -> None:
        def online():
            assert proc.alive(), f"{node} exited:\n{proc.log()[-3000:]}"
            return "online" in self.states(node)[after:]

        eventually(online, timeout=timeout, interval=0.05, message=f"{node} online")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ---------------------------------------------------------------------- database


def stored_windows(influx: InfluxDB1, db: str, node: str) -> tuple[set[tuple[str, int]], int]:
    """(distinct (device, seq) windows, number of points) the edge ``node`` has in ``db``."""
    rows = influx.points(f"SELECT \"seq\" FROM \"inference\" WHERE \"node\" = '{node}' GROUP BY \"device\"", db)
    return {(r["device"], int(r["seq"])) for r in rows}, len(rows)


@dataclass
class Outcome:
    """One scenario's figures (a row of the reliability table)."""

    scenario: str
    sent: int  # readings published (and acknowledged by the broker)
    expected: int  # windows those readings imply
    stored: int  # of those, windows InfluxDB holds
    distinct: int  # distinct (device, seq) windows InfluxDB holds for the edge (expected or not)
    points: int  # points InfluxDB holds for the edge (more than distinct: duplicates)
    recovery_s: float | None  # fault over -> every window published before then is stored
    notes: dict = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.expected - self.stored

    @property
    def duplicates(self) -> int:
        return self.points - self.distinct

    def row(self) -> dict:
        return {"scenario": self.scenario, "sent": self.sent, "expected": self.expected, "stored": self.stored,
                "lost": self.lost, "duplicates": self.duplicates, "recovery_s": self.recovery_s, **self.notes}


def wait_stored(influx: InfluxDB1, db: str, node: str, want: set[tuple[str, int]], timeout: float) -> float:
    """Poll until every window in ``want`` is stored; the seconds it took."""
    t0 = time.monotonic()
    eventually(lambda: want <= stored_windows(influx, db, node)[0], timeout=timeout, interval=0.1,
               message=f"{len(want)} windows stored")
    return time.monotonic() - t0



# Scenarios (Rig) and the faults live in lab/faultrig.py, the cuttable link in
# lab/tcpproxy.py.

__all__ = [
    "BROKER_CONF", "CliProcess", "Outcome", "Publisher", "StatusWatch", "bridge_config", "edge_config",
    "expected_windows", "fleet_readings", "stored_windows", "wait_stored", "write_yaml",
]
