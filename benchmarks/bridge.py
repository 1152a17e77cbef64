"""(d) The cloud bridge: points/s into a real influxd 1.x (v1 /write) and VictoriaMetrics (v2 API).

Method: the bridge's persistent MQTT session (its default) is created by one
start/stop, then the broker is pre-filled with N results at QoS 1 while the
bridge is away; the clock runs from the next ``Bridge.start()`` until
``points_written`` reaches N. So the figure is the bridge's own drain rate,
not a publisher's. Two payload shapes: one result per message (what the
edge sends by default) and arrays of 100 (``output.batch_results: true``).

Beside it, in the same run:
- limits: a bare paho QoS 1 subscriber draining the same pre-filled session
  (MQTT side), and a bare write loop of pre-encoded lines, 5,000 per request,
  with urllib3 (v1) and influxdb-client (v2) (database side);
- naive baseline: one paho ``on_message`` doing json.loads -> influxdb-client
  ``Point`` -> a synchronous write every 5,000 points, no validation.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.harness import bench_broker
from lab.configs import SYNTHETIC_RESULTS
from lab.mqtt import close, connect, publish_all
from lab.servers import InfluxDB1, VictoriaMetrics, eventually

SHA = "ab" * 32
BATCH = 5000
DEVICES = 10
MODEL = "vibration_ae"


def result(device: str, seq: int, ts: float) -> dict:
    """An InferenceResult as the edge publishes it (one-output autoencoder)."""
    score = (seq % 97) / 97.0
    return {"v": 1, "device": device, "sensor": "vibration", "model": MODEL, "model_version": "1.0.0",
            "model_sha256": SHA, "ts": round(ts, 6), "seq": seq, "outputs": [score], "score": score,
            "anomaly": score > 0.8, "label": "anomaly" if score > 0.8 else "normal", "latency_ms": 1.25,
            "node": "bench-edge"}


def messages(n_points: int, per_msg: int, base_ts: float) -> list[tuple[str, bytes]]:
    """``n_points`` results over DEVICES devices, ``per_msg`` per message (an array when > 1)."""
    out = []
    per_device = n_points // DEVICES
    for d in range(DEVICES):
        device = f"dev-{d:03d}"
        rows = [result(device, s, base_ts + s * 0.064) for s in range(per_device)]
        topic = f"results/{device}/{MODEL}"
        for i in range(0, per_device, per_msg):
            chunk = rows[i : i + per_msg]
            out.append((topic, json.dumps(chunk[0] if per_msg == 1 else chunk).encode()))
    return out


def prefill(broker, msgs: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 and wait for every PUBACK: then the broker has queued all of it for the session."""
    client = connect(broker.port, host=broker.host, client_id=f"bench-prefill-{time.monotonic_ns()}")
    try:
        publish_all(client, msgs, timeout=60)
    finally:
        close(client)


# ------------------------------------------------------------------ limits


