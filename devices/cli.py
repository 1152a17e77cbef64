"""The device side's commands: ``edgeloop devices simulate`` and ``edgeloop devices camera``.

Registered through the ``edgeloop.commands`` entry point (pyproject.toml); this
module imports argparse and the core only. ``simulate`` needs the core alone
(numpy, paho); ``camera`` needs OpenCV, the ``vision`` extra.
"""

from __future__ import annotations

import argparse
import json

from edgeloop.commands import Commands


def _simulate_connections(args: argparse.Namespace):  # noqa: ANN202
    """(settings, device ids, settings_for) from the flags; ConfigError naming the flag."""
    from pathlib import Path

    from edgeloop.contract import check_level
    from edgeloop.errors import ConfigError
    from edgeloop.mqtt import MqttSettings, TlsSettings

    try:
        ids = [check_level(d.strip(), "--device-ids: id") for d in args.device_ids.split(",")] if args.device_ids else None
    except ValueError as exc:
        raise ConfigError("command line", [str(exc)]) from None
    if ids is not None and len(set(ids)) != len(ids):
        raise ConfigError("command line", [f"--device-ids names a device twice: {args.device_ids}"])
    if ids is not None and args.devices is not None and args.devices != len(ids):
        raise ConfigError("command line", [f"--devices {args.devices} but --device-ids names {len(ids)}"])
    if args.cert_dir is not None and ids is None:
        raise ConfigError("command line", ["--cert-dir needs --device-ids: each device connects with "
                                           "DIR/ID.crt and DIR/ID.key, its certificate's CN being ID"])
    tls = None
    try:
        if args.ca_file is not None or args.cert_dir is not None:
            tls = TlsSettings(ca_file=args.ca_file)
        settings = MqttSettings(url=args.broker, tls=tls)
        settings_for = None
        if args.cert_dir is not None:
            certs = Path(args.cert_dir)
            per_device = {d: settings.model_copy(update={"tls": TlsSettings(
                ca_file=args.ca_file, cert_file=certs / f"{d}.crt", key_file=certs / f"{d}.key")}) for d in ids}
            settings_for = per_device.__getitem__
    except ValueError as exc:  # pydantic's ValidationError too: a missing file, a key that does not match
        raise ConfigError("command line", [str(exc).replace("\n", "; ")]) from None
    return settings, ids, settings_for


def cmd_devices_simulate(args: argparse.Namespace) -> int:
    from edgeloop.commands import stop_on_signals
    from edgeloop.devices.publisher import simulate

    settings, ids, settings_for = _simulate_connections(args)
    if args.format != "edgeloop":
        return _simulate_climate(args, settings, ids)
    report = simulate(
        broker_url=settings,
        n_devices=len(ids) if ids else (5 if args.devices is None else args.devices),
        rate_hz=args.rate,
        count=args.count,
        duration_s=args.duration,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        drift_at_s=args.drift_at,
        truth_path=args.truth,
        qos=args.qos,
        stop=stop_on_signals(),
        device_ids=ids,
        settings_for=settings_for,
    )
    print(json.dumps(report.summary(), indent=2))
    # A reading that could not be sent, or (QoS 1) that the broker never acknowledged, fails the run.
    return 0 if report.failed == 0 and report.acknowledged is not False else 1


def _simulate_climate(args: argparse.Namespace, settings, ids) -> int:  # noqa: ANN001
    """Room climate sensors in a device format (edgeloop.devices.payloads), for the ingest examples."""
    from edgeloop.commands import stop_on_signals
    from edgeloop.devices.publisher import simulate_climate
    from edgeloop.errors import ConfigError

    unsupported = [flag for flag, value in (("--duration", args.duration), ("--drift-at", args.drift_at),
                                            ("--truth", args.truth), ("--cert-dir", args.cert_dir)) if value is not None]
    if unsupported:
        raise ConfigError("command line", [f"--format {args.format} does not take {', '.join(unsupported)}"])
    try:
        report = simulate_climate(
            broker_url=settings, fmt=args.format,
            n_devices=len(ids) if ids else (5 if args.devices is None else args.devices),
            count=args.count, rate_hz=args.rate, seed=args.seed, anomaly_rate=args.anomaly_rate, qos=args.qos,
            stop=stop_on_signals(), device_ids=ids,
        )
    except ValueError as exc:
        raise ConfigError("command line", [str(exc)]) from None
    print(json.dumps(report.summary(), indent=2))
    return 0 if report.failed == 0 and report.acknowledged is not False else 1


