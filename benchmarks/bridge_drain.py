"""(e) Backlog drain, process against process: the bridge, its limits and Telegraf on the same queue.

What a user sees when a bridge comes back to a backlog: mosquitto has queued N
QoS 1 result messages (edgeloop's InferenceResult JSON, 100 devices) for the
subscriber's offline persistent session; the subscriber process is started and
the clock runs from its spawn (start-up included) until every point is in
influxd 1.x (the subscriber's own database, counted back by polling it). CPU
is utime+stime of the process from /proc, peak RSS its ``VmHWM``.

Subscribers, alternating, ``--runs`` each (default 3; 1 with ``--quick``):

- ``paho``: the MQTT limit, a bare paho process (MQTT v5, as the bridge) that
  acknowledges every message and writes nothing (clock until it received N);
  ``paho_v311`` the same on MQTT 3.1.1 (1 result/message), to show what v5
  costs per message;
- ``bridge``: ``edgeloop bridge run`` (one process, default config);
- ``bridge x2``: two bridge processes in one ``share_group`` (``$share``);
- ``telegraf``: the peer, when ``EDGELOOP_PEER_TELEGRAF`` names its binary
  (configured as ``../shared/peers/README.md`` says: json_v2, 2 tags from the
  topic, 2 from the JSON, 5 fields, ``max_undelivered_messages`` 10,000;
  1 result/message only, its json_v2 config here reads one object per message).

The database limit beside it is the bare write loop of ``benchmarks.bridge``
(the same points, pre-encoded, urllib3, 5,000 lines a request).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bridge import MODEL, result  # the same result rows as the in-process bridge benchmark
from benchmarks.harness import bench_broker
from lab.procs import cpu_seconds, peak_rss_mb
from lab.servers import InfluxDB1

DEVICES = 100
TELEGRAF_ENV = "EDGELOOP_PEER_TELEGRAF"
POLL_S = 0.02
#: Points per drain and runs per subscriber, to trade precision for time on a busy machine (the report says which).
POINTS_ENV = "EDGELOOP_BENCH_DRAIN_POINTS"
RUNS_ENV = "EDGELOOP_BENCH_DRAIN_RUNS"


def messages(n_points: int, per_msg: int, base_ts: float) -> list[tuple[str, bytes]]:
    """``n_points`` results of DEVICES devices, interleaved by device, ``per_msg`` per message."""
    per_device = n_points // DEVICES
    out = []
    for i in range(0, per_device, per_msg):
        for d in range(DEVICES):
            device = f"dev-{d:03d}"
            rows = [result(device, s, base_ts + s * 0.064) for s in range(i, min(per_device, i + per_msg))]
            out.append((f"results/{device}/{MODEL}", json.dumps(rows[0] if per_msg == 1 else rows).encode()))
    return out


# ------------------------------------------------------------------ sessions and the prefill


def make_session(broker, client_id: str, topic: str, v5: bool = True) -> None:  # noqa: ANN001
    """A persistent session subscribed to ``topic`` at QoS 1, then offline: the broker queues for it."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    if v5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        kwargs = {"clean_start": False, "properties": props}
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                             clean_session=False)
        kwargs = {}
    done = threading.Event()
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.on_subscribe = lambda *_a: done.set()
    client.connect(broker.host, broker.port, **kwargs)
    client.loop_start()
    if not done.wait(10):
        raise RuntimeError(f"session {client_id}: no SUBACK")
    client.disconnect()
    client.loop_stop()


def prefill(broker, msgs: list[tuple[str, bytes]]) -> None:  # noqa: ANN001
    from lab.mqtt import close, connect, publish_all

    client = connect(broker.port, host=broker.host, client_id=f"drain-prefill-{time.monotonic_ns()}")
    try:
        publish_all(client, msgs, timeout=120)
    finally:
        close(client)


# ------------------------------------------------------------------ the measured processes


