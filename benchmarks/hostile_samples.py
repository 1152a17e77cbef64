"""Bridge memory after one device sends 12 MB of wide samples (issue 11, item 6): RSS before and after.

    .venv/bin/python -m benchmarks.hostile_samples [--mb 12]

Real mosquitto and influxd on free loopback ports, the bridge in this process with the sample
store and the drift monitor on (default settings). The device announces a version of its own in
its status (what a hostile device on the shipped ACL can do; no registry metadata, so no width
check applies), then sends rows of MAX_FEATURES floats, 3 per message, until ``--mb`` MB are
sent. Prints the bridge process's RSS growth and what the loop did with the messages.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeloop.bridge import Bridge, BridgeConfig
from edgeloop.contract import MAX_FEATURES, ModelRef, NodeStatus, SampleBatch, SampleRow
from edgeloop.mqtt import MqttLink, MqttSettings, wait_for_all
from lab.servers import InfluxDB1, Mosquitto, eventually

SHA = "ab" * 32


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def batch(seq: int, rows: int, width: int) -> bytes:
    rng = np.random.default_rng(seq)
    return SampleBatch(device="dev-evil", sensor="s", model="m1", model_version="evil-1", model_sha256=SHA,
                       rows=[SampleRow(ts=time.time(), seq=seq * rows + k, features=rng.normal(size=width).round(6).tolist(),
                                       score=0.5, anomaly=True, reason="random") for k in range(rows)]
                       ).model_dump_json().encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=12.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as broker, \
            InfluxDB1(Path(tmp) / "influx") as influx:
        influx.create_database("bench")
        cfg = BridgeConfig.model_validate({
            "mqtt": {"url": broker.url},
            "influx": {"api": "v1", "url": influx.url, "db": "bench"},
            "samples": {"enabled": True, "dir": str(Path(tmp) / "samples")},
            "drift": {"enabled": True},
            "retrain": {"registry": str(Path(tmp) / "registry")},
        })
        bridge = Bridge(cfg)
        bridge.start(10)
        device = MqttLink(MqttSettings(url=broker.url), "dev-evil")
        device.start(10)
        try:
            status = NodeStatus(node="dev-evil", state="online", ts=time.time(),
                                models={"m1": ModelRef(version="evil-1", sha256=SHA)})
            assert wait_for_all([device.publish("status/dev-evil", status.model_dump_json().encode(), qos=1,
                                                retain=True)], 10)
            payloads, sent = [], 0
            while sent < args.mb * 1e6:
                payloads.append(batch(len(payloads), 3, MAX_FEATURES))
                sent += len(payloads[-1])
            time.sleep(2.0)
            gc.collect()
            before = rss_mb()
            for p in payloads:
                assert wait_for_all([device.publish("samples/dev-evil/m1", p, qos=1)], 30)
            loop, n_sent = bridge.loop, len(payloads)
            eventually(lambda: loop.batches + sum(loop.rejects.by_reason.values()) >= n_sent, timeout=300,
                       message="loop did not take every message")
            del payloads
            gc.collect()
            after = rss_mb()
            print(json.dumps({
                "sent_mb": round(sent / 1e6, 1), "messages": loop.received, "rss_before_mb": round(before, 1),
                "rss_after_mb": round(after, 1), "rss_growth_mb": round(after - before, 1),
                "batches_taken": loop.batches, "rejected": dict(loop.rejects.by_reason),
                "store": loop.store.stats(),
            }))
        finally:
            device.stop()
            bridge.stop(10)


if __name__ == "__main__":
    main()
