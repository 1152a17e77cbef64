"""``edgeloop devices camera`` and ``edgeloop model build --vision``: the camera pipeline's commands.

Why apart from ``edgeloop/cli.py``: ``cli.py`` only calls
:func:`add_camera_command` and :func:`build_vision`; OpenCV, the scenes
renderer and TensorFlow are imported when a command runs.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable
from pathlib import Path

from edgeloop.errors import ConfigError


def add_camera_command(devices: argparse._SubParsersAction, stop_event: Callable[[], threading.Event]) -> None:
    p = devices.add_parser(
        "camera",
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
    p.set_defaults(func=lambda args: cmd_devices_camera(args, stop_event()))


def cmd_devices_camera(args: argparse.Namespace, stop: threading.Event) -> int:
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
            labels_file=labels, qos=args.qos, stop=stop,
        )
    except (OSError, ValueError) as exc:  # no such file, unreadable video, bad topic level or quality
        raise ConfigError("command line", [str(exc)]) from None
    print(json.dumps(report.summary(), indent=2))
    return 0


def build_vision(args: argparse.Namespace) -> int:
    try:
        from edgeloop.bridge.training.vision import build_vision_models
    except ImportError as exc:  # tensorflow lives in the train extra
        raise ConfigError("command line", [f"model build needs the 'train' extra ({exc}); run: make model"]) from None
    paths, figures = build_vision_models(out_dir=Path(args.out), seed=args.seed)
    print(json.dumps({"models": [str(p) for p in paths], "evaluation": figures}, indent=2))
    return 0
