"""What finding the refused points of a partial write costs (``python -m benchmarks.partial_writes``).

influxd 1.x answers a partly refused request with 400 and a ``dropped=N`` that
does not say which points it stored (and is sometimes wrong), so the bridge's
writer (``edgeloop.bridge.batching``) sends the request again in halves until
every point is written or refused alone. This measures that search against a
real influxd with ``max-values-per-tag = 50``: batches of 5,000 points of 50
known devices, with K points of new devices (refused) spread at random. It
prints, per K, what the writer counted, what influxd holds, the extra
requests and the time. Nothing here is a timed test; the machine is shared.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time

from lab.servers import InfluxDB1

from edgeloop.bridge.batching import Batch, BatchWriter
from edgeloop.bridge.config import InfluxSettings
from edgeloop.bridge.sinks import make_sink
from edgeloop.rejects import Rejects

T0 = 1_700_000_000_000_000_000


def run(n: int = 5000, refused: tuple[int, ...] = (1, 10, 100, 5000)) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-partial-") as tmp, \
            InfluxDB1(tmp, max_values_per_tag=50) as influxd:
        for k in refused:
            db = f"partial_{k}"
            influxd.create_database(db)
            influxd.write("\n".join(f"inference,device=k{i} seq=-1i {T0}" for i in range(50)), db)
            bad = set(random.Random(k).sample(range(n), k))
            lines = [f"inference,device={f'new{i}' if i in bad else f'k{i % 50}'} seq={i}i {T0 + 1 + i}"
                     for i in range(n)]
            sink = make_sink(InfluxSettings(api="v1", url=influxd.url, db=db))
            writer = BatchWriter(sink, Rejects("bench", logging.getLogger("bench.partial")), "influx:bench",
                                 lambda deliveries: None)
            batch = Batch()
            batch.add(lines, "bench")
            started = time.perf_counter()
            writer.write(batch)
            elapsed = time.perf_counter() - started
            sink.close()
            stored = len(influxd.points("SELECT seq FROM inference WHERE seq >= 0", db))
            rows.append({"points": n, "refused_sent": k, "written": writer.points_written,
                         "refused": writer.points_refused, "unconfirmed": writer.points_unconfirmed,
                         "stored": stored, "probe_writes": writer.probe_writes, "seconds": round(elapsed, 3)})
    return rows


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    print("| points | refused in it | written | refused | unconfirmed | influxd holds | extra requests | s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in run():
        print(f"| {r['points']} | {r['refused_sent']} | {r['written']} | {r['refused']} | {r['unconfirmed']} | "
              f"{r['stored']} | {r['probe_writes']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
