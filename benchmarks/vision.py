"""Camera pipeline benchmarks: ``run(workdir, quick) -> dict`` (``python -m benchmarks.vision [--quick]``).

Measurements, all on this machine in one run:

  preprocess   in-process cost per frame (320x240 scene JPEG, quality 85): JPEG
               decode alone, decode + the bundled models' default image stages
               (float and int8 input), the interpreter per frame at batch 1 and 8,
               ``VisionEngine.process`` per frame (everything but MQTT), and the
               naive baseline: the straightforward per-frame loop (imdecode,
               cvtColor, resize, /255, interpreter at batch 1, json.dumps).
  end_to_end   ``edgeloop edge run`` as a subprocess with a ``vision:`` config,
               for the float and the int8 model:
                 capacity    closed loop: 32 cameras, each sending its next frame
                             when the result for the last arrives -- the edge is
                             never idle and nothing queues: results/s = capacity
                 paced_30    1 camera at 30 frames/s: results/s, drops, latency
                 overload_2x N cameras at 30 frames/s each, N*30 ~ 2x the
                             measured capacity: latency p50/p99 against 4 frame
                             intervals (133 ms), and what newest-wins dropped
                 flood       4 cameras as fast as the publisher can send: beyond
                             what the edge's MQTT client can even read, so the
                             broker queues and latency grows -- newest-wins
                             works on what the client has read (see docs/camera.md)
               Latency = arrival at the C subscriber (mosquitto_sub timestamp)
               minus the frame's capture ``ts``: camera -> broker -> edge ->
               broker -> subscriber. CPU seconds and peak RSS of the edge.
  limit        the broker's frame delivery rate to a bare paho subscriber, flat
               out with the same publisher (the physical limit of this box).

The publisher is this process (paho, pre-encoded frames, metadata in MQTT v5
user properties, ``ts`` stamped at publish time); the broker is mosquitto with
the shared benchmark configuration. The machine has 2 cores shared by
everything here (publisher, broker, edge, subscriber): figures are what one
small box sustains, not what the edge alone could.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import EdgeProcess, ResultRecorder, bench_broker, percentile
from lab.mqtt import close, connect, properties
from lab.servers import Mosquitto

MODELS_DIR = Path(__file__).resolve().parents[1] / "runtime" / "models"
MODELS = {"float": MODELS_DIR / "parts_cnn.tflite", "int8": MODELS_DIR / "parts_cnn_int8.tflite"}
CAMERA_FPS = 30.0
CLOSED_LOOP_CAMERAS = 32  # two batches in flight: the edge never waits for the next frame
LATENCY_TARGET_INTERVALS = 4


def frame_pool(n: int = 48, width: int = 320, height: int = 240, quality: int = 85) -> list[bytes]:
    from edgeloop.devices.scenes import SceneSimulator, encode_jpeg

    sim = SceneSimulator(width, height, seed=99)
    return [encode_jpeg(sim.render(i)[0], quality) for i in range(n)]


def _per_frame_us(fn, items: list, min_s: float) -> float:
    """Mean microseconds per item of ``fn(item)``, repeating the list for at least ``min_s``."""
    for item in items[:4]:
        fn(item)  # warm up (allocations, delegate init)
    done, start = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / done * 1e6


# ------------------------------------------------------------------------ in process


def preprocess(quick: bool) -> dict:
    import logging

    from edgeloop.rejects import Rejects
    from edgeloop.contract import FrameMeta
    from edgeloop.edge.inference import TfliteModel
    from edgeloop.edge.vision.config import VisionSettings
    from edgeloop.edge.vision.engine import VisionEngine
    from edgeloop.edge.vision.pipeline import build_image_pipeline
    from edgeloop.edge.vision.slots import PendingFrame

    min_s = 0.3 if quick else 2.0
    frames = frame_pool()
    out: dict = {
        "frame": {"width": 320, "height": 240, "jpeg_quality": 85, "mean_bytes": round(float(np.mean([len(f) for f in frames])))},
        "decode_us": _per_frame_us(lambda j: cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), frames, min_s),
    }
    for kind, path in MODELS.items():
        model = TfliteModel(path, max_batch=16)
        pipeline = build_image_pipeline(None, model)
        rows = [pipeline.process(j) for j in frames]
        batch8 = [np.stack(rows[i : i + 8]) for i in range(0, len(rows), 8)]
        settings = VisionSettings.model_validate({"cameras": [{"camera": "belt", "model": {"path": str(path)}}]})
        engine = VisionEngine.build(settings, Rejects("bench", logging.getLogger("bench")), node_id="bench")
        pending = [PendingFrame(f"frames/cam{i % 8}/belt", j, FrameMeta(ts=1.7e9 + i, seq=i).user_properties(), 0.0)
                   for i, j in enumerate(frames)]
        groups = [pending[i : i + 8] for i in range(0, len(pending), 8)]
        out[kind] = {
            "input": f"{model.input_shape} {model.input_dtype}",
            "stages_us": _per_frame_us(pipeline.process, frames, min_s),
            "model_us_batch1": _per_frame_us(lambda r, m=model: m.run(r[None]), rows, min_s),
            "model_us_batch8": _per_frame_us(model.run, batch8, min_s) / 8,
            "engine_us_batch8": _per_frame_us(engine.process, groups, min_s) / 8,
        }
        out[kind]["engine_frames_per_s"] = 1e6 / out[kind]["engine_us_batch8"]
        if kind == "float":
            out["naive_us"] = _per_frame_us(_naive_loop(model), frames, min_s)
    out["naive_frames_per_s"] = 1e6 / out["naive_us"]
    return out


def _naive_loop(model):
    interp = model._interp  # the same LiteRT interpreter, driven the simple way
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [1, *model.input_shape])
    interp.allocate_tensors()
    h, w = model.input_shape[:2]
    labels = model.labels

    def one(jpeg: bytes) -> str:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (w, h), interpolation=cv2.INTER_AREA)
        interp.set_tensor(inp["index"], (image.astype(np.float32) / 255.0)[None])
        interp.invoke()
        probs = interp.get_tensor(outp["index"])[0]
        best = int(probs.argmax())
        return json.dumps({"label": labels[best], "score": float(probs[best]), "outputs": probs.tolist()})

    return one


# ------------------------------------------------------------------------ publishers


class FramePublisher:
    """Publishes pool frames with v5 user-property metadata on ``frames/{cam}/belt`` from a thread."""

    def __init__(self, broker: Mosquitto, frames: list[bytes], tag: str) -> None:
        self.client = connect(broker.port, host=broker.host, client_id=f"bench-frames-{tag}")
        self.frames = frames
        self.sent = 0
        self.skipped = 0
        self.resent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _send(self, camera: str, seq: int) -> object:
        props = properties([("v", "1"), ("ts", repr(time.time())), ("seq", str(seq))])
        info = self.client.publish(f"frames/{camera}/belt", self.frames[seq % len(self.frames)], qos=0, properties=props)
        self.sent += 1
        return info

    def flat_out(self, cameras: list[str], duration_s: float, window: int = 64) -> None:
        """As fast as the socket takes them: at most ``window`` frames not yet written."""
        def loop():
            infos, seq, end = [], 0, time.monotonic() + duration_s
            while time.monotonic() < end and not self._stop.is_set():
                for cam in cameras:
                    infos.append(self._send(cam, seq))
                seq += 1
                while len(infos) > window:
                    oldest = infos.pop(0)
                    while not oldest.is_published() and not self._stop.is_set():
                        time.sleep(0.0002)
        self._run(loop)

    def closed_loop(self, cameras: list[str], duration_s: float) -> None:
        """One frame in flight per camera: the next is sent when the edge's result for the last arrives.

        With as many cameras as a batch holds, the edge always has work and
        nothing queues anywhere: results/s is the end-to-end capacity.
        """
        lock = threading.Lock()
        seqs = dict.fromkeys(cameras, 0)
        sent_at = dict.fromkeys(cameras, 0.0)
        end = time.monotonic() + duration_s

        def send(cam: str) -> None:
            with lock:
                seqs[cam] += 1
                sent_at[cam] = time.monotonic()
                seq = seqs[cam]
            if time.monotonic() < end:
                self._send(cam, seq)

        def on_result(_c, _u, msg) -> None:
            cam = msg.topic.split("/")[1]
            if cam in seqs:
                send(cam)

        ready = threading.Event()
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = on_result
        self.client.subscribe("results/+/+", qos=0)
        ready.wait(10)

        def loop():
            for cam in cameras:
                send(cam)
            while time.monotonic() < end and not self._stop.is_set():
                time.sleep(0.5)
                for cam in cameras:  # a frame that got no result (should not happen): send the next anyway
                    if time.monotonic() - sent_at[cam] > 2.0:
                        self.resent += 1
                        send(cam)
        self._run(loop)

    def paced(self, cameras: list[str], fps: float, duration_s: float) -> None:
        """Each camera at ``fps``, on an absolute schedule (a late tick is skipped, never bursted)."""
        def loop():
            interval, start = 1.0 / fps, time.monotonic()
            tick = 0
            while not self._stop.is_set():
                due = start + tick * interval
                if due - start >= duration_s:
                    break
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                elif now - due > interval:
                    skip = int((now - due) / interval)
                    self.skipped += skip * len(cameras)
                    tick += skip
                    continue
                for cam in cameras:
                    self._send(cam, tick)
                tick += 1
        self._run(loop)

    def _run(self, loop) -> None:
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def close(self) -> None:
        self._stop.set()
        self.join()
        close(self.client)


# ------------------------------------------------------------------------ end to end


def _edge_config(model: Path) -> dict:
    return {
        "node_id": "bench-vision",
        "sampling": {"enabled": False},
        "status_interval_s": 3600,
        "vision": {"cameras": [{"camera": "belt", "model": {"path": str(model)}}], "max_batch": 16},
    }


def _latencies(arrivals) -> tuple[list[float], list[float], float, float]:
    """(end-to-end latencies in ms, in-edge latencies in ms, first arrival, last arrival) of recorded results."""
    lat, edge, times = [], [], []
    for a in arrivals:
        r = json.loads(a.payload)
        lat.append((a.t - r["ts"]) * 1000.0)
        edge.append(r["latency_ms"])  # the edge's own figure: frame at its door -> result built
        times.append(a.t)
    return lat, edge, (min(times) if times else 0.0), (max(times) if times else 0.0)


def _measure(broker: Mosquitto, workdir: Path, model: Path, tag: str, drive) -> dict:
    """Start an edge, record results, run ``drive(publisher)`` until it returns, stop; return the figures."""
    (workdir / tag).mkdir(parents=True, exist_ok=True)
    edge = EdgeProcess(broker, workdir / tag, node_id=f"bench-{tag}", config=_edge_config(model))
    edge.start()
    recorder = ResultRecorder(broker, workdir / tag / "results.txt").start()
    pub = FramePublisher(broker, FRAMES, tag)
    try:
        cpu0 = edge.cpu_seconds()
        t0 = time.monotonic()
        offered_s = drive(pub)
        recorder.wait_for(10**9, stall_s=1.0, timeout_s=60)
        cpu = edge.cpu_seconds() - cpu0
        rss = edge.peak_rss_mb()
        wall = time.monotonic() - t0
    finally:
        pub.close()
    counters = edge.stop()
    arrivals = recorder.stop()
    lat, in_edge, first, last = _latencies(arrivals)
    received = counters.get("frames_received", 0)
    busy = max(last - first, 1e-9)
    return {
        "offered_frames": pub.sent,
        "offered_per_s": round(pub.sent / offered_s, 1),
        "publisher_skipped": pub.skipped,
        "publisher_resent": pub.resent,
        "received": received,
        "classified": counters.get("frames_classified", 0),
        "dropped_newest_wins": counters.get("frames_dropped_stale", 0),
        "lost_before_edge": max(0, pub.sent - received),
        "results": len(arrivals),
        "results_per_s": round(len(arrivals) / busy, 1) if len(arrivals) > 1 else 0.0,
        "latency_ms_p50": round(percentile(lat, 50), 2),
        "latency_ms_p99": round(percentile(lat, 99), 2),
        "latency_ms_max": round(max(lat), 2) if lat else float("nan"),
        "in_edge_latency_ms_p50": round(percentile(in_edge, 50), 2),
        "in_edge_latency_ms_p99": round(percentile(in_edge, 99), 2),
        "edge_cpu_s": round(cpu, 2),
        "edge_cpu_per_frame_ms": round(cpu / max(1, counters.get("frames_classified", 0)) * 1000, 3),
        "edge_peak_rss_mb": round(rss, 1),
        "wall_s": round(wall, 1),
    }


def end_to_end(broker: Mosquitto, workdir: Path, quick: bool) -> dict:
    seconds = 3.0 if quick else 15.0
    out: dict = {}
    for kind, model in MODELS.items():
        closed = _measure(broker, workdir, model, f"{kind}-capacity",
                          lambda p: (p.closed_loop([f"cam{i}" for i in range(CLOSED_LOOP_CAMERAS)], seconds), p.join(),
                                     seconds)[-1])
        paced = _measure(broker, workdir, model, f"{kind}-paced30",
                         lambda p: (p.paced(["cam0"], CAMERA_FPS, seconds), p.join(), seconds)[-1])
        capacity = max(closed["results_per_s"], CAMERA_FPS)
        cameras = max(2, round(2 * capacity / CAMERA_FPS))
        over = _measure(broker, workdir, model, f"{kind}-overload",
                        lambda p, n=cameras: (p.paced([f"cam{i}" for i in range(n)], CAMERA_FPS, seconds), p.join(), seconds)[-1])
        interval_ms = 1000.0 / CAMERA_FPS
        over.update({
            "cameras": cameras,
            "camera_fps": CAMERA_FPS,
            "offered_vs_capacity": round(over["offered_per_s"] / capacity, 2),
            "frame_interval_ms": round(interval_ms, 1),
            "p99_in_frame_intervals": round(over["latency_ms_p99"] / interval_ms, 2),
            "p99_below_target": over["latency_ms_p99"] < LATENCY_TARGET_INTERVALS * interval_ms,
        })
        paced["sustains_30fps"] = paced["results_per_s"] >= 0.97 * CAMERA_FPS and paced["dropped_newest_wins"] == 0
        flood = _measure(broker, workdir, model, f"{kind}-flood",
                         lambda p: (p.flat_out([f"cam{i}" for i in range(4)], seconds / 3), p.join(), seconds / 3)[-1])
        out[kind] = {"capacity": closed, "paced_30": paced, "overload_2x": over, "flood": flood}
    return out


def limit(broker: Mosquitto, quick: bool) -> dict:
    """Frames a bare paho subscriber receives per second, flat out from the same publisher."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got = [0]
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-limit-subscriber", protocol=paho.MQTTv5)
    ready = threading.Event()
    sub.on_subscribe = lambda *_a: ready.set()
    sub.on_message = lambda *_a: got.__setitem__(0, got[0] + 1)
    sub.connect(broker.host, broker.port)
    sub.subscribe("frames/+/belt", qos=0)
    sub.loop_start()
    ready.wait(10)
    seconds = 2.0 if quick else 8.0
    pub = FramePublisher(broker, FRAMES, "limit")
    t0 = time.monotonic()
    pub.flat_out([f"cam{i}" for i in range(4)], seconds)
    pub.join()
    while True:  # until the subscriber has drained what was sent
        before = got[0]
        time.sleep(0.5)
        if got[0] == before:
            break
    elapsed = time.monotonic() - t0 - 0.5
    pub.close()
    sub.disconnect()
    sub.loop_stop()
    return {"sent": pub.sent, "received": got[0], "frames_per_s": round(got[0] / elapsed, 1),
            "mb_per_s": round(got[0] * float(np.mean([len(f) for f in FRAMES])) / elapsed / 1e6, 1)}


