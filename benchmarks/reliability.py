"""``python -m benchmarks.reliability`` (``make reliability``): the reliability table.

Each scenario of tests/integration/test_reliability.py again, at a larger scale
(10 devices, thousands of readings, the outages the issue names: InfluxDB down
30 s, a network outage of 20 s against a 5 s keepalive), with real processes
(``lab.faultrig``). For each: readings sent, windows expected,
stored, lost, duplicated, and the recovery time -- from the end of the fault
(process started again, broker back, link back) until InfluxDB holds every
window whose reading was published before that moment.

Then the price of durability: appends per second into the outbox with
``fsync: full`` and ``normal``, and messages per second through outbox ->
broker -> PUBACK -> delete, beside a bare paho QoS 1 publish loop in the same run.

Writes the table into docs/reliability.md (between its table markers) and the
figures to benchmarks/results/reliability.json. ``--quick`` runs the test-suite
scale (a smoke test, not figures to quote); ``--only`` picks scenarios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lab import faultrig as fk
from lab.servers import InfluxDB1, Mosquitto, eventually
from edgeloop.mqtt import MqttLink, MqttSettings
from edgeloop.edge.outbox import Outbox
from edgeloop.edge.sender import OutboxSender

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
JSON_OUT = ROOT / "benchmarks" / "results" / "reliability.json"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"

DEVICES = 10

#: name -> (description, fault, Rig keyword arguments, per_device, readings/s over the fleet).
#: mosquitto saves after every change only where it is killed: that costs it most of its rate.
SCENARIOS = {
    "broker-kill": ("mosquitto kill -9 (saving after every change), restarted after 2 s", lambda: fk.kill_broker(2.0),
                    {"persistence": True}, 150, 50.0),
    "bridge-kill": ("bridge kill -9, restarted after 3 s", lambda: fk.kill_bridge(3.0), {}, 300, 200.0),
    "influx-down": ("influxd stopped for 30 s, then started", lambda: fk.stop_influx(30.0), {"own_influx": True}, 500, 100.0),
    "edge-kill": ("edge kill -9, restarted after 3 s", lambda: fk.kill_edge(3.0), {}, 300, 200.0),
    "edge-kill-offline": ("edge uplink silent 3 s (results pile up on disk), kill -9, link back, restart",
                          lambda: fk.kill_edge_offline(3.0), {"via_proxy": True}, 300, 200.0),
    "network-outage": ("edge-broker link silent for 20 s (keepalive 5 s)", lambda: fk.cut_network(20.0),
                       {"via_proxy": True}, 400, 100.0),
    "shared-bridge-kill": ("2 bridges on $share, one kill -9, restarted after 3 s", lambda: fk.kill_bridge(3.0),
                           {"bridges": 2, "share_group": "rel"}, 300, 200.0),
}

#: Scenarios that show a limit of a configuration rather than a guarantee: their loss does not fail the run.
INFORMATIONAL: set[str] = set()

QUICK = {  # the test suite's scale and outages
    "broker-kill": lambda: fk.kill_broker(1.0),
    "bridge-kill": lambda: fk.kill_bridge(1.0),
    "influx-down": lambda: fk.stop_influx(5.0), "edge-kill": lambda: fk.kill_edge(1.0),
    "edge-kill-offline": lambda: fk.kill_edge_offline(1.5), "network-outage": lambda: fk.cut_network(12.0),
    "shared-bridge-kill": lambda: fk.kill_bridge(1.0),
}


def progress(msg: str) -> None:
    print(f"[reliability {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- scenarios


def run_scenario(name: str, workdir: Path, influx: InfluxDB1, quick: bool) -> dict:
    desc, fault, kw, per_device, rate = SCENARIOS[name]
    kw = dict(kw)
    devices = DEVICES
    if quick:
        fault, per_device, rate, devices = QUICK[name], 40, 60.0, 3
    own = kw.pop("own_influx", False)
    tag = name.replace("-", "") + str(int(time.time()) % 100000)
    os.environ["EDGELOOP_STATE_DIR"] = str(workdir / name / "state")
    t0 = time.monotonic()
    with fk.Rig(workdir / name, tag, influx=None if own else influx, devices=devices, per_device=per_device,
                rate=rate, **kw) as rig:
        out = rig.run(fault(), timeout=300)
        row = out.row()
        row.update(scenario=name, description=desc, exit_codes=out.notes.get("exit_codes"),
                   wall_s=round(time.monotonic() - t0, 1))
        if name.startswith("edge-kill"):
            row["outbox_replayed_at_restart"] = rig.edge.final_stats().get("outbox_replayed_at_start")
        if name == "shared-bridge-kill":
            row["points_per_replica"] = [b.final_stats().get("points_written") for b in rig.bridges]
        bridge_results = sum(b.final_stats().get("results", 0) for b in rig.bridges)
        row["redelivered_windows"] = max(0, bridge_results - out.expected)  # written more than once, stored once
    return row


# ---------------------------------------------------------------------- outbox cost


def result_like(i: int) -> tuple[str, bytes]:
    payload = json.dumps({"v": 1, "device": f"dev-{i % 10:03d}", "sensor": "vibration", "model": "vibration_ae",
                          "model_version": "3", "model_sha256": "ab" * 32, "ts": 1.7e9 + i * 0.064, "seq": i,
                          "outputs": [0.0123456] * 6, "score": 0.0123, "anomaly": False, "label": "normal",
                          "latency_ms": 3.2, "node": "edge-bench"}).encode()
    return f"results/dev-{i % 10:03d}/vibration_ae", payload


def outbox_appends(workdir: Path, n: int, batch: int) -> dict:
    msgs = [result_like(i) for i in range(n)]
    out = {}
    for fsync in ("full", "batch", "normal"):
        box = Outbox(workdir / f"append-{fsync}.sqlite", fsync=fsync)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            box.append(msgs[i : i + batch])
        dt_s = time.perf_counter() - t0
        box.close()
        out[fsync] = {"messages_per_s": round(n / dt_s), "commits_per_s": round((n / batch) / dt_s)}
    return out


def through_broker(workdir: Path, n: int, batch: int) -> dict:
    """outbox append -> sender -> mosquitto -> PUBACK -> delete, against bare paho QoS 1 publishes."""
    msgs = [result_like(i) for i in range(n)]
    with Mosquitto(workdir / "mosquitto-cost", extra_conf="set_tcp_nodelay true\nmax_inflight_messages 1000\n") as broker:
        # bare paho, QoS 1, 100 in flight (the edge's default window)
        client = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        done = threading.Event()
        acked = [0]

        def on_publish(*_a) -> None:
            acked[0] += 1
            if acked[0] == n:
                done.set()

        client.on_publish = on_publish
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        t0 = time.perf_counter()
        for topic, payload in msgs:
            client.publish(topic, payload, qos=1)
        done.wait(120)
        bare = n / (time.perf_counter() - t0)
        client.loop_stop()
        client.disconnect()

        out = {"bare_paho_qos1_per_s": round(bare)}
        for fsync in ("full", "batch", "normal"):
            box = Outbox(workdir / f"send-{fsync}.sqlite", fsync=fsync)
            sender = OutboxSender(box, None, window=100)
            link = MqttLink(MqttSettings(url=broker.url), f"bench-outbox-{fsync}", on_publish=sender.on_publish)
            link.client.max_inflight_messages_set(0)  # as EdgeDelivery.attach does
            sender.link = link
            link.start(10)
            sender.start()
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                box.append(msgs[i : i + batch])
                sender.wake()
            eventually(lambda b=box: b.depth == 0, timeout=300, interval=0.01, message="outbox emptied")
            rate = n / (time.perf_counter() - t0)
            sender.stop()
            link.stop()
            box.close()
            out[f"outbox_{fsync}_per_s"] = round(rate)
            out[f"outbox_{fsync}_vs_bare"] = round(rate / bare, 2)
    return out


# ---------------------------------------------------------------------- report


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | fault | sent (readings) | expected (windows) | stored | lost | duplicates | recovery (s) | redelivered, stored once |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scenario']} | {r.get('description', '')} | error: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['scenario']} | {r['description']} | {r['sent']:,} | {r['expected']:,} | {r['stored']:,} | "
            f"{r['lost']} | {r['duplicates']} | {r['recovery_s']} | {r.get('redelivered_windows', 0):,} |"
        )
    return "\n".join(lines)


def cost_table(cost: dict) -> str:
    a, b = cost["appends"], cost["through_broker"]
    modes = ("full", "batch", "normal")

    def cells(fn) -> str:
        return " | ".join(fn(m) for m in modes)

    return "\n".join([
        "| path | fsync full | fsync batch (default) | fsync normal |",
        "|---|---:|---:|---:|",
        f"| outbox append in the worker, batches of {cost['batch']} (messages/s) | "
        + cells(lambda m: f"{a[m]['messages_per_s']:,}") + " |",
        "| append transactions per second | " + cells(lambda m: f"{a[m]['commits_per_s']:,}") + " |",
        "| append -> send -> PUBACK -> delete (messages/s) | " + cells(lambda m: f"{b[f'outbox_{m}_per_s']:,}") + " |",
        f"| the same as a share of the old direct path (paho QoS 1, 100 in flight: {b['bare_paho_qos1_per_s']:,}/s, same run) | "
        + cells(lambda m: f"{b[f'outbox_{m}_vs_bare']:.2f}") + " |",
    ])


def write_doc(rows: list[dict], cost: dict | None, meta: dict) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    intro = (f"Measured {meta['date']} on {meta['machine']} with `{meta['command']}` "
             f"({meta['devices']} devices, vibration readings at QoS 1; a run also writes its full figures "
             f"to `benchmarks/results/reliability.json`).")
    body = [intro, "", table(rows)]
    if cost:
        body += ["", f"The price of the outbox ({cost['n']:,} result-sized messages of ~{cost['message_bytes']} bytes):",
                 "", cost_table(cost)]
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + START + "\n" + "\n".join(body) + "\n" + END + tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the test suite's scale: a smoke test, not figures to quote")
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)},cost")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/reliability.md and the JSON alone")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (process logs)")
    args = ap.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(only) - set(SCENARIOS) - {"cost"}
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))}")
    if args.only == ap.get_default("only"):
        only.append("cost")
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-reliability-"))
    rows: list[dict] = []
    cost = None
    try:
        with InfluxDB1(workdir / "influxdb") as influx:
            for name in [n for n in SCENARIOS if n in only]:
                progress(f"{name}: {SCENARIOS[name][0]}")
                try:
                    rows.append(run_scenario(name, workdir, influx, args.quick))
                except Exception as exc:  # noqa: BLE001 -- one broken scenario must not hide the others
                    rows.append({"scenario": name, "description": SCENARIOS[name][0], "error": repr(exc)})
                progress(json.dumps(rows[-1]))
        if "cost" in only:
            n, batch = (2000, 128) if args.quick else (20000, 128)
            progress(f"cost: {n} messages through the outbox")
            cost = {"n": n, "batch": batch, "message_bytes": len(result_like(0)[1]),
                    "appends": outbox_appends(workdir, n, batch), "through_broker": through_broker(workdir, n, batch)}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"work directory kept: {workdir}")
    command = "python -m benchmarks.reliability" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "command": command.strip(), "devices": 3 if args.quick else DEVICES, "quick": args.quick}
    print(table(rows))
    if cost:
        print()
        print(cost_table(cost))
    if not args.no_write:
        JSON_OUT.parent.mkdir(parents=True, exist_ok=True)
        JSON_OUT.write_text(json.dumps({"meta": meta, "scenarios": rows, "outbox_cost": cost}, indent=2) + "\n")
        write_doc(rows, cost, meta)
    failed = [r["scenario"] for r in rows
              if "error" in r or (r["scenario"] not in INFORMATIONAL and (r["lost"] or r["duplicates"]))]
    if failed:
        progress(f"lost or duplicated data (or errors) in: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
