"""``make demo``: the whole path on one machine, then a scorecard.

Starts its own mosquitto and InfluxDB 1.x on free loopback ports, the edge
runtime as a separate process (exactly ``edgeloop edge run``), the bridge,
and simulated machines with injected faults; shows live progress; prints
what was sent, stored and flagged; and stops everything it started.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeloop.errors import ConfigError
from edgeloop.edge.config import DEFAULT_VIBRATION_STAGES
from lab.scorecard import print_card, score_detection

NODE = "demo-edge"
DB = "edgeloop"


def _require_binaries() -> None:
    missing = [b for b in ("mosquitto", "influxd") if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
    if missing:
        raise ConfigError(
            "demo", [f"{', '.join(missing)} not found: run `make demo` (installs them) or apt-get install mosquitto influxdb"]
        )


def _window_span() -> int:
    """How many consecutive readings one window covers with the default pipeline (64-sample readings)."""
    size = next(s["size"] for s in DEFAULT_VIBRATION_STAGES if s["type"] == "window")
    return math.ceil(size / 64)


def run_demo(duration_s: float, devices: int, rate_hz: float | None, stop: threading.Event) -> int:
    from edgeloop.bridge.app import Bridge
    from edgeloop.bridge.config import load_bridge_config
    from edgeloop.devices.publisher import simulate
    from lab.configs import bridge_config
    from lab.mqtt import Watcher
    from lab.procs import CliProcess
    from lab.servers import InfluxDB1, Mosquitto, eventually

    _require_binaries()
    logging.getLogger().setLevel(logging.WARNING)  # the progress lines and the table are the output
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-demo-"))
    print(f"edgeloop demo: {devices} simulated machines for {duration_s:.0f}s; work dir {workdir}")
    with Mosquitto(workdir / "mosquitto") as broker, InfluxDB1(workdir / "influxdb") as influx:
        influx.create_database(DB)
        print(f"  broker   {broker.url}\n  influxdb {influx.url} (database {DB})")
        watch = Watcher(broker.port, [("results/#", 0), (f"status/{NODE}", 1)])
        bridge = Bridge(load_bridge_config(None, bridge_config(broker.url, influx.url, DB)))
        bridge.start()
        edge = CliProcess(["edge", "run", "--broker", broker.url, "--node-id", NODE], workdir / "edge.log").start()
        try:
            watch.wait_online(NODE, edge, timeout=60)
            print(f"  edge     pid {edge.pid} online (log {edge.log_path})\n")
            holder: dict = {}
            sim = threading.Thread(
                target=lambda: holder.update(report=simulate(
                    broker.url, n_devices=devices, rate_hz=rate_hz, duration_s=duration_s,
                    seed=42, anomaly_rate=0.004, stop=stop,
                )),
                daemon=True,
            )
            started = time.monotonic()
            sim.start()
            while sim.is_alive():
                sim.join(3.0)
                stats, results = bridge.stats(), watch.on("results/")
                flagged = sum(b'"anomaly":true' in r for r in results)
                print(
                    f"  t={time.monotonic() - started:5.1f}s  results {len(results):6d}  "
                    f"flagged {flagged:4d}  stored {stats['points_written']:6d}  "
                    f"rejected {sum(stats['rejected'].values()):3d}",
                    flush=True,
                )
            report = holder["report"]
            vib_sent = report.sent_by_sensor().get("vibration", 0)
            expected = max(0, vib_sent - devices * (_window_span() - 1))
            try:
                eventually(lambda: len(watch.on("results/")) >= expected, timeout=15, message="waiting for results")
            except AssertionError:
                pass
        finally:
            edge_rc = edge.terminate(30)
            bridge_drained = bridge.stop()
            watch.close()

        rows = influx.points('SELECT "seq", "anomaly", "score", "latency_ms" FROM "inference" GROUP BY "device"', DB)
        quality = score_detection(report.faults, rows, _window_span())
        lag = bridge.stats().get("stored_lag_ms", {})
        _print_table(report, rows, quality, lag, edge_rc, bridge_drained, influx.port, workdir)
    return 0 if edge_rc == 0 and bridge_drained else 1


def _print_table(report, rows, quality, lag, edge_rc, bridge_drained, port, workdir) -> None:  # noqa: ANN001
    by_sensor = report.sent_by_sensor()
    lines = [
        ("readings sent", f"{report.total_sent} ({', '.join(f'{k} {v}' for k, v in sorted(by_sensor.items()))})"),
        ("results stored (windows)", str(len(rows))),
        ("fault episodes injected", str(quality["episodes"])),
        ("fault episodes flagged", f"{quality['detected']}" + (f" (recall {quality['recall']:.0%})" if quality["recall"] is not None else "")),
        ("false alarms", f"{quality['false_positives']} of {quality['normal_windows']} normal windows"
         + (f" ({quality['fpr']:.2%})" if quality["fpr"] is not None else "")),
        ("sensor -> stored p50 / p99", f"{lag.get('p50', float('nan')):.0f} / {lag.get('p99', float('nan')):.0f} ms"),
        ("edge exit code", f"{edge_rc} (SIGTERM, drained)" if edge_rc == 0 else str(edge_rc)),
        ("bridge drained", str(bridge_drained)),
    ]
    print_card(lines)
    print(
        "\nEverything the demo started has stopped. Its InfluxDB data is kept; to explore it:\n"
        f"  influxd -config {workdir}/influxdb/influxdb.conf &\n"
        f"  influx -port {port} -database {DB} -execute "
        "'SELECT count(score) FROM inference WHERE anomaly = true GROUP BY device'\n"
        f"(remove {workdir} when done)"
    )


def main(argv: list[str] | None = None) -> int:
    """``make demo`` (``python -m lab.demo``): the closed-loop demo by default, ``--no-drift`` the ingest one."""
    import argparse

    from edgeloop.cli import stop_on_signals
    from edgeloop.logsetup import configure_logging

    parser = argparse.ArgumentParser(prog="python -m lab.demo",
                                     description="the whole loop on this machine, with its own broker and InfluxDB")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="readings per second per device (default: real time)")
    parser.add_argument("--drift", action=argparse.BooleanOptionalAction, default=True,
                        help="the closed-loop demo: regime change, drift detection, retrain, signed redeploy "
                        "(default); --no-drift: the short ingest demo (--duration)")
    parser.add_argument("--drift-at", type=float, default=40.0, help="seconds after the start when every machine drifts")
    args = parser.parse_args(argv)
    configure_logging("INFO", "text")
    stop = stop_on_signals()
    if args.drift:  # the closed loop: drift -> retrain -> signed redeploy (lab/loopdemo.py)
        from lab.loopdemo import run_drift_demo

        result = run_drift_demo(devices=args.devices, rate_hz=args.rate, drift_at_s=args.drift_at, stop=stop)
        return 0 if result["new_version"] and result["edge_exit_code"] == 0 else 1
    return run_demo(duration_s=args.duration, devices=args.devices, rate_hz=args.rate, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