FRAMES: list[bytes] = []


def run(workdir: Path, quick: bool = False) -> dict:
    """Every measurement above; ``workdir`` holds the broker's and the edges' files."""
    FRAMES[:] = frame_pool()
    out = {"preprocess": preprocess(quick)}
    with bench_broker(Path(workdir) / "vision") as broker:
        out["limit"] = limit(broker, quick)
        out["end_to_end"] = end_to_end(broker, Path(workdir) / "vision", quick)
    e2e = out["end_to_end"]
    out["summary"] = {
        "int8_capacity_frames_per_s": e2e["int8"]["capacity"]["results_per_s"],
        "float_capacity_frames_per_s": e2e["float"]["capacity"]["results_per_s"],
        "int8_sustains_30fps": e2e["int8"]["paced_30"]["sustains_30fps"],
        "int8_overload_p99_ms": e2e["int8"]["overload_2x"]["latency_ms_p99"],
        "int8_overload_p99_below_4_intervals": e2e["int8"]["overload_2x"]["p99_below_target"],
        "int8_overload_dropped": e2e["int8"]["overload_2x"]["dropped_newest_wins"],
        "naive_vs_engine_float": round(out["preprocess"]["naive_us"] / out["preprocess"]["float"]["engine_us_batch8"], 2),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-vision-") as tmp:
        result = run(Path(tmp), args.quick)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
