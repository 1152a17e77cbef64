"""The device side's commands: ``edgeloop devices simulate`` and ``edgeloop devices camera``.

Registered through the ``edgeloop.commands`` entry point (pyproject.toml); this
module imports argparse and the core only. ``simulate`` needs the core alone
(numpy, paho); ``camera`` needs OpenCV, the ``vision`` extra.
"""

from __future__ import annotations

import argparse
import json

from edgeloop.commands import Commands


def cmd_devices_simulate(args: argparse.Namespace) -> int:
    from edgeloop.commands import stop_on_signals
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
                        help="simulated machines publishing vibration and temperature")
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
