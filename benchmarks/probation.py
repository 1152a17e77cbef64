"""Cost of probation's shadow run: the engine's per-window time with and without the proven model beside it.

    .venv/bin/python -m benchmarks.probation [--out probation.json]

In-process, no broker: the bundled model as the proven runner and a byte-different copy of it as
the candidate, windows of 8 simulated devices. Per batch size (1, 16, 64): ``Engine._infer`` of the
candidate (pipeline, interpreter, results encoded) without and with a ``ShadowRun`` attached
(the proven pipeline and interpreter on the same windows, plus the per-device figures), best of 7
``timeit`` repeats of this process's CPU time (a shared machine's load inflates wall time), in
microseconds per window. The shadow runs during probation only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from deploy_fixtures import variant

from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.config import EdgeConfig
from edgeloop.edge.engine import PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.probation import ShadowRun
from edgeloop.edge.startup import build_engine
from edgeloop.rejects import Rejects


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = EdgeConfig(node_id="bench")
    engine = build_engine(cfg, Rejects("edge", logging.getLogger("bench")))
    proven = engine.runners["vibration"]
    candidate = PipelineRunner.build(cfg.pipelines[0], TfliteModel.from_bytes(*variant("1.1.0")))
    for topic, reading in FleetSimulator(8, seed=3, sensors=("vibration",)).readings(count=1000):
        engine.ingest(topic, reading.model_dump_json().encode(), time.monotonic())
    pending, proven.pending = proven.pending, []
    rows = []
    for batch in (1, 16, 64):
        chunk = pending[:batch]
        number = max(400 // batch, 40)
        row = {"batch": batch}
        for label, shadow in (("without_us", None), ("with_us", ShadowRun(candidate, proven, 10**12))):
            candidate.shadow = shadow
            best = min(timeit.repeat(lambda: engine._infer(candidate, list(chunk)), number=number, repeat=7,
                                     timer=time.process_time))
            row[label] = round(best / number / batch * 1e6, 1)
        row["shadow_us"] = round(row["with_us"] - row["without_us"], 1)
        rows.append(row)
        print(f"batch {batch:3d}: {row['without_us']:8.1f} us/window without the shadow run, "
              f"{row['with_us']:8.1f} with (+{row['shadow_us']:.1f})")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
