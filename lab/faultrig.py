"""Fault-injection rig: real edge and bridge processes, a known stream of readings, a pullable cable.

Shared by the fault tests (tests/integration/test_reliability.py) and the
reliability table (``make reliability`` -> benchmarks/reliability.py).

One scenario (``Rig``) = mosquitto (persistence optional) + influxd + a bridge
process (or several, on a ``$share`` group) + an edge process, all started
through the real CLI with config files (``lab.procs``, ``lab.configs``), a
paced QoS 1 publisher of simulated vibration readings (``lab.mqtt``), one
fault in the middle of the stream, and at the end a count of what InfluxDB
holds against what the readings imply (one window per reading after the first
of each device): lost = expected - stored, duplicates = points - distinct windows.

The "network outage" is an in-process TCP forwarder (lab/tcpproxy.py) that
can stop forwarding without closing anything, like a pulled cable.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.configs import FAST_RECONNECT, bridge_config, edge_config, write_config
from lab.mqtt import Publisher, Watcher, paced
from lab.procs import CliProcess, descendants
from lab.servers import InfluxDB1, Mosquitto, eventually
from lab.tcpproxy import TcpProxy

__all__ = ["BROKER_CONF", "Outcome", "Rig", "cut_network", "expected_windows", "fleet_readings", "kill_bridge",
           "kill_bridge_while_influx_down", "kill_broker", "kill_edge", "kill_edge_offline",
           "kill_edge_without_pubacks", "stop_influx", "stored_windows"]

#: Broker settings the guarantees rely on (docs/reliability.md): mosquitto's default of 1000
#: queued messages per client would drop readings for an edge that is down for long.
BROKER_CONF = "max_queued_messages 1000000\nmax_queued_bytes 0\n"

#: The rig's bridges: small batches flushed every 100 ms, a short write timeout (influxd is stopped).
RIG_BRIDGE = {"influx": {"batch_size": 500, "flush_interval_ms": 100, "timeout_s": 2}}

Reading = tuple[str, bytes, str, int]  # (topic, payload, device, seq)


def fleet_readings(devices: int, per_device: int, seed: int = 3) -> list[Reading]:
    """``per_device`` vibration readings of each device, in time order."""
    from edgeloop.devices.simulator import FleetSimulator

    sim = FleetSimulator(devices, seed=seed, anomaly_rate=0.01, sensors=("vibration",), start_ts=time.time() - 3600)
    out = []
    for topic, reading in sim.readings(count=devices * per_device):
        out.append((topic, reading.model_dump_json(exclude_none=True).encode(), topic.split("/")[1], reading.seq))
    return out


def expected_windows(readings: list[Reading]) -> set[tuple[str, int]]:
    """Windows (device, seq) the default pipeline cuts: size 128, hop 64, 64-sample readings -> one per
    reading after a device's first."""
    return {(device, seq) for _, _, device, seq in readings if seq >= 1}


def stored_windows(influx: InfluxDB1, db: str, node: str) -> tuple[set[tuple[str, int]], int]:
    """(distinct (device, seq) windows, number of points) the edge ``node`` has in ``db``."""
    rows = influx.points(f"SELECT \"seq\" FROM \"inference\" WHERE \"node\" = '{node}' GROUP BY \"device\"", db)
    return {(r["device"], int(r["seq"])) for r in rows}, len(rows)


def wait_stored(influx: InfluxDB1, db: str, node: str, want: set[tuple[str, int]], timeout: float) -> float:
    """Poll until every window in ``want`` is stored; the seconds it took."""
    t0 = time.monotonic()
    eventually(lambda: want <= stored_windows(influx, db, node)[0], timeout=timeout, interval=0.1,
               message=f"{len(want)} windows stored")
    return time.monotonic() - t0


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


