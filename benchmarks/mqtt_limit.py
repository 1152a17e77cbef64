"""(a) The limit: how fast can a bare paho subscriber receive readings at all?

A C publisher (``mosquitto_pub -l``) sends realistic vibration readings flat
out; a paho client whose ``on_message`` only counts receives them. Nothing
written in Python can consume MQTT messages faster than this on this machine,
so it is the ceiling for the edge (QoS 0 input) and the bridge (QoS 1).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from benchmarks.harness import FlatOutFeed, ReadingSource, bench_broker


class CountingSubscriber:
    """paho with an on_message that only counts and notes the time of the first and last message."""

    def __init__(self, host: str, port: int, topic: str, qos: int, expected: int) -> None:
        self.n = 0
        self.first = self.last = 0.0
        self.expected = expected
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{time.monotonic_ns()}", protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_connect = lambda client, *_a: client.subscribe(topic, qos=qos)
        self.client.connect(host, port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("bare subscriber did not get SUBACK")

    def _on_message(self, _client, _userdata, _msg) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if not self.n:
            self.first = now
        self.n += 1
        self.last = now
        if self.n >= self.expected:
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def rate(self) -> float:
        return (self.n - 1) / (self.last - self.first) if self.n > 1 and self.last > self.first else 0.0


def run(workdir: Path, quick: bool) -> dict:
    n = 5_000 if quick else 100_000
    source = ReadingSource(1)
    feed = FlatOutFeed(workdir, source, devices=1, per_device=n, tag="limit")
    out: dict = {"messages": n, "payload": source.sample()}
    with bench_broker(workdir / "limit") as broker:
        for qos in (0, 1):
            sub = CountingSubscriber(broker.host, broker.port, "sensors/+/vibration", qos, n)
            try:
                t0 = time.perf_counter()
                feed.start(broker, qos=qos)
                sub.done.wait(120)
            finally:
                feed.close()
                sub.close()
            out[f"qos{qos}"] = {
                "received": sub.n,
                "msg_per_s": round(sub.rate, 1),
                "end_to_end_msg_per_s": round(sub.n / (sub.last - t0), 1),
            }
    return out
