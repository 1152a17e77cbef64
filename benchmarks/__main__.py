"""``python -m benchmarks [--quick] [--only NAME[,NAME]]`` (``make bench``): measure, print, write.

Measurements, in this order (names for ``--only``):

    limit    bare paho receive rate from mosquitto_pub -l, QoS 0 and 1
    naive    the hand-written per-message loop, flat out
    edge     the edge runtime (``edgeloop edge run``), flat out; CPU and peak RSS
    latency  echo, naive and edge at 1,000 and 5,000 readings/s: p50/p99, CPU, RSS
    paired   the edge and a bare paho subscriber on the same paced 1,000 readings/s stream at
             once: CPU per message of each (issue 12)
    imports  RSS each import adds in a fresh interpreter (numpy, pydantic, paho, LiteRT, the edge)
    bridge   bridge -> influxd (v1) and VictoriaMetrics (v2), 1 and 100 results/msg,
             with the bare MQTT drain, the bare write loop and the naive bridge
    drain    issue 12: bridge processes (1 and 2 in a $share group) draining a queued
             backlog into influxd, beside a bare paho process, the bare write loop and,
             when EDGELOOP_PEER_TELEGRAF names its binary, Telegraf
    codecs   decode + engine ingest per payload format, in process (benchmarks/codecs.py),
             the edgeloop codec beside the ingest path from before codecs
    workers  the edge with ``workers: 1`` and ``workers: 2`` (runtime/workers.py), flat out and
             paced at 5,000/s: the scaling from one to two inference processes; CPU and RSS
             count every process of the edge

Every server is started here, on free loopback ports, and stopped at the end.
Writes ``benchmarks/results/latest.json`` and a timestamped copy; a full run
(no ``--quick``, no ``--only``) also rewrites ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import bridge, bridge_drain, codecs, imports, load, mqtt_limit, report
from benchmarks.harness import machine_facts

HERE = Path(__file__).resolve().parent
NAMES = ("limit", "naive", "edge", "latency", "paired", "imports", "bridge", "drain", "codecs", "workers")
RATES = (1000.0, 5000.0)


def _latency(workdir: Path, quick: bool) -> dict:
    out: dict = {"echo": {}, "naive": {}, "edge": {}}
    consumers = {"echo": load.script("echo"), "naive": load.script("naive"), "edge": load.edge()}
    for rate in RATES:
        for name, consumer in consumers.items():
            _progress(f"latency: {name} at {rate:,.0f} readings/s")
            try:
                out[name][str(int(rate))] = load.paced(workdir, quick, consumer, f"latency-{name}-{int(rate)}", rate)
            except RuntimeError as exc:  # e.g. did not drain in time: that run failed, the others still count
                traceback.print_exc()
                out[name][str(int(rate))] = {"error": str(exc).splitlines()[0]}
    return out


RUNNERS = {
    "limit": lambda w, q: mqtt_limit.run(w, q),
    "naive": lambda w, q: load.flat_out(w, q, load.script("naive"), "naive-flat"),
    "edge": lambda w, q: {
        "default": load.flat_out(w, q, load.edge(), "edge-flat"),
        "batch_results": load.flat_out(w, q, load.edge({"output": {"batch_results": True}}), "edge-flat-batched"),
    },
    "latency": _latency,
    "paired": lambda w, q: {
        "default": load.paired(w, q),
        # The same with MQTT 3.1.1 on both sides (no v5 properties to parse per message); the broker's
        # in-flight window is 1000 here, so the edge is told (input.broker_inflight, docs/reliability.md).
        "mqtt311": load.paired(w, q, tag="paired-311", protocol="3.1.1",
                               edge_config={"mqtt": {"protocol": "3.1.1"}, "input": {"broker_inflight": 1000}}),
    },
    "imports": lambda w, q: imports.run(q),
    "bridge": lambda w, q: bridge.run(w, q),
    "drain": lambda w, q: bridge_drain.run(w, q),
    "codecs": lambda w, q: codecs.run(w, q),
    "workers": lambda w, q: {
        f"w{n}": {"flat": load.flat_out(w, q, load.edge({"workers": n}), f"edge-flat-w{n}"),
                  "5000": _or_error(lambda n=n: load.paced(w, q, load.edge({"workers": n}), f"paced-w{n}-5000", 5000.0))}
        for n in (1, 2)
    },
}


def _or_error(run) -> dict:  # noqa: ANN001
    """A paced run that failed (did not drain in time) is a result -- it did not keep up -- not a crash."""
    try:
        return run()
    except RuntimeError as exc:
        traceback.print_exc()
        return {"error": str(exc).splitlines()[0]}


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description="edgeloop benchmarks (see docs/benchmarks.md)")
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    ap.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="directory for the JSON results")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="write the Markdown summary here (default: benchmarks/RESULTS.md, full runs only)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, recorded results)")
    args = ap.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(args.only) - set(NAMES)
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(NAMES)})")
    if args.markdown is None and not args.quick and set(args.only) == set(NAMES):
        args.markdown = HERE / "RESULTS.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m benchmarks " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-bench-"))
    result: dict = {"machine": machine_facts(), "quick": args.quick, "only": args.only, "benchmarks": {}, "errors": {}}
    t0 = time.monotonic()
    try:
        for name in NAMES:
            if name not in args.only:
                continue
            _progress(f"{name}: running")
            started = time.monotonic()
            try:
                result["benchmarks"][name] = RUNNERS[name](workdir, args.quick)
            except Exception as exc:  # noqa: BLE001 -- one broken measurement must not lose the others
                traceback.print_exc()
                result["errors"][name] = f"{type(exc).__name__}: {exc}"
            _progress(f"{name}: done in {time.monotonic() - started:.0f} s")
    finally:
        if args.keep:
            _progress(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    rows = report.build_rows(result["benchmarks"])
    print(report.text_table(rows))
    for name, err in result["errors"].items():
        print(f"ERROR in {name}: {err}")
    latest = report.write(result, rows, args.out, args.markdown, command)
    print(f"\nresults: {latest}" + (f"; summary: {args.markdown}" if args.markdown else ""))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