#: The MQTT limit as a process: resume the session, let paho ack each message on receipt, count to N,
#: print the finish time, wait for stdin to close (the parent reads /proc first). Run with ``python -c``
#: so that it imports paho and nothing else: its start-up and CPU are paho's, not this harness's.
PAHO_CHILD = r"""
import json, sys, threading, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
host, port, client_id, n, v5 = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "5"
if v5:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    kwargs = {"clean_start": False, "properties": props}
else:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                         clean_session=False)
    kwargs = {}
count, first, done = [0], [], threading.Event()
def on_message(_c, _u, _m):
    if not first:
        first.append(time.time())
    count[0] += 1
    if count[0] >= n:
        done.set()
client.on_message = on_message
client.connect(host, port, **kwargs)
client.loop_start()
done.wait(600)
print(json.dumps({"t_done": time.time(), "t_first": first[0] if first else None, "received": count[0]}), flush=True)
sys.stdin.readline()
client.disconnect()
client.loop_stop()
"""


def _influx_count(influx: InfluxDB1, db: str) -> int:
    rows = influx.points("SELECT count(score) FROM inference", db)
    return int(rows[0]["count"]) if rows else 0


def _measure(procs: list[subprocess.Popen], t_spawn: float, count, n: int, timeout: float) -> dict:  # noqa: ANN001
    """Poll ``count()`` until it reaches ``n``, then read CPU and peak RSS of ``procs``. ``first_s``: from
    spawn to the first point stored (start-up, connect and one write; for the paho limit: its first message)."""
    deadline = time.monotonic() + timeout
    t_done = t_first = None
    got = 0
    while t_done is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"drain did not finish in {timeout:.0f}s: {got:,} of {n:,} points stored")
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"subscriber exited early (rc {p.returncode})")
        got, now = count(), time.time()
        if got and t_first is None:
            t_first = now
        if got >= n:
            t_done = now
        else:
            time.sleep(POLL_S)
    cpu = sum(cpu_seconds(p.pid) for p in procs)
    rss = [peak_rss_mb(p.pid) for p in procs]
    return {"elapsed_s": t_done - t_spawn, "first_s": t_first - t_spawn, "cpu_s": cpu, "peak_rss_mib": max(rss),
            "processes": len(procs)}


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def run_paho(broker, workdir: Path, msgs: list, tag: str, v5: bool = True) -> dict:  # noqa: ANN001
    cid = f"drain-paho{'' if v5 else '311'}-{tag}"
    make_session(broker, cid, "results/+/+", v5=v5)
    prefill(broker, msgs)
    log = open(workdir / f"{cid}.log", "w")
    t_spawn = time.time()
    p = subprocess.Popen([sys.executable, "-c", PAHO_CHILD, broker.host, str(broker.port), cid, str(len(msgs)),
                          "5" if v5 else "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"paho drain exited: {(workdir / f'{cid}.log').read_text()[-2000:]}")
        info = json.loads(line)
        out = {"elapsed_s": info["t_done"] - t_spawn, "first_s": (info["t_first"] or info["t_done"]) - t_spawn,
               "cpu_s": cpu_seconds(p.pid), "peak_rss_mib": peak_rss_mb(p.pid), "processes": 1}
    finally:
        p.stdin.close()
        _stop([p])
        log.close()
    return out


def bridge_config(broker, influx: InfluxDB1, db: str, client_id: str, extra: dict | None = None) -> dict:  # noqa: ANN001
    from lab.configs import SYNTHETIC_RESULTS

    return {"node_id": client_id, "mqtt": {"url": broker.url, "client_id": client_id},
            "subscribe": ["results/+/+"], "max_payload_bytes": 1 << 20,
            "influx": {"api": "v1", "url": influx.url, "db": db}, **SYNTHETIC_RESULTS, **(extra or {})}


def run_bridge(broker, influx: InfluxDB1, workdir: Path, msgs: list, n_points: int, tag: str,  # noqa: ANN001
               replicas: int = 1, tree: Path | None = None) -> dict:
    """``replicas`` bridge processes (a ``$share`` group when more than one); ``tree``: run the edgeloop
    found there instead of this one (a checkout of another commit laid out as installed, for A/B runs)."""
    db = f"drain_bridge{replicas}_{tag}".replace("-", "_")
    influx.create_database(db)
    share = {"share_group": f"g{tag}"} if replicas > 1 else {}
    configs = []
    for i in range(replicas):
        cid = f"drain-bridge{replicas}-{tag}-{i}"
        cfg = bridge_config(broker, influx, db, cid, share)
        path = workdir / f"{cid}.yaml"
        path.write_text(json.dumps(cfg))  # YAML is a superset of JSON
        from edgeloop.bridge import BridgeConfig

        topic = BridgeConfig.model_validate(cfg).topic_filters[0]
        make_session(broker, cid, topic)
        configs.append((cid, path))
    prefill(broker, msgs)
    logs = [open(workdir / f"{cid}.log", "w") for cid, _ in configs]
    t_spawn = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "edgeloop.cli", "bridge", "run", "-c", str(path)],
                              stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                              cwd=tree or Path(__file__).resolve().parents[1]) for (_, path), log in zip(configs, logs)]
    try:
        out = _measure(procs, t_spawn, lambda: _influx_count(influx, db), n_points, 120)
    finally:
        _stop(procs)
        for log in logs:
            log.close()
    return out


