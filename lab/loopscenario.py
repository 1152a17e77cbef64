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

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeloop.contract import InferenceResult
from lab.configs import bridge_config, closed_loop, edge_config, signed_deploy, write_config
from lab.mqtt import Publisher, Watcher
from lab.procs import CliProcess
from lab.scorecard import score_detection

MODEL = "vibration_ae"


@dataclass(frozen=True)
class Burst:
    """One device (index) that breaks down, with ``anomaly_rate``, between ``start_burst()`` and ``end_burst()``."""

    device: int
    anomaly_rate: float = 0.3


# --------------------------------------------------------------------------- fleet


class FleetPublisher(Publisher):
    """Publishes a simulated fleet (vibration only, QoS 0) paced at ``rate_hz`` readings/s per device.

    Reading ``ts`` follows the schedule (``start + time_scale * t``). The regime
    changes ``drift_at_s`` schedule seconds after the start, or when
    ``start_drift()`` is called (a rig driven by events: it changes the regime
    once the loop has shown what it should have seen so far). With a ``burst``,
    that device's readings come from the same machine with a high fault rate
    between ``start_burst()`` and ``end_burst()``. Each switch takes effect in
    the publishing thread, at the next reading, and the call returns its
    schedule offset. Ground truth: ``faults`` lists the (device, seq) of every
    published reading labelled fault.
    """

    def __init__(self, port: int, devices: int, rate_hz: float, drift_at_s: float | None, *, seed: int = 42,
                 anomaly_rate: float = 0.002, burst: Burst | None = None, max_s: float = 600.0) -> None:
        from edgeloop.devices.simulator import FleetSimulator

        natural = 1000.0 / 64
        self.time_scale = natural / rate_hz
        sim_drift = None if drift_at_s is None else drift_at_s / self.time_scale
        kw = {"seed": seed, "drift_at_s": sim_drift, "time_scale": self.time_scale, "sensors": ("vibration",)}
        self.sims = [FleetSimulator(devices, anomaly_rate=anomaly_rate, **kw)]
        if burst is not None:
            self.sims.append(FleetSimulator(devices, anomaly_rate=burst.anomaly_rate, **kw))
        self.devices, self.drift_at_s, self.burst, self.max_s = devices, drift_at_s, burst, max_s
        self._faults: list[tuple[int, str, int, bool]] = []  # (index in the schedule, device, seq, in the burst)
        self._burst_on = False
        self._burst_seqs: list[int] = []  # seqs of the burst device's readings published in the burst
        self._requests: list[tuple[str, threading.Event, list[float]]] = []  # switches for the publishing thread
        self._requests_lock = threading.Lock()
        super().__init__(port, self._schedule(), qos=0)

    @property
    def faults(self) -> list[tuple[str, int]]:
        """(device, seq) of every published reading labelled fault."""
        published = self.published
        return [(d, s) for i, d, s, _b in self._faults if i < published]

    @property
    def burst_faults(self) -> list[tuple[str, int]]:
        published = self.published
        return [(d, s) for i, d, s, burst in self._faults if burst and i < published]

    @property
    def burst_seqs(self) -> tuple[int, int] | None:
        """(first, last) seq of the burst device's readings that came from the broken machine."""
        seqs = list(self._burst_seqs)
        return (seqs[0], seqs[-1]) if seqs else None

    @property
    def start_wall(self) -> float:
        return self.started_at

    @property
    def drift_wall(self) -> float | None:
        """Wall clock of the regime change on the schedule (reading ``ts`` at or after it are drifted)."""
        return None if self.drift_at_s is None else self.start_wall + self.drift_at_s

    def start_burst(self, timeout: float = 30.0) -> float:
        return self._switch("burst_on", timeout)

    def end_burst(self, timeout: float = 30.0) -> float:
        return self._switch("burst_off", timeout)

    def start_drift(self, timeout: float = 30.0) -> float:
        """Change the regime now (after what the simulator already built); the schedule offset of the onset."""
        return self._switch("drift", timeout)

    def _switch(self, what: str, timeout: float) -> float:
        if what.startswith("burst") and self.burst is None:
            raise RuntimeError("this fleet has no burst device")
        if what == "drift" and self.drift_at_s is not None:
            raise RuntimeError(f"the regime already changes at {self.drift_at_s:.1f}s")
        done, out = threading.Event(), []
        with self._requests_lock:
            self._requests.append((what, done, out))
        if not done.wait(timeout):
            raise AssertionError(f"the publisher did not switch {what} within {timeout}s (running: {self.is_alive()})")
        return out[0]

    def _apply_switches(self, offset: float) -> None:
        """In the publishing thread, before the reading at ``offset`` (schedule seconds) goes out."""
        with self._requests_lock:
            requests, self._requests = self._requests, []
        for what, done, out in requests:
            if what == "drift":
                onset = max(sim.drift_from(offset / self.time_scale) for sim in self.sims)
                for sim in self.sims:  # one onset for both fleets (they are built in lock-step)
                    sim.drift_from(onset)
                self.drift_at_s = onset * self.time_scale
                out.append(self.drift_at_s)
            else:
                self._burst_on = what == "burst_on"
                out.append(offset)
            done.set()

    def _schedule(self) -> Iterator[tuple[float, str, str]]:
        """Read in the publishing thread, so the fleet's clock starts when publishing does."""
        start = self.started_at
        for sim in self.sims:
            sim.start_ts = start
        normal = self.sims[0].readings()
        faulty = self.sims[1].readings() if self.burst else None
        burst_topic = f"sensors/dev-{self.burst.device:03d}/vibration" if self.burst else None
        for index, (topic, reading) in enumerate(normal):
            offset = reading.ts - start
            if offset >= self.max_s:
                return
            self._apply_switches(offset)
            in_burst = False
            if faulty is not None:
                _, f_reading = next(faulty)  # the same order: the fleets differ only in faults
                in_burst = self._burst_on and topic == burst_topic
                if in_burst:
                    reading = f_reading
                    self._burst_seqs.append(reading.seq)
            if reading.label == "fault":
                self._faults.append((index, topic.split("/")[1], reading.seq, in_burst))
            yield offset, topic, reading.model_dump_json(exclude_none=True)


