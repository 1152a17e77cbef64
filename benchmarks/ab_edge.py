"""``python -m benchmarks.ab_edge BASE_PYTHON [--rate R | --flat] [--runs N]``: the edge of another tree against this one.

Why: a before/after claim about the edge's CPU needs both builds measured under the same
neighbours. This alternates them (base, this tree, base, ...) through the same harness as
``make bench`` (``benchmarks.load.paced`` or ``flat_out``: a fresh broker per run, CPU from /proc),
and prints each run and the medians. ``BASE_PYTHON`` is the interpreter of a venv whose editable
install points at the other checkout, e.g. a ``git worktree`` of the commit before a change::

    git worktree add /tmp/base <commit>
    cp -a .venv /tmp/base/.venv && sed -i "s#$PWD#/tmp/base#g" /tmp/base/.venv/lib/python3*/site-packages/__editable__*
    python -m benchmarks.ab_edge /tmp/base/.venv/bin/python --rate 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from benchmarks import load
from benchmarks.harness import EdgeProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_python", help="the other tree's venv interpreter")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced readings/s (default 1000)")
    parser.add_argument("--flat", action="store_true", help="flat out instead of paced")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--config", type=json.loads, default=None, help="edge config overrides, JSON")
    args = parser.parse_args()
    programs = {"base": [args.base_python, "-m", "edgeloop.cli"], "this": None}
    runs: dict[str, list[dict]] = {name: [] for name in programs}
    with tempfile.TemporaryDirectory(prefix="edgeloop-ab-") as tmp:
        for i in range(args.runs):
            for name, program in programs.items():
                consumer = load.Consumer(lambda broker, workdir, program=program:
                                         EdgeProcess(broker, workdir, config=args.config, program=program))
                workdir = Path(tmp) / f"{name}{i}"
                if args.flat:
                    r = load.flat_out(workdir, False, consumer, "ab")
                    row = {"readings_per_s": r["readings_per_s"], "cpu_ms_per_reading": r["cpu_ms_per_reading"],
                           "peak_rss_mb": r["peak_rss_mb"]}
                else:
                    r = load.paced(workdir, False, consumer, "ab", args.rate)
                    row = {"cpu_ms_per_reading": r["cpu_ms_per_reading"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                           "complete": r["results_received"] == r["expected_results"]}
                runs[name].append(row)
                print(name, i + 1, row, flush=True)
    for name, rows in runs.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "complete"}
        print(name, "median", medians, flush=True)


if __name__ == "__main__":
    main()