TELEGRAF_CONF = """
[agent]
  interval = "10s"
  flush_interval = "1s"
  metric_batch_size = 5000
  metric_buffer_limit = 100000
  omit_hostname = true
  quiet = true

[[inputs.mqtt_consumer]]
  servers = ["tcp://{host}:{port}"]
  topics = ["results/+/+"]
  qos = 1
  client_id = "{client_id}"
  persistent_session = true
  max_undelivered_messages = 10000
  data_format = "json_v2"
  [[inputs.mqtt_consumer.topic_parsing]]
    topic = "results/+/+"
    tags = "_/device/model"
  [[inputs.mqtt_consumer.json_v2]]
    measurement_name = "inference"
    timestamp_path = "ts"
    timestamp_format = "unix"
    [[inputs.mqtt_consumer.json_v2.tag]]
      path = "sensor"
    [[inputs.mqtt_consumer.json_v2.tag]]
      path = "model_version"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "score"
      type = "float"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "anomaly"
      type = "bool"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "label"
      type = "string"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "latency_ms"
      type = "float"
    [[inputs.mqtt_consumer.json_v2.field]]
      path = "seq"
      type = "int"

[[outputs.influxdb]]
  urls = ["{influx_url}"]
  database = "{db}"
  skip_database_creation = true
"""