def _session(broker, cid: str, on_message) -> paho.Client:  # noqa: ANN001
    """Bare paho on persistent session ``cid``, subscribed to results/+/+ at QoS 1, ready to receive."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=paho.MQTTv5)
    subscribed = threading.Event()
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.on_connect = lambda c, _u, flags, *_a: (c.subscribe("results/+/+", qos=1) if not flags.session_present
                                                    else subscribed.set())
    client.connect(broker.host, broker.port, clean_start=False, properties=props)
    client.loop_start()
    subscribed.wait(10)
    return client


def timed_drain(broker, prefix: str, on_message, msgs: list[tuple[str, bytes]], done: threading.Event,  # noqa: ANN001
                timeout_s: float) -> float:
    """Seconds from reconnecting a persistent session, for which the broker queued ``msgs`` while it was
    away, until ``done`` is set (by ``on_message``)."""
    cid = f"{prefix}-{time.monotonic_ns()}"
    close(_session(broker, cid, on_message))  # creates the session the broker queues for
    prefill(broker, msgs)
    t0 = time.perf_counter()
    client = _session(broker, cid, on_message)
    done.wait(timeout_s)
    elapsed = time.perf_counter() - t0
    close(client)
    return elapsed


def bare_receive(broker, msgs: list[tuple[str, bytes]]) -> float:
    """Messages/s of a paho QoS 1 subscriber that only counts, draining a pre-filled persistent session."""
    n = len(msgs)
    state = {"n": 0}
    done = threading.Event()

    def on_message(_c, _u, _m) -> None:  # noqa: ANN001
        state["n"] += 1
        if state["n"] >= n:
            done.set()

    elapsed = timed_drain(broker, "bare-bridge", on_message, msgs, done, 300)
    return state["n"] / elapsed


class BareWriter:
    """The database alone: POST pre-encoded line protocol, nothing else."""

    def __init__(self, api: str, url: str) -> None:
        self.api = api
        if api == "v1":
            self.http = urllib3.PoolManager()
            self.url = f"{url}/write?db=bench&precision=ns"
        else:
            from influxdb_client import InfluxDBClient
            from influxdb_client.client.write_api import SYNCHRONOUS

            self.client = InfluxDBClient(url=url, token="bench", org="bench")
            self.write_api = self.client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        body = "\n".join(lines).encode()
        if self.api == "v1":
            resp = self.http.request("POST", self.url, body=body)
            if resp.status != 204:
                raise RuntimeError(f"influxd answered {resp.status}: {resp.data[:200]!r}")
        else:
            self.write_api.write(bucket="bench", org="bench", record=body)

    def close(self) -> None:
        if self.api == "v2":
            self.client.close()


def bare_sink(api: str, url: str, n_points: int, base_ts: float) -> float:
    from edgeloop.bridge.config import InfluxSettings
    from edgeloop.bridge.schema import LineEncoder
    from edgeloop.contract import InferenceResult

    enc = LineEncoder(InfluxSettings(api=api, url=url, db="bench", bucket="bench", org="bench"))
    lines = [enc.result(InferenceResult.model_validate(result(f"dev-{i % DEVICES:03d}", i, base_ts + i * 0.001)))
             for i in range(n_points)]
    writer = BareWriter(api, url)
    writer.write(lines[:10])
    t0 = time.perf_counter()
    for i in range(0, n_points, BATCH):
        writer.write(lines[i : i + BATCH])
    elapsed = time.perf_counter() - t0
    writer.close()
    return n_points / elapsed


# ------------------------------------------------------------------ naive baseline


def naive_bridge(broker, api: str, url: str, msgs: list[tuple[str, bytes]], n_points: int) -> float:
    """One paho client, everything in on_message: json.loads -> Point -> synchronous write per 5,000."""
    from influxdb_client import Point, WritePrecision

    writer = BareWriter(api, url)
    pending: list[str] = []
    state = {"written": 0}
    done = threading.Event()

    def on_message(_c, _u, msg) -> None:  # noqa: ANN001
        data = json.loads(msg.payload)
        for r in data if isinstance(data, list) else [data]:
            p = (Point("inference").tag("device", r["device"]).tag("sensor", r["sensor"]).tag("model", r["model"])
                 .tag("model_version", r["model_version"]).tag("node", r["node"])
                 .field("score", float(r["score"])).field("anomaly", r["anomaly"]).field("label", r["label"])
                 .field("latency_ms", float(r["latency_ms"])).field("seq", r["seq"])
                 .field("model_sha256", r["model_sha256"]).field("out_0", float(r["outputs"][0]))
                 .time(round(r["ts"] * 1e6) * 1000, WritePrecision.NS))
            pending.append(p.to_line_protocol())
        if len(pending) >= BATCH or state["written"] + len(pending) >= n_points:
            writer.write(pending)
            state["written"] += len(pending)
            pending.clear()
            if state["written"] >= n_points:
                done.set()

    elapsed = timed_drain(broker, "naive-bridge", on_message, msgs, done, 600)
    writer.close()
    return state["written"] / elapsed


# ------------------------------------------------------------------ the product


def stored_points(server, t0: float, t1: float) -> int:
    """Points of measurement ``inference`` with device time in [t0, t1) that the database returns."""
    if isinstance(server, InfluxDB1):
        rows = server.points(f"SELECT count(score) FROM inference WHERE time >= {int(t0)}s AND time < {int(t1)}s", "bench")
        return int(rows[0]["count"]) if rows else 0
    series = server.export('{__name__="inference_score"}')
    lo, hi = (t0 - 1.0) * 1000, t1 * 1000  # VictoriaMetrics keeps milliseconds: widen by a second, not less
    return sum(1 for s in series for ms in s["timestamps"] if lo <= ms < hi)


def product_bridge(broker, influx_cfg: dict, msgs: list[tuple[str, bytes]], n_points: int, name: str) -> dict:
    from edgeloop.bridge import Bridge, BridgeConfig

    cfg = BridgeConfig.model_validate({
        "node_id": f"bench-bridge-{name}",
        "mqtt": {"url": broker.url},
        "subscribe": ["results/+/+"],
        "max_payload_bytes": 1 << 20,
        "influx": influx_cfg,
        **SYNTHETIC_RESULTS,  # no edge announces the bench's model version
    })
    # First start creates the persistent session (the bridge's default), so the broker queues for it.
    first = Bridge(cfg)
    first.start(10)
    first.stop()
    prefill(broker, msgs)
    bridge = Bridge(cfg)
    t0 = time.perf_counter()
    bridge.start(10)
    try:
        eventually(lambda: bridge.stats()["points_written"] >= n_points, timeout=600, interval=0.005,
                   message=f"bridge {name} did not write {n_points} points")
        elapsed = time.perf_counter() - t0
        stats = bridge.stats()
    finally:
        bridge.stop()
    return {"points_per_s": round(n_points / elapsed, 1), "batches": stats["batches"],
            "rejected": sum(stats["rejected"].values()), "write_errors": stats["write_errors"]}


def run(workdir: Path, quick: bool) -> dict:
    n = BATCH if quick else 50_000  # quick: one full batch, so no flush-interval wait dominates
    out: dict = {"points": n, "batch_lines": BATCH}
    # Every data set gets its own 1,000 s slice of time, all within the last day: no run overwrites
    # another's points, and nothing is too old or in the future for either database.
    slices = iter(range(1000))
    start = time.time() - 24 * 3600

    def fresh() -> float:
        return start + 1000.0 * next(slices)

    with bench_broker(workdir / "bridge") as broker, InfluxDB1(workdir / "influxd") as influx, \
            VictoriaMetrics(workdir / "victoria") as vm:
        influx.create_database("bench")
        servers = {"influxdb_v1": influx, "victoriametrics_v2": vm}
        targets = {
            "influxdb_v1": {"api": "v1", "url": influx.url, "db": "bench"},
            "victoriametrics_v2": {"api": "v2", "url": vm.url, "bucket": "bench", "org": "bench", "token": "bench"},
        }
        for name, cfg in targets.items():
            out[name] = {"sink_alone_points_per_s": round(bare_sink(cfg["api"], cfg["url"], n, fresh()), 1)}
        for per_msg in (1, 100):
            key = f"{per_msg}_per_msg"
            drain = bare_receive(broker, messages(n, per_msg, fresh()))
            out[f"bare_paho_qos1_{key}_points_per_s"] = round(drain * per_msg, 1)
            for name, cfg in targets.items():
                t0 = fresh()
                run = product_bridge(broker, cfg, messages(n, per_msg, t0), n, f"{name}-{per_msg}")
                run["stored"] = stored_points(servers[name], t0, t0 + 1000.0)
                out[name][f"bridge_{key}"] = run
                out[name][f"naive_{key}_points_per_s"] = round(
                    naive_bridge(broker, cfg["api"], cfg["url"], messages(n, per_msg, fresh()), n), 1)
    return out
