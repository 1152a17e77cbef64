"""(b) The naive baseline, and the bare echo that is the latency limit.

``naive``: what one would write by hand in an afternoon. A single-threaded
per-message loop inside paho's ``on_message``: json.loads -> numpy window per
device (128 samples, hop 64) -> the same features as the product, computed
with plain numpy for one window -> normalise -> interpreter invoke with batch
1 -> json.dumps -> publish QoS 1. No validation, no batching, no queue, no
outbox. The edge must not be slower, although it validates every reading,
writes results to a disk outbox first and acknowledges input only after that.

``echo``: on_message publishes ``{"device", "seq"}`` straight back: the MQTT
round trip through paho and the broker, nothing else (the latency limit).

``bare``: on_message only counts (paho acknowledges QoS 1 itself): what receiving
the stream costs at all, the CPU limit of the paired measurement (benchmarks/load.py).

Both run as their own process (``python -m benchmarks.naive --port P --mode M``)
so that they, like the edge, get a whole interpreter and GIL to themselves:
the process prints ``ready`` after its SUBACK and, on SIGTERM, one JSON line
with its counters.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

WINDOW, HOP, BANDS = 128, 64, 4
_SEQ = re.compile(rb'"seq":(\d+)')


def features(x: np.ndarray) -> np.ndarray:
    """mean, std, rms, peak, crest, kurtosis and 4 FFT band energies per channel, channel-major (30,)."""
    mean = x.mean(axis=0)
    c = x - mean
    var = (c * c).mean(axis=0)
    rms = np.sqrt((x * x).mean(axis=0))
    peak = np.abs(x).max(axis=0)
    crest = np.where(rms > 0, peak / np.where(rms > 0, rms, 1), 0)
    kurt = np.where(var > 1e-30, (c**4).mean(axis=0) / np.where(var > 1e-30, var * var, 1), 0)
    power = np.abs(np.fft.rfft(c, axis=0)) ** 2 / len(x)
    bands = [b.sum(axis=0) for b in np.array_split(power[1 : len(x) // 2 + 1], BANDS)]
    return np.stack([mean, np.sqrt(var), rms, peak, crest, kurt, *bands], axis=1).reshape(-1)


class Scorer:
    """The bundled model with batch 1 and its normalisation statistics, read straight from its files."""

    def __init__(self, model_path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        meta = json.loads(model_path.with_suffix(".json").read_text())
        self.name, self.version, self.threshold = meta["name"], meta["version"], meta["threshold"]
        self.mean = np.asarray(meta["normalization"]["mean"], dtype=np.float32)
        self.std = np.asarray(meta["normalization"]["std"], dtype=np.float32)
        self.interp = Interpreter(model_path=str(model_path))
        self.in_index = self.interp.get_input_details()[0]["index"]
        self.interp.resize_tensor_input(self.in_index, [1, len(self.mean)])
        self.interp.allocate_tensors()
        self.out_index = self.interp.get_output_details()[0]["index"]

    def score(self, window: np.ndarray) -> float:
        z = ((features(window) - self.mean) / self.std).astype(np.float32)
        self.interp.set_tensor(self.in_index, z[None, :])
        self.interp.invoke()
        return float(self.interp.get_tensor(self.out_index)[0, 0])


class NaiveEdge:
    """Everything in on_message, one reading and one window at a time."""

    def __init__(self, mode: str, model_path: Path, qos: int) -> None:
        self.mode = mode
        self.qos = qos
        self.scorer = Scorer(model_path) if mode == "naive" else None
        self.buffers: dict[str, np.ndarray] = {}
        self.readings = self.windows = 0

    def on_message(self, client, _userdata, msg) -> None:  # noqa: ANN001
        t0 = time.perf_counter()
        if self.mode == "bare":
            self.readings += 1
            return
        device = msg.topic.split("/")[1]
        if self.mode == "echo":
            seq = int(_SEQ.search(msg.payload).group(1))
            client.publish(f"results/{device}/echo", f'{{"device":"{device}","seq":{seq}}}', qos=self.qos)
            self.readings += 1
            self.windows += 1
            return
        reading = json.loads(msg.payload)
        samples = np.asarray(reading["values"], dtype=np.float32)
        buf = self.buffers.get(device)
        buf = samples if buf is None else np.concatenate([buf, samples])[-WINDOW:]
        self.buffers[device] = buf
        if len(buf) == WINDOW:  # 64-sample readings: every reading after the first completes a window
            s = self.scorer
            score = s.score(buf)
            anomaly = score > s.threshold
            result = {
                "v": 1, "device": device, "sensor": "vibration", "model": s.name, "model_version": s.version,
                "ts": reading["ts"] + (len(samples) - 1) / reading["rate_hz"], "seq": reading["seq"],
                "outputs": [score], "score": score, "anomaly": anomaly, "label": "anomaly" if anomaly else "normal",
                "latency_ms": (time.perf_counter() - t0) * 1000.0,
            }
            client.publish(f"results/{device}/{s.name}", json.dumps(result), qos=1)
            self.windows += 1
        self.readings += 1


def main(argv: list[str] | None = None) -> int:
    from edgeloop.edge.config import BUNDLED_MODEL

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--mode", choices=["naive", "echo", "bare"], default="naive")
    ap.add_argument("--qos", type=int, choices=[0, 1], default=1, help="subscription QoS")
    ap.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    ap.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version")
    args = ap.parse_args(argv)

    loop = NaiveEdge(args.mode, args.model, args.qos)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{args.mode}",
                         protocol=paho.MQTTv5 if args.protocol == "5" else paho.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_message = loop.on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe("sensors/+/vibration", qos=args.qos)
    client.connect(args.host, args.port)
    client.loop_start()
    if not subscribed.wait(10):
        print("no SUBACK", file=sys.stderr)
        return 1
    print("ready", flush=True)
    stop.wait()
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"readings_in": loop.readings, "results_out": loop.windows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