# --------------------------------------------------------------------------- watching


class FleetWatch(Watcher):
    """Every result and node status; which model version each node runs, and since when."""

    def __init__(self, port: int) -> None:
        super().__init__(port, [("results/#", 0), ("status/+", 1)])

    def node_version(self, node: str) -> str | None:
        s = self.status(node)
        return s.models[MODEL].version if s and s.state == "online" and MODEL in s.models else None

    def first_on(self, node: str, version: str) -> float | None:
        """When ``node`` first reported ``version`` in an online status."""
        return next((t for t, s in self.statuses(node)
                     if s.state == "online" and MODEL in s.models and s.models[MODEL].version == version), None)


# --------------------------------------------------------------------------- processes and config


def edge_process(workdir: Path, node: str, topic: str, broker_url: str, public_key: Path, fraction: float,
                 seed: int, canary_windows: int = 20) -> CliProcess:
    """``edgeloop edge run`` with signed deployment and sampling on; config, state and log under ``workdir``."""
    cfg = edge_config(node, broker_url, {
        "pipelines": [{"sensor": "vibration", "topic": topic}],
        "sampling": {"fraction": fraction, "budget_per_hour_per_device": 1_000_000, "seed": seed},
        "status_interval_s": 5,
    }, signed_deploy(public_key, workdir / f"state-{node}", canary_windows=canary_windows, chunk_timeout_s=10.0))
    path = write_config(workdir / f"{node}.yaml", cfg)
    return CliProcess(["edge", "run", "-c", str(path)], workdir / f"{node}.log").start()


def loop_bridge_config(broker_url: str, influx_url: str, db: str, workdir: Path, signing_key: Path,
                       drift: dict | None = None, retrain: dict | None = None) -> Any:
    """A bridge config with the whole closed loop on (influx v1), tuned by ``drift`` / ``retrain`` overrides."""
    from edgeloop.bridge.config import BridgeConfig

    return BridgeConfig.model_validate(
        bridge_config(broker_url, influx_url, db, closed_loop(workdir, signing_key, drift, retrain)))


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


def quality(rows: list[InferenceResult], faults: list[tuple[str, int]], span: int = 2) -> dict[str, Any]:
    """False-positive rate on windows not overlapping a fault, recall of fault episodes (lab.scorecard)."""
    seen = {(r.device, r.seq) for r in rows}
    in_phase = [f for f in faults if any((f[0], f[1] + k) in seen for k in range(span))]  # scored in this phase
    scored = score_detection(in_phase, [{"device": r.device, "seq": r.seq, "anomaly": r.anomaly} for r in rows], span)
    return {"windows": len(rows), **scored}


def figures(rows: list[InferenceResult], faults: list[tuple[str, int]], drift_wall: float, new_version: str | None,
            old_version: str, excluded: set[tuple[str, int]] | None = None) -> dict[str, Any]:
    """Quality before drift (old model), during drift (old model) and after the redeploy (new model)."""
    excluded = excluded or set()
    keep = [r for r in rows if (r.device, r.seq) not in excluded]
    fault_set = [f for f in faults if f not in excluded]
    before = [r for r in keep if r.ts < drift_wall and r.model_version == old_version]
    during = [r for r in keep if r.ts >= drift_wall and r.model_version == old_version]
    after = [r for r in keep if new_version is not None and r.model_version == new_version]
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