def cmd_devices_camera(args: argparse.Namespace) -> int:
    from edgeloop.commands import stop_on_signals
    from edgeloop.errors import ConfigError
    from edgeloop.devices.camera import is_file_source, run_camera
    from edgeloop.devices.scenes import labels_path

    if (args.width is None) != (args.height is None):
        raise ConfigError("command line", ["--width and --height go together"])
    labels = args.labels
    if labels is None and is_file_source(args.source) and labels_path(args.source).is_file():
        labels = labels_path(args.source)
    try:
        report = run_camera(
            broker_url=args.broker, device=args.device, camera=args.camera, source=args.source, fps=args.fps,
            width=args.width, height=args.height, jpeg_quality=args.jpeg_quality, loop=args.loop,
            count=args.count, duration_s=args.duration, protocol=args.mqtt_protocol, header=args.header,
            labels_file=labels, qos=args.qos, stop=stop_on_signals(),
        )
    except (OSError, ValueError) as exc:  # no such file, unreadable video, bad topic level or quality
        raise ConfigError("command line", [str(exc)]) from None
    print(json.dumps(report.summary(), indent=2))
    return 0


def register(cli: Commands) -> None:
    devices = cli.group("devices", help="device-side publishers")
    p = devices.command("simulate", cmd_devices_simulate,
                        help="simulated machines publishing vibration and temperature, or room climate sensors "
                        "in a device format (--format)")
    p.add_argument("--format", default="edgeloop",
                   choices=["edgeloop", "zigbee2mqtt", "tasmota", "senml", "influx"],
                   help="edgeloop (default): vibration machines on sensors/{device}/{sensor}; the others: room "
                   "climate sensors (temperature, humidity, pressure, one message per 30 s reading) as Zigbee2MQTT, "
                   "Tasmota, SenML or InfluxDB line protocol devices publish them (examples/ingest/)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host[:port] or mqtts:// (TLS)")
    p.add_argument("--devices", type=int, help="how many simulated machines (default 5, or one per --device-ids)")
    p.add_argument("--device-ids", metavar="ID[,ID...]",
                   help="the devices' ids (topic level) instead of dev-000, dev-001, ...; with --cert-dir also "
                   "their certificates' CN")
    p.add_argument("--rate", type=float, default=None,
                   help="readings per second per device, both sensors (default: real time, 16.625; 0 = flat out); "
                   "climate formats: messages per second per device (default one per 30 s; 0 = flat out backfill "
                   "ending now, needs --count)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="readings per device, then stop")
    group.add_argument("--duration", type=float, help="seconds, then stop")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--anomaly-rate", type=float, default=0.002, help="probability a reading starts a fault")
    p.add_argument("--drift-at", type=float, help="seconds after start when every device changes regime")
    p.add_argument("--truth", help="write injected faults (ground truth) as JSON lines to this file")
    p.add_argument("--qos", type=int, choices=[0, 1], default=0,
                   help="1: the broker acknowledges every reading and the run waits for the acks. Either way "
                   "it exits 1 if a reading could not be sent or was never acknowledged")
    p.add_argument("--ca-file", help="TLS (mqtts://): trust this CA for the broker's certificate")
    p.add_argument("--cert-dir", help="mutual TLS: each device connects as itself with DIR/ID.crt and DIR/ID.key "
                   "(what docker/mosquitto/make-certs.sh DIR client ID writes); needs --device-ids")

    p = devices.command(
        "camera", cmd_devices_camera, needs=("vision",),
        help="capture frames (camera, stream, video file or synthetic scenes) and publish them as JPEG",
        description="Publishes frames/{device}/{camera}: JPEG with capture ts and seq (docs/camera.md).",
    )
    p.add_argument("--source", default="sim",
                   help="0|/dev/videoN|rtsp://...|http://...|file.avi|sim[:SEED] (default: sim, synthetic belt scenes)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], default="5",
                   help="5: metadata in user properties; 3.1.1: in a header before the JPEG")
    p.add_argument("--device", default="cam-01", help="device id (topic level)")
    p.add_argument("--camera", default="belt", help="camera name (topic level, matches vision.cameras[].camera)")
    p.add_argument("--fps", type=float, default=10.0, help="frames per second (0: as fast as the source gives them)")
    p.add_argument("--width", type=int, help="resize frames to this width (with --height)")
    p.add_argument("--height", type=int, help="resize frames to this height (with --width)")
    p.add_argument("--jpeg-quality", type=int, default=85)
    p.add_argument("--loop", action="store_true", help="start a video file again at its end")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--count", type=int, help="frames to capture, then stop")
    group.add_argument("--duration", type=float, help="seconds, then stop")
    p.add_argument("--labels", help="ground-truth sidecar of a video file (default: FILE.labels.json if it exists)")
    p.add_argument("--header", action="store_true", help="metadata header in the payload even with MQTT 5")
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
