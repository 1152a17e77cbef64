"""Deployment figures: time to roll a signed model out to N edges, and the worker's pause at the swap.

    .venv/bin/python -m benchmarks.deploy [--edges 5] [--out deploy.json]

Real mosquitto on a free loopback port, edges in-process (EdgeApp, as
``edgeloop edge run`` starts it) with readings flowing (4 simulated devices,
200 readings/s in total), 64 KiB chunks. Artifacts are the bundled model padded
to 8 KB / 1 MiB / 8 MiB (same behaviour, different bytes). Reported per size:
``deploy()`` returning (every edge runs the version) and every edge past its
probation (``canary_windows`` = 20) and reporting ``healthy``; then a canary
(one edge) + fleet rollout; and the time the inference worker spends in a swap.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from deploy_fixtures import MODEL, Stream, edge_config, make_keys, seeded_registry, start_edge, variant

from edgeloop.bridge.deployer import Deployer
from lab.servers import Mosquitto, eventually
from edgeloop.mqtt import MqttSettings
from edgeloop.edge.model_swap import ModelSwapper


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    swaps: list[float] = []
    original = ModelSwapper._swap_in

    def timed(self, engine, publish, prepared):
        started = time.perf_counter()
        original(self, engine, publish, prepared)
        swaps.append(time.perf_counter() - started)

    ModelSwapper._swap_in = timed
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-bench-deploy-"))
    os.environ["EDGELOOP_STATE_DIR"] = str(tmp / "state")  # the edges' outboxes, not the user's
    rows = []
    with Mosquitto(tmp / "mosquitto") as broker:
        keys = make_keys(tmp)
        registry = seeded_registry(tmp / "registry")
        deployer = Deployer.connect(MqttSettings(url=broker.url), registry, keys.signing)
        nodes = [f"edge-{i}" for i in range(args.edges)]
        edges = [start_edge(edge_config(broker.url, n, keys, tmp, canary_windows=20)) for n in nodes]
        eventually(lambda: set(nodes) <= set(deployer.nodes()), timeout=30, message="edges not online")
        stream = Stream(broker.port, devices=4)
        stream.run(per_s=200, limit=10**6)
        try:
            for label, pad in [("8KB", 16), ("1MiB", 1 << 20), ("8MiB", 8 << 20)]:
                content, meta = variant(f"pad{pad}", pad=pad)
                registry.add(MODEL, content, meta, parent=registry.current(MODEL))
                started = time.perf_counter()
                report = deployer.deploy(MODEL, meta.version, targets="*")
                running = time.perf_counter() - started

                def healthy(version: str = meta.version) -> bool:
                    states = [deployer.nodes()[n].last_deploy.get(MODEL) for n in nodes]
                    return all(s is not None and s.version == version and s.state == "healthy" for s in states)

                eventually(healthy, timeout=120, message=f"{label} not healthy everywhere")
                rows.append({"artifact": label, "bytes": len(content), "outcome": report.outcome,
                             "all_running_ms": running * 1000, "all_healthy_ms": (time.perf_counter() - started) * 1000})
            content, meta = variant("canary-ok", pad=32)
            registry.add(MODEL, content, meta, parent=registry.current(MODEL))
            started = time.perf_counter()
            report = deployer.deploy(MODEL, meta.version, targets="*", canary=["edge-0"])
            rows.append({"artifact": "8KB canary+fleet", "bytes": len(content), "outcome": report.outcome,
                         "all_running_ms": (time.perf_counter() - started) * 1000})
        finally:
            stream.close()
            for edge in edges:
                edge.stop()
            deployer.close()
    result = {"edges": args.edges, "rows": rows, "swap_ms": {
        "n": len(swaps), "median": statistics.median(swaps) * 1000, "max": max(swaps) * 1000}}
    for row in rows:
        print(f"{row['artifact']:<18} {row['bytes']:>9} B  {row['outcome']:<9} all running {row['all_running_ms']:7.0f} ms"
              + (f"  all healthy {row['all_healthy_ms']:7.0f} ms" if "all_healthy_ms" in row else ""))
    print(f"worker pause per swap: median {result['swap_ms']['median']:.2f} ms, max {result['swap_ms']['max']:.2f} ms "
          f"(n={len(swaps)})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