def run_telegraf(binary: str, broker, influx: InfluxDB1, workdir: Path, msgs: list, n_points: int,  # noqa: ANN001
                 tag: str) -> dict:
    db = f"drain_telegraf_{tag}".replace("-", "_")
    cid = f"drain-telegraf-{tag}"
    influx.create_database(db)
    conf = workdir / f"{cid}.conf"
    conf.write_text(TELEGRAF_CONF.format(host=broker.host, port=broker.port, client_id=cid, influx_url=influx.url,
                                         db=db))
    make_session(broker, cid, "results/+/+", v5=False)  # Telegraf speaks MQTT 3.1.1, clean session off
    prefill(broker, msgs)
    log = open(workdir / f"{cid}.log", "w")
    t_spawn = time.time()
    p = subprocess.Popen([binary, "--config", str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        out = _measure([p], t_spawn, lambda: _influx_count(influx, db), n_points, 120)
    finally:
        _stop([p])
        log.close()
    return out


def _figures(raw: dict, n_msgs: int, n_points: int) -> dict:
    return {"msg_per_s": round(n_msgs / raw["elapsed_s"], 1), "points_per_s": round(n_points / raw["elapsed_s"], 1),
            "cpu_us_per_msg": round(raw["cpu_s"] / n_msgs * 1e6, 1), "peak_rss_mib": round(raw["peak_rss_mib"], 1),
            "elapsed_s": round(raw["elapsed_s"], 3), "processes": raw["processes"],
            **({"first_point_s": round(raw["first_s"], 3)} if "first_s" in raw else {})}


def run(workdir: Path, quick: bool, runs: int | None = None, n_points: int | None = None,
        per_msgs: tuple[int, ...] = (1, 100)) -> dict:
    """Alternating runs of every subscriber; the median of each figure is what the report shows."""
    from benchmarks.bridge import bare_sink

    n = n_points or int(os.environ.get(POINTS_ENV, 0)) or (5_000 if quick else 50_000)
    runs = runs or int(os.environ.get(RUNS_ENV, 0)) or (1 if quick else 3)
    telegraf = os.environ.get(TELEGRAF_ENV) or None
    out: dict = {"points": n, "runs": runs, "devices": DEVICES,
                 "telegraf": telegraf or f"skipped: set {TELEGRAF_ENV} to a telegraf binary"}
    if telegraf is None:
        print(f"[bench] bridge_drain: Telegraf row skipped ({TELEGRAF_ENV} not set)", file=sys.stderr, flush=True)
    workdir = workdir / "bridge_drain"
    workdir.mkdir(parents=True, exist_ok=True)
    slices = iter(range(10_000))
    start = time.time() - 24 * 3600

    def fresh() -> float:
        return start + 1000.0 * next(slices)

    with bench_broker(workdir / "broker") as broker, InfluxDB1(workdir / "influxd") as influx:
        influx.create_database("bench")
        out["bare_write_points_per_s"] = [round(bare_sink("v1", influx.url, n, fresh()), 1) for _ in range(runs)]
        for per_msg in per_msgs:
            key = f"{per_msg}_per_msg"
            res: dict = {"paho": [], "paho_v311": [], "bridge": [], "bridge_x2": [], "telegraf": []}
            for r in range(runs):
                tag = f"{per_msg}-{r}"
                subs = ["paho", "bridge", "bridge_x2"] + (["paho_v311"] if per_msg == 1 else []) + (
                    ["telegraf"] if telegraf and per_msg == 1 else [])
                if r % 2:
                    subs.reverse()  # alternate the order between runs
                for sub in subs:
                    print(f"[bench] bridge_drain: {sub}, {per_msg} result(s)/msg, run {r + 1}/{runs}",
                          file=sys.stderr, flush=True)
                    msgs = messages(n, per_msg, fresh())
                    try:
                        raw = _one(sub, broker, influx, workdir, msgs, n, tag, telegraf)
                    except (TimeoutError, RuntimeError) as exc:
                        # One failed run is a finding, not the end of the section: it is reported with
                        # what it reached (benchmarks/report.py), and the medians use the other runs.
                        print(f"[bench] bridge_drain: {sub} run {r + 1} failed: {exc}", file=sys.stderr, flush=True)
                        out.setdefault("failed_runs", []).append({"subscriber": sub, "per_msg": per_msg, "run": r + 1,
                                                                  "error": str(exc).splitlines()[0]})
                        continue
                    res[sub].append(_figures(raw, len(msgs), n))
            out[key] = {k: v for k, v in res.items() if v}
    return out


def _one(sub: str, broker, influx: InfluxDB1, workdir: Path, msgs: list, n: int, tag: str,  # noqa: ANN001
         telegraf: str | None) -> dict:
    """One drain of ``msgs`` by subscriber ``sub``: its raw figures."""
    if sub in ("paho", "paho_v311"):
        return run_paho(broker, workdir, msgs, tag, v5=sub == "paho")
    if sub == "bridge":
        return run_bridge(broker, influx, workdir, msgs, n, tag)
    if sub == "bridge_x2":
        return run_bridge(broker, influx, workdir, msgs, n, tag, replicas=2)
    return run_telegraf(telegraf, broker, influx, workdir, msgs, n, tag)


if __name__ == "__main__":  # python -m benchmarks.bridge_drain [N] [RUNS]: this measurement alone, JSON on stdout
    import tempfile

    n_arg = int(sys.argv[1]) if len(sys.argv) > 1 else None
    runs_arg = int(sys.argv[2]) if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory(prefix="edgeloop-drain-") as d:
        print(json.dumps(run(Path(d), False, runs_arg, n_arg), indent=1))