class Rig:
    """Broker, database, bridge(s) and edge for one scenario; ``run(fault)`` streams, breaks, counts.

    ``influx``: a running InfluxDB1 to use, or None to start one of its own (needed when the
    fault stops the database). ``via_proxy``: the edge reaches the broker through a TcpProxy
    (``"mqtt"``: one that frames MQTT packets, for ``kill_edge_without_pubacks``).
    ``persistence``: mosquitto saves its state to disk after every change (what a kill -9 of
    the broker needs; it costs the broker about two thirds of its QoS 1 rate, docs/reliability.md);
    ``broker_conf`` is appended to its config.
    """

    def __init__(self, workdir: Path, name: str, *, influx: InfluxDB1 | None = None, devices: int = 3,
                 per_device: int = 40, rate: float = 60.0, bridges: int = 1, share_group: str | None = None,
                 via_proxy: bool | str = False, edge_over: dict | None = None, seed: int = 3,
                 persistence: bool = False, broker_conf: str = "") -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.node = f"edge-{name}"
        self.db = f"rel_{name}".replace("-", "_")
        self.readings = fleet_readings(devices, per_device, seed=seed)
        self.rate = rate
        self._own_influx = influx is None
        self.influx = influx or InfluxDB1(self.workdir / "influxdb")
        self.broker = Mosquitto(self.workdir / "mosquitto", extra_conf=BROKER_CONF + broker_conf, persistence=persistence)
        self.n_bridges = bridges
        self.share_group = share_group
        self.via_proxy = via_proxy
        self.edge_over = edge_over or {}
        self.proxy: TcpProxy | None = None
        self.bridges: list[CliProcess] = []
        self.edge: CliProcess | None = None
        self.watch: Watcher | None = None
        self.publisher: Publisher | None = None

    def bridge_node(self, i: int) -> str:
        return f"bridge-{self.name}-{i}"

    def start(self) -> "Rig":
        if self._own_influx:
            self.influx.start()
        self.influx.create_database(self.db)
        self.broker.start()
        self.watch = Watcher(self.broker.port, ["status/#"])
        for i in range(self.n_bridges):
            over = {"node_id": self.bridge_node(i), **({"share_group": self.share_group} if self.share_group else {})}
            cfg = write_config(self.workdir / f"bridge{i}.yaml",
                               bridge_config(self.broker.url, self.influx.url, self.db, FAST_RECONNECT, RIG_BRIDGE, over))
            self.bridges.append(CliProcess(["bridge", "run", "-c", str(cfg)], self.workdir / f"bridge{i}.log").start())
        url = self.broker.url
        if self.via_proxy:
            self.proxy = TcpProxy(self.broker.port, mqtt_frames=self.via_proxy == "mqtt")
            url = self.proxy.url
        own = {"outbox": {"path": str(self.workdir / f"outbox-{self.node}.sqlite")}, "drain_timeout_s": 10}
        cfg = write_config(self.workdir / "edge.yaml", edge_config(self.node, url, FAST_RECONNECT, own, self.edge_over))
        self.edge = CliProcess(["edge", "run", "-c", str(cfg)], self.workdir / "edge.log").start()
        for i, bridge in enumerate(self.bridges):
            self.watch.wait_online(self.bridge_node(i), bridge)
        self.watch.wait_online(self.node, self.edge)
        return self

    def restart(self, proc: CliProcess, node: str) -> None:
        seen = len(self.watch.states(node))
        proc.start()
        self.watch.wait_online(node, proc, after=seen)

    def run(self, fault, fault_at: float = 0.35, timeout: float = 120.0) -> Outcome:
        """Stream every reading; at ``fault_at`` of the stream call ``fault(self)`` (it returns when
        the fault is over); wait until everything is stored; stop the processes (SIGTERM); count."""
        self.publisher = Publisher(self.broker.port, paced(((t, p) for t, p, _, _ in self.readings), self.rate)).start()
        eventually(lambda: self.publisher.published >= fault_at * len(self.readings), timeout=timeout,
                   interval=0.02, message="stream reached the fault point")
        notes = fault(self) or {}
        before_end = expected_windows(self.readings[: self.publisher.published])
        try:
            recovery = wait_stored(self.influx, self.db, self.node, before_end, timeout)
        except AssertionError:
            recovery = float("inf")  # never recovered: the count below says what is missing
        self.publisher.wait_acked(timeout)
        want = expected_windows(self.readings)
        try:
            wait_stored(self.influx, self.db, self.node, want, timeout)
        except AssertionError:
            pass  # counted below as lost
        codes = self.stop_processes()
        stored, points = stored_windows(self.influx, self.db, self.node)
        notes.update({"exit_codes": codes, "missing": sorted(want - stored)})
        return Outcome(self.name, len(self.readings), len(want), len(stored & want), len(stored), points,
                       round(recovery, 2), notes)

    def stop_processes(self) -> dict[str, int | None]:
        codes = {}
        if self.edge is not None:
            codes["edge"] = self.edge.terminate()
        for i, bridge in enumerate(self.bridges):
            codes[f"bridge{i}"] = bridge.terminate()
        return codes

    def close(self) -> None:
        for proc in [self.edge, *self.bridges]:
            if proc is not None:
                proc.kill()
        for part in (self.publisher, self.watch, self.proxy):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001, S110 -- best-effort teardown
                    pass
        self.broker.stop()
        if self._own_influx:
            self.influx.stop()

    def __enter__(self) -> "Rig":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- the faults


def _outage(down_s: float, stop, start):  # noqa: ANN001, ANN202 -- stop/start(rig)
    """A fault: ``stop(rig)``, ``down_s`` seconds of nothing, ``start(rig)``."""
    def fault(rig: Rig) -> dict:
        stop(rig)
        time.sleep(down_s)
        start(rig)
        return {}
    return fault


