"""Publish a simulated fleet over MQTT, paced in real time or flat out.

Why separate from the simulator: the simulator is pure data (used by the
model builder without a broker); this module owns the broker connection,
pacing, ground-truth bookkeeping and the report the CLI prints.

Time model (one rule for everything): a reading's ``ts`` is
``start + time_scale * t`` where ``t`` is its simulated time and ``start`` the
wall clock when publishing began. Paced runs choose ``time_scale`` so that the
requested rate holds (``time_scale = natural rate / rate_hz``; 1.0 at the
natural rate of 1000/64 + 1 = 16.625 readings per second per device, which is
real time) and publish each reading when the wall clock reaches its ``ts``, so
``ts`` is realistic and the aggregate rate cannot drift (the schedule is
absolute: a late publisher catches up instead of falling behind for good).
``rate_hz = 0`` publishes as fast as possible with ``time_scale = 1``; ``ts``
then runs ahead of the wall clock. ``duration_s`` and ``drift_at_s`` are
seconds on the ``ts`` timeline (seconds after the start), in both modes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from edgeloop.devices.simulator import FAULT_LABEL, SENSORS, VIBRATION, FleetSimulator
from edgeloop.mqtt import MqttLink, MqttSettings, Publication, wait_for_all
from edgeloop.contract import check_level, parse_sensor_topic, sensor_topic

log = logging.getLogger(__name__)

#: Upper bound of ``rate_hz`` per device: beyond it the compressed sample rate
#: in a reading would exceed the contract's 1e6 Hz.
MAX_RATE_HZ = 15_000.0


@dataclass
class SimulationReport:
    """What a run published. ``faults`` lists (device, seq) of vibration readings labelled fault."""

    n_devices: int
    seed: int
    rate_hz: float
    time_scale: float
    start_ts: float
    qos: int
    sent: dict[str, dict[str, int]] = field(default_factory=dict)
    failed: int = 0
    faults: list[tuple[str, int]] = field(default_factory=list)
    fault_readings: int = 0
    drift_ts: float | None = None
    elapsed_s: float = 0.0
    max_lag_s: float = 0.0
    acknowledged: bool | None = None
    interrupted: bool = False
    truth_path: str | None = None

    @property
    def total_sent(self) -> int:
        return sum(n for sensors in self.sent.values() for n in sensors.values())

    def sent_by_sensor(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for sensors in self.sent.values():
            totals.update(sensors)
        return dict(totals)

    def summary(self) -> dict:
        """Plain data for JSON output (per-device counts and fault seqs are summarised)."""
        return {
            "devices": self.n_devices,
            "device_ids": list(self.sent),
            "sent_by_device": {d: sum(s.values()) for d, s in self.sent.items()},
            "seed": self.seed,
            "sent": self.total_sent,
            "sent_by_sensor": self.sent_by_sensor(),
            "failed": self.failed,
            "fault_readings": self.fault_readings,
            "vibration_fault_readings": len(self.faults),
            "drift_ts": self.drift_ts,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_per_s": round(self.total_sent / self.elapsed_s, 1) if self.elapsed_s > 0 else None,
            "requested_rate_per_s": self.rate_hz * self.n_devices if self.rate_hz else None,
            "max_lag_s": round(self.max_lag_s, 4),
            "time_scale": self.time_scale,
            "start_ts": self.start_ts,
            "qos": self.qos,
            "acknowledged": self.acknowledged,
            "interrupted": self.interrupted,
            "truth_path": self.truth_path,
        }


def simulate(
    broker_url: str | MqttSettings = "mqtt://127.0.0.1:1883",
    n_devices: int = 5,
    rate_hz: float | None = None,
    count: int | None = None,
    duration_s: float | None = None,
    seed: int = 1,
    anomaly_rate: float = 0.002,
    drift_at_s: float | None = None,
    qos: int = 0,
    truth_path: str | Path | None = None,
    stop: threading.Event | None = None,
    *,
    sensors: tuple[str, ...] = SENSORS,
    client_id: str | None = None,
    connect_timeout_s: float = 10.0,
    ack_timeout_s: float = 30.0,
    device_ids: Sequence[str] | None = None,
    settings_for: Callable[[str], MqttSettings] | None = None,
) -> SimulationReport:
    """Publish ``n_devices`` simulated machines to a broker and report what was sent.

    Parameters:
      broker_url     ``mqtt://[user:pass@]host[:port]`` / ``mqtts://...`` or a full MqttSettings.
      n_devices      devices ``dev-000`` .. ``dev-{n-1}`` (or ``device_ids``).
      rate_hz        readings per second *per device*, all sensors together (aggregate
                     rate = rate_hz * n_devices); None = real time (16.625/s with both
                     sensors: 1000/64 vibration chunks + 1 temperature); 0 = flat out.
      count          readings per device (all sensors), then stop: exactly
                     ``count * n_devices`` messages unless interrupted or refused.
      duration_s     seconds on the ts timeline, then stop (wall seconds when paced).
                     With neither count nor duration_s: run until ``stop`` is set.
      seed           makes the data reproducible (ts aside: it follows the wall clock).
      anomaly_rate   probability that a healthy device starts a fault at a vibration
                     reading; faults last 0.5-2 s (see edgeloop.devices.simulator).
      drift_at_s     seconds after the start when every device changes regime for good.
      qos            0, 1 or 2; with 1/2 the run waits up to ``ack_timeout_s`` for acks.
      truth_path     optional JSON-lines ground truth: a ``run`` header, one ``fault`` line
                     per labelled reading (device, sensor, seq, ts), a ``drift`` line.
      stop           threading.Event: set it to end the run early (report.interrupted).
      sensors        subset of ("vibration", "temperature").
      client_id      MQTT client id (default: unique per process); with ``settings_for``, the
                     prefix of each device's ``{client_id}-{device}``.
      device_ids     the devices' ids (topic level; their certificate CN under mutual TLS)
                     instead of ``dev-000`` ..: one per device, in order, unique.
      settings_for   device id -> the MQTT settings of that device's own connection (mutual
                     TLS: the broker's ACL pins each identity to its own topics, so each
                     device publishes as itself). Default: one connection for all.
    Raises ValueError for bad arguments, edgeloop.errors.TransientError when the
    broker cannot be reached within ``connect_timeout_s``.
    """
    if qos not in (0, 1, 2):
        raise ValueError(f"qos value must be 0, 1, or 2: {qos}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration_s is not None and duration_s < 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s}")
    if rate_hz is not None and not 0 <= rate_hz <= MAX_RATE_HZ:
        raise ValueError(
            f"rate_hz must be within 0..{MAX_RATE_HZ:g} (0 = as fast as possible), got {rate_hz}"
        )
    settings = broker_url if isinstance(broker_url, MqttSettings) else MqttSettings(url=broker_url)
    ids = [check_level(d, "device id") for d in device_ids] if device_ids is not None else None
    if ids is not None and len(ids) != n_devices:
        raise ValueError(f"{len(ids)} device ids for {n_devices} devices")
    if ids is not None and len(set(ids)) != len(ids):
        raise ValueError(f"device ids must be unique, got {ids}")

    natural = FleetSimulator(1, seed=seed, sensors=sensors).readings_per_s
    paced = rate_hz != 0
    scale = natural / rate_hz if rate_hz else 1.0
    # Built (and so validated) before any connection opens; start_ts is set when publishing begins.
    sim = FleetSimulator(
        n_devices,
        seed,
        anomaly_rate,
        None if drift_at_s is None else drift_at_s / scale,
        time_scale=scale,
        sensors=sensors,
    )

    rename = dict(zip((d.device for d in sim.devices), ids)) if ids is not None else {}
    published = [rename.get(d.device, d.device) for d in sim.devices]
    base_id = client_id or f"edgeloop-sim-{os.getpid()}-{seed}"
    links: dict[str | None, MqttLink] = {}
    truth: IO[str] | None = None
    try:
        # Every link connects before the first reading goes out (a refused identity fails the run here).
        if settings_for is None:
            links[None] = MqttLink(settings, base_id)
        else:
            links.update((d, MqttLink(settings_for(d), f"{base_id}-{d}")) for d in published)
        for link in links.values():
            link.start(wait_s=connect_timeout_s)
        start_wall = time.time()
        start_mono = time.monotonic()
        sim.start_ts = start_wall
        report = SimulationReport(
            n_devices=n_devices,
            seed=seed,
            rate_hz=natural if rate_hz is None else rate_hz,
            time_scale=scale,
            start_ts=start_wall,
            qos=qos,
            sent={d: {s: 0 for s in sim.sensors} for d in published},
            truth_path=str(truth_path) if truth_path else None,
        )
        if drift_at_s is not None:
            report.drift_ts = start_wall + drift_at_s
        if truth_path:
            truth = open(truth_path, "w", encoding="utf-8")  # noqa: SIM115 -- closed in finally
            header = {
                "kind": "run",
                "seed": seed,
                "devices": n_devices,
                "anomaly_rate": anomaly_rate,
                "drift_ts": report.drift_ts,
                "start_ts": start_wall,
                "time_scale": scale,
                "sensors": list(sim.sensors),
            }
            truth.write(json.dumps(header) + "\n")
        _publish_loop(
            sim, links, rename, report, qos, paced, start_mono, count, duration_s, stop, truth, ack_timeout_s
        )
    finally:
        if truth is not None:
            truth.close()
        for link in links.values():
            link.stop()
    log.info(
        "simulation sent %d readings from %d devices in %.1fs (%d failed, %d fault readings)",
        report.total_sent,
        n_devices,
        report.elapsed_s,
        report.failed,
        report.fault_readings,
    )
    return report


def _publish_loop(
    sim: FleetSimulator,
    links: dict[str | None, MqttLink],
    rename: dict[str, str],
    report: SimulationReport,
    qos: int,
    paced: bool,
    start_mono: float,
    count: int | None,
    duration_s: float | None,
    stop: threading.Event | None,
    truth: IO[str] | None,
    ack_timeout_s: float,
) -> None:
    scale = sim.time_scale
    sim_duration = None if duration_s is None else duration_s / scale
    per_device: Counter[str] = Counter()
    devices_done = 0
    drift_written = sim.drift_at_s is None
    # simulator topic -> (device id, sensor, topic published, its device's link)
    routes: dict[str, tuple[str, str, str, MqttLink]] = {}
    pending: list[Publication] = []
    last: dict[MqttLink, Publication] = {}

    if count == 0 or sim_duration == 0:
        report.elapsed_s = 0.0
        return
    for topic, reading in sim.readings(duration_s=sim_duration):
        if stop is not None and stop.is_set():
            report.interrupted = True
            break
        route = routes.get(topic)
        if route is None:
            sim_device, sensor = parse_sensor_topic(topic)
            device = rename.get(sim_device, sim_device)
            route = routes[topic] = (device, sensor, sensor_topic(device, sensor), links.get(device) or links[None])
        device, sensor, out_topic, link = route
        if count is not None and per_device[device] >= count:
            continue
        offset = reading.ts - report.start_ts
        if paced:
            lag = time.monotonic() - start_mono - offset
            if lag < 0:
                if stop is not None:
                    if stop.wait(-lag):
                        report.interrupted = True
                        break
                else:
                    time.sleep(-lag)
            elif lag > report.max_lag_s:
                report.max_lag_s = lag
        info = link.publish(out_topic, reading.model_dump_json(), qos=qos)
        if info.error is not None:
            report.failed += 1
            continue
        last[link] = info
        if qos:
            pending.append(info)
        report.sent[device][sensor] += 1
        if not drift_written and offset >= report.drift_ts - report.start_ts:
            drift_written = True
            if truth is not None:
                truth.write(json.dumps({"kind": "drift", "ts": report.drift_ts}) + "\n")
        if reading.label == FAULT_LABEL:
            report.fault_readings += 1
            if sensor == VIBRATION:
                report.faults.append((device, reading.seq))
            if truth is not None:
                line = {
                    "kind": "fault",
                    "device": device,
                    "sensor": sensor,
                    "seq": reading.seq,
                    "ts": reading.ts,
                }
                truth.write(json.dumps(line) + "\n")
        if count is not None:
            per_device[device] += 1
            if per_device[device] == count:
                devices_done += 1
                if devices_done == sim.n_devices:
                    break
    report.elapsed_s = time.monotonic() - start_mono
    if qos:
        report.acknowledged = wait_for_all(pending, ack_timeout_s)
    else:
        for info in last.values():  # QoS 0 messages are written in order: when a link's last left, all have
            info.wait(ack_timeout_s)


def simulate_climate(
    broker_url: str | MqttSettings = "mqtt://127.0.0.1:1883",
    fmt: str = "zigbee2mqtt",
    n_devices: int = 3,
    count: int | None = None,
    rate_hz: float | None = None,
    seed: int = 1,
    anomaly_rate: float = 0.0,
    qos: int = 0,
    stop: threading.Event | None = None,
    *,
    device_ids: Sequence[str] | None = None,
    client_id: str | None = None,
    connect_timeout_s: float = 10.0,
    ack_timeout_s: float = 30.0,
) -> SimulationReport:
    """Publish simulated room climate sensors (edgeloop.devices.climate) in a device format
    (edgeloop.devices.payloads: zigbee2mqtt, tasmota, senml, influx).

    One message per reading. ``rate_hz`` is messages per second per device: None = real time (one per
    30 s, ``ts`` = wall clock); 0 = flat out, a backfill whose readings are 30 s apart and end now (so
    ``count`` is needed); otherwise paced at that rate with ``ts`` still 30 s apart, ending in the future.
    ``device_ids`` replaces the format's default names (``living_room``, ``tasmota_1A2B3C``, ...).
    """
    from edgeloop.devices.climate import ClimateSimulator, climate_device_names
    from edgeloop.devices.payloads import FORMATS, climate_message, device_names

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos value must be 0, 1, or 2: {qos}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if rate_hz is not None and not 0 <= rate_hz <= MAX_RATE_HZ:
        raise ValueError(f"rate_hz must be within 0..{MAX_RATE_HZ:g} (0 = as fast as possible), got {rate_hz}")
    if rate_hz == 0 and count is None:
        raise ValueError("rate 0 (flat out) needs a count")
    rooms = climate_device_names(n_devices)
    names = [check_level(d, "device id") for d in device_ids] if device_ids is not None else device_names(fmt, rooms)
    if len(names) != n_devices or len(set(names)) != n_devices:
        raise ValueError(f"{n_devices} unique device ids needed, got {names}")
    settings = broker_url if isinstance(broker_url, MqttSettings) else MqttSettings(url=broker_url)
    sim = ClimateSimulator(n_devices, seed, anomaly_rate, names=names)
    interval = sim.interval_s
    period = interval if rate_hz is None else (1.0 / rate_hz if rate_hz else 0.0)
    link = MqttLink(settings, client_id or f"edgeloop-climate-{os.getpid()}-{seed}")
    link.start(wait_s=connect_timeout_s)
    start_wall, start_mono = time.time(), time.monotonic()
    first_ts = start_wall - interval * (count - 1) if rate_hz == 0 else start_wall
    report = SimulationReport(n_devices=n_devices, seed=seed, rate_hz=1.0 / interval if rate_hz is None else rate_hz,
                              time_scale=interval / period if period else 1.0, start_ts=first_ts, qos=qos,
                              sent={d: {"climate": 0} for d in names})
    pending: list[Publication] = []
    last: Publication | None = None
    try:
        k = 0
        while count is None or k < count:
            block = [sim.block(i, k, 1) for i in range(n_devices)]
            if period:
                wait = start_mono + k * period - time.monotonic()
                if wait > 0 and (stop.wait(wait) if stop is not None else time.sleep(wait)):
                    report.interrupted = True
                    break
            if stop is not None and stop.is_set():
                report.interrupted = True
                break
            ts = first_ts + k * interval
            for i, b in enumerate(block):
                v = b.values[0]
                topic, payload = climate_message(fmt, names[i], rooms[i], k, ts,
                                                 (float(v[0]), float(v[1]), float(v[2])))
                info = link.publish(topic, payload, qos=qos)
                if info.error is not None:
                    report.failed += 1
                    continue
                last = info
                if qos:
                    pending.append(info)
                report.sent[names[i]]["climate"] += 1
                if b.fault[0]:
                    report.fault_readings += 1
                    report.faults.append((names[i], k))
            k += 1
        report.elapsed_s = time.monotonic() - start_mono
        if qos:
            report.acknowledged = wait_for_all(pending, ack_timeout_s)
        elif last is not None:
            last.wait(ack_timeout_s)
    finally:
        link.stop()
    return report
