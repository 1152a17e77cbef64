"""``make demo``: the whole path on one machine, then a scorecard.

Two demos. By default the closed loop (``lab/loopdemo.py``): a fleet in real
time changes regime, the bridge detects the drift, retrains, signs and
redeploys; it ends once the new model has served a while (about 4 minutes).
``--no-drift``: the ingest demo, ``--duration`` seconds of sensor -> edge ->
bridge -> InfluxDB. Each starts its own mosquitto and InfluxDB 1.x on free
loopback ports, the edge runtime as a separate process (exactly ``edgeloop
edge run``), the bridge and simulated machines with injected faults; shows
live progress; prints what was sent, stored and flagged; and stops
everything it started.

Before it starts anything, ``preflight`` checks what the chosen demo needs
(the extras, TensorFlow for the retrain, the server binaries, a loopback
port) and names each missing piece with the command that fixes it (exit 2);
``--check`` does only that.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from edgeloop.edge.config import DEFAULT_VIBRATION_STAGES
from lab.scorecard import print_card, score_detection

NODE = "demo-edge"
DB = "edgeloop"
#: What each extra brings to the demo (pyproject.toml extras; edgeloop.extras finds their modules).
EXTRA_ROLES = {
    "edge": "the edge runtime's interpreter",
    "bridge": "the bridge (InfluxDB client, sample store, drift tests)",
    "train": "TensorFlow: the closed-loop demo retrains the model with it",
}
SERVERS = {"mosquitto": "mosquitto", "influxd": "influxdb"}  # binary -> Debian package
#: The closed-loop demo's backstop: seconds of publishing without a new model on the edge. A dead end
#: (refused retrain, failed job) ends it at once; this only bounds a slow one on a busy machine (where
#: the retrain's own timeout, 300 s, also applies).
MAX_S = 600.0


def preflight(drift: bool) -> list[str]:
    """What the demo needs and this machine lacks, each with the command that fixes it; [] when ready.

    Only looks (importlib.util.find_spec, PATH, one bind on 127.0.0.1): nothing is started, so a
    missing piece is reported in a second, before any server or process runs.
    """
    from edgeloop.extras import missing

    problems = []
    for extra in ("edge", "bridge", *(("train",) if drift else ())):
        absent = missing(extra)
        if absent:
            alone = f"{sys.executable} -m pip install -c devices/boards/constraints-edge.txt -e '.[{extra}]'"
            hint = ", or --no-drift for the ingest demo, which trains nothing" if extra == "train" else ""
            problems.append(f"the '{extra}' extra is not installed in {sys.prefix} (missing: {', '.join(absent)}; "
                            f"{EXTRA_ROLES[extra]}): from the repository root, run `make venv-train` (.venv with "
                            f"every extra the demo uses) or `{alone}`{hint}")
    absent_bins = [b for b in SERVERS if not (shutil.which(b) or Path(f"/usr/sbin/{b}").exists())]
    if absent_bins:
        packages = " ".join(SERVERS[b] for b in absent_bins)
        problems.append(f"{', '.join(absent_bins)} not found (the demo starts its own broker and database): "
                        f"run `make deps` or `apt-get install {packages}`")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
    except OSError as exc:
        problems.append(f"cannot open a TCP port on 127.0.0.1 ({exc}): the demo's servers listen on free "
                        "loopback ports; bring the loopback interface up (`ip link set lo up`)")
    return problems


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


def verdict(result: dict) -> tuple[int, str]:
    """The closed-loop demo's exit code and closing line, from ``run_drift_demo``'s result."""
    if result.get("failure"):
        return 1, (f"\nDEMO FAILED: {result['failure']}\n  (work dir {result['workdir']}: demo-edge.log, "
                   "retrain-jobs/*/worker.log)")
    if result.get("interrupted"):
        return 1, "\ndemo interrupted"
    if result.get("edge_exit_code") != 0:
        return 1, f"\nDEMO FAILED: the edge did not drain on SIGTERM (exit code {result.get('edge_exit_code')})"
    return 0, (f"\ndemo done: drift detected, {result['new_version']} retrained, signed and running on the edge "
               f"({result['elapsed_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    """``make demo`` (``python -m lab.demo``): the closed-loop demo by default, ``--no-drift`` the ingest one."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m lab.demo", description="the whole loop on this machine, with its own broker and InfluxDB. "
        "Default: the closed loop (drift -> retrain -> signed redeploy), about 4 minutes in real time; "
        "--no-drift: the ingest demo, --duration seconds (default 30)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of the ingest demo (--no-drift; default 30). The closed-loop demo's length "
                        "is set by its events, so it refuses this flag")
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--rate", type=float, default=None, help="readings per second per device (default: real time)")
    parser.add_argument("--drift", action=argparse.BooleanOptionalAction, default=True,
                        help="the closed-loop demo: regime change, drift detection, retrain, signed redeploy "
                        "(default); --no-drift: the short ingest demo (--duration)")
    parser.add_argument("--drift-at", type=float, default=40.0, help="seconds after the start when every machine drifts")
    parser.add_argument("--check", action="store_true", help="only check what the demo needs (exit 0 ready, 2 not)")
    args = parser.parse_args(argv)
    if args.drift and args.duration is not None:
        parser.error("--duration sets the ingest demo's length (with --no-drift). The closed-loop demo ends "
                     "40 s after the edge runs the retrained model (about 4 min in real time; it gives up "
                     f"after {MAX_S:.0f} s of publishing)")
    problems = preflight(args.drift)
    which = "closed-loop demo" if args.drift else "ingest demo"
    if problems:
        print(f"edgeloop {which}: cannot start, missing:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    if args.check:
        print(f"edgeloop {which}: ready (extras, server binaries and a loopback port are there)")
        return 0

    from edgeloop.cli import stop_on_signals
    from edgeloop.logsetup import configure_logging

    configure_logging("INFO", "text")
    stop = stop_on_signals()
    if args.drift:  # the closed loop: drift -> retrain -> signed redeploy (lab/loopdemo.py)
        from lab.loopdemo import run_drift_demo

        result = run_drift_demo(devices=args.devices, rate_hz=args.rate, drift_at_s=args.drift_at, stop=stop,
                                max_s=MAX_S)
        code, message = verdict(result)
        print(message, flush=True)
        return code
    return run_demo(duration_s=args.duration or 30.0, devices=args.devices, rate_hz=args.rate, stop=stop)


if __name__ == "__main__":
    sys.exit(main())