def kill_broker(down_s: float):  # noqa: ANN201
    """mosquitto SIGKILLed mid-stream, started again on the same port and persistence file."""
    return _outage(down_s, lambda rig: rig.broker.kill(), lambda rig: rig.broker.restart())


def kill_bridge(down_s: float, index: int = 0):  # noqa: ANN201
    """A bridge process SIGKILLed mid-stream, restarted (same node id, so the same session)."""
    return _outage(down_s, lambda rig: rig.bridges[index].kill(),
                   lambda rig: rig.restart(rig.bridges[index], rig.bridge_node(index)))


def stop_influx(down_s: float):  # noqa: ANN201
    """influxd stopped mid-stream for ``down_s``, then started on the same port and data."""
    return _outage(down_s, lambda rig: rig.influx.stop(), lambda rig: rig.influx.restart())


def kill_edge(down_s: float):  # noqa: ANN201
    """The edge SIGKILLed mid-stream, restarted: outbox replay plus readings the session queued."""
    return _outage(down_s, lambda rig: rig.edge.kill(), lambda rig: rig.restart(rig.edge, rig.node))


def kill_edge_offline(down_s: float):
    """The edge's uplink goes silent (readings still arrive, nothing it sends gets through), so
    results pile up in its outbox; then it is SIGKILLed, the link comes back, and it restarts:
    the new process must send what the dead one left on disk."""
    def fault(rig: Rig) -> dict:
        rig.proxy.cut(uplink_only=True)
        time.sleep(down_s)
        rig.edge.kill()
        rig.proxy.restore()
        rig.restart(rig.edge, rig.node)
        return {}
    return fault


def cut_network(down_s: float):
    """The edge-broker link silent for ``down_s`` (longer than keepalive): no FIN, no RST."""
    def fault(rig: Rig) -> dict:
        seen = len(rig.watch.states(rig.node))
        rig.proxy.cut()
        time.sleep(down_s)
        rig.proxy.restore()
        lwt = "offline" in rig.watch.states(rig.node)[seen:]
        rig.watch.wait_online(rig.node, rig.edge, after=seen)
        return {"lwt_seen": lwt}
    return fault


def kill_edge_without_pubacks(down_s: float):
    """The edge's own messages stop reaching the broker -- the proxy drops every PUBLISH it sends --
    while its PUBACKs for the readings it receives still pass, so the broker forgets those readings.
    Then the edge is SIGKILLed, the link comes back and it restarts. With a large
    ``mqtt.max_inflight`` every result of that time was handed to paho (in memory, gone with the
    process) and never acknowledged: the outbox on disk is the only copy left anywhere."""
    def fault(rig: Rig) -> dict:
        rig.proxy.drop_publishes()
        time.sleep(down_s)
        rig.edge.kill()
        dropped = rig.proxy.dropped_publishes
        rig.proxy.restore()
        rig.restart(rig.edge, rig.node)
        return {"publishes_dropped": dropped}
    return fault


def worker_pids(pid: int) -> list[int]:
    """The inference worker processes (``workers: N``, runtime/workers.py) of edge process ``pid``."""
    out = []
    for child in descendants(pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            out.append(child)
    return out


def kill_edge_worker(down_s: float, index: int = 0):
    """One of the edge's inference worker processes SIGKILLed mid-stream (the OOM killer, a segfault):
    the edge must stop by itself with exit code 1 -- its window state went with the worker -- and
    the supervisor (here: the rig) starts it again after ``down_s``."""
    def fault(rig: Rig) -> dict:
        workers = worker_pids(rig.edge.pid)
        os.kill(workers[index], signal.SIGKILL)
        eventually(lambda: not rig.edge.alive(), timeout=30, message=f"the edge did not stop\n{rig.edge.log_tail()}")
        code = rig.edge.returncode
        time.sleep(down_s)
        rig.restart(rig.edge, rig.node)
        return {"workers": len(workers), "edge_exit_after_worker_death": code}
    return fault


def kill_bridge_while_influx_down(down_s: float):
    """influxd stopped; for ``down_s`` the bridge receives results it cannot write; then it is
    SIGKILLed, influxd comes back and the bridge restarts. Each result it received meanwhile was
    held in its memory and, acknowledged only after a write, still held by the broker: that copy,
    which the broker sends to the restarted bridge, is the only one left."""
    def fault(rig: Rig) -> dict:
        rig.influx.stop()
        time.sleep(down_s)
        rig.bridges[0].kill()
        rig.influx.restart()
        rig.restart(rig.bridges[0], rig.bridge_node(0))
        return {}
    return fault
