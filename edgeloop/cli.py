"""``edgeloop`` command line.

argparse (standard library) rather than click/typer: the edge install stays
small, and subcommands import their heavy modules (numpy, LiteRT,
influxdb-client, TensorFlow) only when they run.

Exit codes: 0 ok, 1 runtime failure (e.g. a drain that did not finish),
2 configuration error, 3 model error, 4 peer unreachable at startup.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from edgeloop import __version__
from edgeloop.cli_deploy import add_commands as add_deploy_commands
from edgeloop.cli_loop import add_loop_commands
from edgeloop.cli_vision import add_camera_command, build_vision
from edgeloop.errors import ConfigError, ModelError, TransientError

log = logging.getLogger("edgeloop")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so services drain instead of dying mid-batch."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s, draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _mqtt_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "broker", None):
        out["url"] = args.broker
    if getattr(args, "mqtt_protocol", None):
        out["protocol"] = args.mqtt_protocol
    return {"mqtt": out} if out else {}


# ----------------------------------------------------------------------- edge


def cmd_edge_run(args: argparse.Namespace) -> int:
    from edgeloop.edge.app import run_edge
    from edgeloop.edge.config import load_edge_config

    overrides = _mqtt_overrides(args)
    if args.node_id:
        overrides["node_id"] = args.node_id
    cfg = load_edge_config(args.config, overrides)
    if args.model:
        pipelines = [p.model_copy(update={"model": p.model.model_copy(update={"path": Path(args.model)})}) for p in cfg.pipelines[:1]]
        cfg = cfg.model_copy(update={"pipelines": pipelines + list(cfg.pipelines[1:])})
    return run_edge(cfg, stop_on_signals(), source=args.config or "defaults")


# --------------------------------------------------------------------- bridge


def cmd_bridge_run(args: argparse.Namespace) -> int:
    from edgeloop.bridge.app import run_bridge
    from edgeloop.bridge.config import load_bridge_config

    overrides = _mqtt_overrides(args)
    influx: dict[str, Any] = {}
    for flag, key in [
        ("influx_url", "url"),
        ("influx_api", "api"),
        ("influx_db", "db"),
        ("influx_bucket", "bucket"),
        ("influx_org", "org"),
        ("influx_token_file", "token_file"),
    ]:
        value = getattr(args, flag)
        if value is not None:
            influx[key] = value
    if influx:
        overrides["influx"] = influx
    cfg = load_bridge_config(args.config, overrides)
    return run_bridge(cfg, stop_on_signals())


# -------------------------------------------------------------------- devices


def cmd_devices_simulate(args: argparse.Namespace) -> int:
    from edgeloop.devices.publisher import simulate

    report = simulate(
        broker_url=args.broker,
        n_devices=args.devices,
        rate_hz=args.rate,
        count=args.count,
        duration_s=args.duration,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        drift_at_s=args.drift_at,
        truth_path=args.truth,
        stop=stop_on_signals(),
    )
    print(json.dumps(report.summary(), indent=2))
    return 0


# --------------------------------------------------------------------- config


def cmd_config_check(args: argparse.Namespace) -> int:
    from edgeloop.configfile import read_yaml, redacted

    kind = args.kind
    if kind == "auto":
        kind = "bridge" if "influx" in read_yaml(args.file) else "edge"
    if kind == "edge":
        from edgeloop.edge.config import load_edge_config

        cfg = load_edge_config(args.file)
    else:
        from edgeloop.bridge.config import load_bridge_config

        cfg = load_bridge_config(args.file, {})
    print(f"# {args.file}: valid {kind} configuration (effective values, secrets masked)")
    print(json.dumps(redacted(cfg), indent=2, default=str))
    return 0


# ---------------------------------------------------------------------- model


def cmd_model_info(args: argparse.Namespace) -> int:
    from edgeloop.modelfile import describe

    print(json.dumps(describe(args.file), indent=2, default=str))
    return 0


def cmd_model_build(args: argparse.Namespace) -> int:
    if args.vision:
        return build_vision(args)  # the camera classifier (edgeloop/cli_vision.py)
    try:
        from edgeloop.bridge.training.build import build_model
    except ImportError as exc:  # tensorflow lives in the train extra
        raise ConfigError("command line", [f"model build needs the 'train' extra ({exc}); run: make model"]) from None
    build_model(out_dir=Path(args.out), seed=args.seed)
    return 0


# ---------------------------------------------------------------------- parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeloop", description="Edge-ML runtime for MQTT IoT fleets.")
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text for people (default) or JSON lines for log collectors")
    sub = parser.add_subparsers(dest="command", required=True)

    def broker_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker", help="mqtt://[user:pass@]host[:port] or mqtts://... (default mqtt://127.0.0.1:1883)")
        p.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], help="MQTT protocol version (default 5)")

    edge = sub.add_parser("edge", help="the on-device runtime").add_subparsers(dest="action", required=True)
    p = edge.add_parser("run", help="subscribe to sensors, infer, publish results")
    p.add_argument("-c", "--config", help="edge.yaml (optional: defaults run the bundled model)")
    broker_flags(p)
    p.add_argument("--model", help="path to a .tflite (with its .json metadata beside it)")
    p.add_argument("--node-id", help="this runtime's id in status/{node} (default edge-<hostname>)")
    p.set_defaults(func=cmd_edge_run)

    bridge = sub.add_parser("bridge", help="the cloud side").add_subparsers(dest="action", required=True)
    p = bridge.add_parser("run", help="validate results and status, write them to InfluxDB")
    p.add_argument("-c", "--config", help="bridge.yaml")
    broker_flags(p)
    p.add_argument("--influx-url")
    p.add_argument("--influx-api", choices=["v1", "v2"])
    p.add_argument("--influx-db", help="v1: database")
    p.add_argument("--influx-bucket", help="v2: bucket")
    p.add_argument("--influx-org", help="v2: organisation")
    p.add_argument("--influx-token-file", help="v2: file holding the API token")
    p.set_defaults(func=cmd_bridge_run)

    devices = sub.add_parser("devices", help="device-side publishers").add_subparsers(dest="action", required=True)
    p = devices.add_parser("simulate", help="simulated machines publishing vibration and temperature")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--rate", type=float, default=None,
                   help="readings per second per device, both sensors (default: real time, 16.625; 0 = flat out)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="readings per device, then stop")
    group.add_argument("--duration", type=float, help="seconds, then stop")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--anomaly-rate", type=float, default=0.002, help="probability a reading starts a fault")
    p.add_argument("--drift-at", type=float, help="seconds after start when every device changes regime")
    p.add_argument("--truth", help="write injected faults (ground truth) as JSON lines to this file")
    p.set_defaults(func=cmd_devices_simulate)
    add_camera_command(devices, stop_on_signals)  # devices camera (edgeloop/cli_vision.py)

    config = sub.add_parser("config", help="configuration files").add_subparsers(dest="action", required=True)
    p = config.add_parser("check", help="validate a config file and print the effective config, secrets masked")
    p.add_argument("file")
    p.add_argument("--kind", choices=["auto", "edge", "bridge"], default="auto")
    p.set_defaults(func=cmd_config_check)

    model = sub.add_parser("model", help="model files").add_subparsers(dest="action", required=True)
    p = model.add_parser("info", help="inputs, outputs, metadata and sha256 check of a .tflite")
    p.add_argument("file")
    p.set_defaults(func=cmd_model_info)
    p = model.add_parser("build", help="train the bundled anomaly model on simulator data (train extra)")
    p.add_argument("--out", default=str(Path(__file__).parent / "models"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--vision", action="store_true", help="build the camera classifier (parts_cnn float + int8) instead")
    p.set_defaults(func=cmd_model_build)
    add_deploy_commands(sub, model)  # keys generate; model list|show|add|promote|rollback|deploy
    add_loop_commands(model)  # model retrain

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edgeloop.logsetup import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"edgeloop: model error: {exc}", file=sys.stderr)
        return 3
    except TransientError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
