"""Edge memory under a flood of made-up device ids (issue 11, finding 7).

The engine in process with the bundled model and the default pipeline (max_streams 10,000): one
reading each from 100,000 device ids nobody has. Prints RSS before and after. Run it on two
checkouts for a before/after pair: ``.venv/bin/python -m benchmarks.stream_flood``.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from edgeloop.edge.config import BUNDLED_MODEL, PipelineSettings
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.rejects import Rejects

DEVICES = 100_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    model = TfliteModel(BUNDLED_MODEL, max_batch=64)
    engine = Engine([PipelineRunner.build(PipelineSettings(), model)], Rejects("edge", logging.getLogger("flood")),
                    node_id="flood")
    payload = json.dumps({"v": 1, "ts": 1.7e9, "seq": 0, "values": np.zeros((64, 3)).tolist(), "rate_hz": 1000.0}).encode()
    before = rss_mb()
    for i in range(DEVICES):
        engine.ingest(f"sensors/fake-{i}/vibration", payload, float(i))
    print(json.dumps({"devices": DEVICES, "rss_before_mb": round(before), "rss_after_mb": round(rss_mb()),
                      "rejected": engine.rejects.total}))


if __name__ == "__main__":
    main()
