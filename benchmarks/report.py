"""Turn one run's measurements into rows (value, limit, baseline, ratios, target), a table and files.

Why ratios: the machine is shared and noisy, so an absolute figure says little
on its own; the limit and the naive baseline are measured in the same run,
under the same noise, and the ratios to them are what carries over.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    section: str
    name: str
    value: float | None
    unit: str
    limit: float | None = None
    baseline: float | None = None
    target: str | None = None  # e.g. ">= 1.0x baseline", "<= 25 ms"
    passed: bool | None = None
    higher_is_better: bool = True

    @property
    def vs_limit(self) -> float | None:
        return _ratio(self.value, self.limit)

    @property
    def vs_baseline(self) -> float | None:
        return _ratio(self.value, self.baseline)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def _get(data: dict, *path: str):  # noqa: ANN202
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def build_rows(b: dict) -> list[Row]:
    """Rows for whatever ran (``--only`` may have skipped some measurements)."""
    rows: list[Row] = []
    q0 = _get(b, "limit", "qos0", "msg_per_s")
    q1 = _get(b, "limit", "qos1", "msg_per_s")
    if q0 is not None:
        rows.append(Row("limit", "bare paho receive, QoS 0 (readings from mosquitto_pub -l)", q0, "msg/s"))
        rows.append(Row("limit", "bare paho receive, QoS 1", q1, "msg/s"))

    naive = _get(b, "naive", "readings_per_s")
    if naive is not None:
        rows.append(Row("throughput", "naive loop, flat out (QoS 1 in)", naive, "readings/s", limit=q1))
    edge = _get(b, "edge", "default", "readings_per_s")
    if edge is not None:
        # Issue 12: >= 0.6x the bare paho QoS 1 receive limit; issue 2: >= the naive loop.
        rows.append(Row("throughput", "edge runtime, flat out (default config)", edge, "readings/s", limit=q1,
                        baseline=naive, target=">= 0.6x limit, >= 1.0x naive",
                        passed=None if naive is None or q1 is None else edge >= 0.6 * q1 and edge >= naive))
        rows.append(Row("throughput", "edge CPU per reading, flat out", _get(b, "edge", "default", "cpu_ms_per_reading"),
                        "ms", baseline=_get(b, "naive", "cpu_ms_per_reading"), higher_is_better=False))
    batched = _get(b, "edge", "batch_results", "readings_per_s")
    if batched is not None:
        rows.append(Row("throughput", "edge runtime, flat out, output.batch_results: true", batched, "readings/s",
                        limit=q1, baseline=naive))

    lat = b.get("latency") or {}
    for rate in ("1000", "5000"):
        edge_r = _get(lat, "edge", rate)
        if edge_r is None:
            continue
        if "error" in edge_r:  # the run failed (e.g. the edge did not drain in time): it did not keep up
            rows.append(Row("latency", f"edge @ {int(rate):,}/s: the run failed (did not drain in time or exited "
                            "non-zero; latest.json has why)", None, "-", target="keeps up", passed=False))
            continue
        for q in ("p50", "p99"):
            target = passed = None
            echo_p99 = _get(lat, "echo", rate, "p99_ms")
            if rate == "1000" and q == "p99" and echo_p99:
                target = "<= 1.5x limit, <= 25 ms"  # issue 12: the echo process's p99; issue 2: 25 ms
                passed = edge_r["p99_ms"] <= 1.5 * echo_p99 and edge_r["p99_ms"] <= 25.0
            rows.append(Row("latency", f"edge {q} reading->result @ {int(rate):,}/s", edge_r[f"{q}_ms"], "ms",
                            limit=_get(lat, "echo", rate, f"{q}_ms"), baseline=_get(lat, "naive", rate, f"{q}_ms"),
                            target=target, passed=passed, higher_is_better=False))
        rows.append(Row("latency", f"edge CPU @ {int(rate):,}/s", edge_r["cpu_percent"], "% of a core",
                        limit=_get(lat, "echo", rate, "cpu_percent"), baseline=_get(lat, "naive", rate, "cpu_percent"),
                        higher_is_better=False))

    paired = b.get("paired") or {}
    if paired.get("default"):
        p = paired["default"]
        e, bare = p["edge"], p["bare"]
        ratio = p.get("cpu_ratio")
        rows.append(Row("paired", f"edge CPU per reading, paced {p['offered_per_s']:,.0f}/s "
                        f"(limit: bare paho QoS 1 subscriber, same stream, same time)", e["cpu_us_per_reading"], "us",
                        limit=bare["cpu_us_per_message"], target="<= 2.0x limit (stretch 1.5x)",
                        passed=None if ratio is None else ratio <= 2.0, higher_is_better=False))
        rows.append(Row("paired", "edge CPU, same paced run", e["cpu_percent"], "% of a core",
                        limit=bare["cpu_percent"], higher_is_better=False))
        rows.append(Row("paired", "edge p99 reading->result, same paced run", e["p99_ms"], "ms", higher_is_better=False))
    if paired.get("mqtt311"):
        p = paired["mqtt311"]
        rows.append(Row("paired", "the same, MQTT 3.1.1 on both sides (edge CPU per reading; limit: bare 3.1.1)",
                        p["edge"]["cpu_us_per_reading"], "us", limit=p["bare"]["cpu_us_per_message"],
                        higher_is_better=False))

    rss = [r for r in [_get(b, "edge", "default", "peak_rss_mb"), *(_get(lat, "edge", k, "peak_rss_mb") for k in ("1000", "5000")),
                      _get(b, "paired", "default", "edge", "peak_rss_mb")] if r is not None]
    if rss:
        echo_rss = [r for r in (_get(lat, "echo", k, "peak_rss_mb") for k in ("1000", "5000")) if r is not None]
        naive_rss = [r for r in [_get(b, "naive", "peak_rss_mb"),
                                 *(_get(lat, "naive", k, "peak_rss_mb") for k in ("1000", "5000"))] if r is not None]
        rows.append(Row("memory", "edge peak RSS (VmHWM, max over its runs)", max(rss), "MB",
                        limit=max(echo_rss) if echo_rss else None, baseline=max(naive_rss) if naive_rss else None,
                        target="<= 60 MB", passed=max(rss) <= 60.0, higher_is_better=False))
    for label, mb in (b.get("imports") or {}).items():
        name = "bare interpreter" if label == "bare_interpreter_mb" else f"import {label}"
        rows.append(Row("memory", f"RSS of {name}" if label == "bare_interpreter_mb" else f"RSS added by {name}",
                        mb, "MB", higher_is_better=False))

    br = b.get("bridge")
    if br:
        for name, label in (("influxdb_v1", "influxd 1.x (v1)"), ("victoriametrics_v2", "VictoriaMetrics (v2)")):
            sink = _get(br, name, "sink_alone_points_per_s")
            rows.append(Row("bridge", f"limit: bare write loop -> {label}", sink, "points/s"))
            for per_msg in (1, 100):
                key = f"{per_msg}_per_msg"
                value = _get(br, name, f"bridge_{key}", "points_per_s")
                mqtt = _get(br, f"bare_paho_qos1_{key}_points_per_s")
                limit = min(x for x in (sink, mqtt) if x is not None) if (sink or mqtt) else None
                target = passed = None
                if name == "victoriametrics_v2" and value is not None:
                    target, passed = ">= 20,000 points/s", value >= 20_000
                rows.append(Row("bridge", f"bridge -> {label}, {per_msg} result(s)/msg", value, "points/s",
                                limit=limit, baseline=_get(br, name, f"naive_{key}_points_per_s"),
                                target=target, passed=passed))
        for per_msg in (1, 100):
            rows.append(Row("bridge", f"limit: bare paho QoS 1 drain, {per_msg} result(s)/msg",
                            _get(br, f"bare_paho_qos1_{per_msg}_per_msg_points_per_s"), "points/s"))
    for name, c in (b.get("codecs") or {}).items():
        base = (b.get("codecs") or {}).get(c.get("baseline") or "")
        rows.append(Row("codecs", f"ingest {name}", c["readings_per_s"], "readings/s", limit=q1,
                        baseline=base["readings_per_s"] if base else None))
        target = passed = None
        if base:  # the edgeloop codec must not be slower than the path before codecs (5%: run-to-run noise)
            target, passed = "<= 1.05x before", c["cpu_us_per_reading"] <= 1.05 * base["cpu_us_per_reading"]
        rows.append(Row("codecs", f"CPU per reading, {name}", c["cpu_us_per_reading"], "us",
                        baseline=base["cpu_us_per_reading"] if base else None, target=target, passed=passed,
                        higher_is_better=False))
    rows += drain_rows(b.get("drain"))
    rows += worker_rows(b.get("workers"), q1)
    return rows


def worker_rows(w: dict | None, q1: float | None) -> list[Row]:
    """``workers: 2`` against ``workers: 1`` in the same run (the ratio to baseline is the scaling)."""
    if not w:
        return []
    rows: list[Row] = []
    one, two = w.get("w1") or {}, w.get("w2") or {}
    rows.append(Row("workers", "edge flat out, workers: 2 (baseline: workers: 1, same run)",
                    _get(two, "flat", "readings_per_s"), "readings/s", limit=q1,
                    baseline=_get(one, "flat", "readings_per_s")))
    rows.append(Row("workers", "edge CPU per reading, flat out, every process, workers: 2 (baseline: 1)",
                    _get(two, "flat", "cpu_ms_per_reading"), "ms", baseline=_get(one, "flat", "cpu_ms_per_reading"),
                    higher_is_better=False))
    for n, run in (("1", one), ("2", two)):
        paced = run.get("5000") or {}
        if not paced:
            continue
        if "error" in paced:
            rows.append(Row("workers", f"edge @ 5,000/s, workers: {n}: did not keep up ({paced['error'][:60]})",
                            None, "-", target="keeps up", passed=False))
            continue
        kept_up = paced["results_received"] >= paced["expected_results"] and paced["achieved_per_s"] >= 0.95 * 5000
        rows.append(Row("workers", f"edge p99 reading->result @ 5,000/s, workers: {n}", paced["p99_ms"], "ms",
                        target="keeps up (every result, p99 < 1 s)", passed=kept_up and paced["p99_ms"] < 1000.0,
                        higher_is_better=False))
    rss = _get(two, "flat", "peak_rss_mb")
    rows.append(Row("workers", "edge peak RSS, workers: 2 (sum over its processes; baseline: 1)", rss, "MB",
                    baseline=_get(one, "flat", "peak_rss_mb"), higher_is_better=False))
    return rows


def _median(runs: list[dict] | None, key: str) -> float | None:
    values = sorted(r[key] for r in runs or [] if r.get(key) is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def drain_rows(dr: dict | None) -> list[Row]:
    """Issue 12's bridge goals, process against process (``benchmarks/bridge_drain.py``): medians of the runs.

    For the rows comparing with Telegraf, its figure stands in the *naive* column."""
    if not dr:
        return []
    rows: list[Row] = []
    sec = "drain"
    n, runs = dr.get("points"), dr.get("runs")
    bare_write = _median([{"v": v} for v in dr.get("bare_write_points_per_s", [])], "v")
    rows.append(Row(sec, f"drain limit: bare write loop -> influxd 1.x ({n:,} points, median of {runs})", bare_write,
                    "points/s"))
    one, hundred = dr.get("1_per_msg", {}), dr.get("100_per_msg", {})
    paho1 = _median(one.get("paho"), "msg_per_s")
    tg = one.get("telegraf")
    tg_rate, tg_cpu = _median(tg, "msg_per_s"), _median(tg, "cpu_us_per_msg")
    rows.append(Row(sec, "drain limit: bare paho QoS 1 process, 1 result/msg", paho1, "msg/s"))
    rows.append(Row(sec, "drain limit: bare paho CPU per message", _median(one.get("paho"), "cpu_us_per_msg"),
                    "us", higher_is_better=False))
    if one.get("paho_v311"):
        rows.append(Row(sec, "drain: bare paho process on MQTT 3.1.1 (the bridge needs v5), 1 result/msg",
                        _median(one["paho_v311"], "msg_per_s"), "msg/s", limit=paho1))
        rows.append(Row(sec, "drain: bare paho CPU per message on MQTT 3.1.1", _median(one["paho_v311"], "cpu_us_per_msg"),
                        "us", limit=_median(one.get("paho"), "cpu_us_per_msg"), higher_is_better=False))
    if tg:
        rows.append(Row(sec, "drain peer: Telegraf 1 result/msg (json_v2, 4 tags, 5 fields)", tg_rate, "msg/s",
                        limit=paho1))
        rows.append(Row(sec, "drain peer: Telegraf CPU per message", tg_cpu, "us", higher_is_better=False))
        rows.append(Row(sec, "drain peer: Telegraf peak RSS", _median(tg, "peak_rss_mib"), "MiB",
                        higher_is_better=False))
    for sub, label in (("bridge", "1 process"), ("bridge_x2", "2 processes, $share")):
        rate = _median(one.get(sub), "msg_per_s")
        cpu = _median(one.get(sub), "cpu_us_per_msg")
        if rate is None:
            continue
        rows.append(Row(sec, f"bridge drain, 1 result/msg, {label}", rate, "msg/s", limit=paho1, baseline=tg_rate,
                        target=">= 0.9x limit" if sub == "bridge" else None,
                        passed=(rate >= 0.9 * paho1) if sub == "bridge" and paho1 else None))
        rows.append(Row(sec, f"bridge CPU per message, 1 result/msg, {label}", cpu, "us",
                        limit=_median(one.get("paho"), "cpu_us_per_msg"), baseline=tg_cpu, higher_is_better=False))
        if tg_rate is not None and tg_cpu is not None:
            rows.append(Row(sec, f"bridge vs Telegraf ({label}): rate >= its rate at CPU/msg <= its CPU/msg", rate,
                            "msg/s", baseline=tg_rate, target=">= 1.0x naive (Telegraf), CPU <= Telegraf's",
                            passed=rate >= tg_rate and cpu <= tg_cpu))
        rows.append(Row(sec, f"bridge peak RSS, {label} (max of processes)", _median(one.get(sub), "peak_rss_mib"),
                        "MiB", baseline=_median(tg, "peak_rss_mib"), higher_is_better=False))
    paho100 = _median(hundred.get("paho"), "points_per_s")
    if paho100 is not None:
        rows.append(Row(sec, "drain limit: bare paho QoS 1 process, 100 results/msg", paho100, "points/s"))
    for sub, label in (("bridge", "1 process"), ("bridge_x2", "2 processes, $share")):
        rate = _median(hundred.get(sub), "points_per_s")
        if rate is None:
            continue
        rows.append(Row(sec, f"bridge drain, 100 results/msg, {label}", rate, "points/s", limit=bare_write,
                        target=">= 0.7x limit" if sub == "bridge" else None,
                        passed=(rate >= 0.7 * bare_write) if sub == "bridge" and bare_write else None))
        rows.append(Row(sec, f"bridge CPU per point, 100 results/msg, {label}",
                        _median(hundred.get(sub), "cpu_us_per_msg") / 100.0, "us", higher_is_better=False))
    for failed in dr.get("failed_runs", []):
        rows.append(Row(sec, f"drain run FAILED: {failed['subscriber']}, {failed['per_msg']} result(s)/msg, run "
                        f"{failed['run']}: {failed['error'][:90]}", None, "-", target="every point stored",
                        passed=False))
    return rows


def _num(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


HEADERS = ("measurement", "value", "unit", "limit", "vs limit", "naive", "vs naive", "target", "pass")


def cells(row: Row) -> tuple[str, ...]:
    verdict = "" if row.passed is None else ("PASS" if row.passed else "FAIL")
    return (row.name, _num(row.value), row.unit, _num(row.limit), _x(row.vs_limit), _num(row.baseline),
            _x(row.vs_baseline), row.target or "", verdict)


def text_table(rows: list[Row]) -> str:
    body = [cells(r) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(HEADERS)]
    right = {1, 3, 4, 5, 6}

    def fmt(cs: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cs, widths)))

    lines = [fmt(HEADERS), fmt(tuple("-" * w for w in widths))]
    section = None
    for row, cs in zip(rows, body):
        if row.section != section and section is not None:
            lines.append("")
        section = row.section
        lines.append(fmt(cs))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---", "---:", "---", "---:", "---:", "---:", "---:", "---", "---"]) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return "\n".join(out)


NOTES = """\
How to read it: *limit* is what the hardware and libraries allow at all (a bare
paho subscriber fed by a C publisher; a bare write loop into the database;
for latency, a bare paho process echoing each reading back), *naive* is the
hand-written per-message loop (`benchmarks/naive.py`), both measured in the same
run as the product. Latency is reading publish -> result arrival, wall clock, at
a C subscriber. The bridge's limit is the smaller of the MQTT drain rate and the
database write rate. Methods: `docs/benchmarks.md`.

The *drain* rows (issue 12) run every subscriber as its own process and time
it from spawn (start-up included) until all points are in influxd (the paho
limit: until it received them all); CPU is the process's utime+stime, medians
of alternating runs. In the rows comparing with Telegraf, the *naive* column
holds Telegraf's figure.

In the codecs rows (decode + engine ingest in process, no
network), *naive* is the ingest path from before codecs on the same payloads, and
the limit is the bare paho QoS 1 receive rate. Methods: `docs/benchmarks.md`."""


def markdown(result: dict, rows: list[Row], command: str) -> str:
    m = result["machine"]
    facts = [
        f"- date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; load average (1, 5, 15 min) at start "
        f"{', '.join(str(x) for x in m['load_avg_at_start'])}, at end {', '.join(str(x) for x in m.get('load_avg_at_end', []))} "
        "(the machine is shared: compare ratios, not absolute figures)",
        f"- Python {m['python']}, numpy {m['numpy']}, LiteRT (ai-edge-litert) {m['litert']}, paho-mqtt {m['paho_mqtt']}, "
        f"pydantic {m['pydantic']}, influxdb-client {m['influxdb_client']}, mosquitto {m['mosquitto']}",
        f"- broker config: `{'; '.join(m['broker_conf'])}`",
        f"- run: `{command}` ({'quick' if result['quick'] else 'full'}, {result['elapsed_s']:.0f} s)",
    ]
    dr = result.get("benchmarks", {}).get("drain")
    if dr:
        facts.append(f"- drain: {dr['points']:,} points over {dr['devices']} devices, {dr['runs']} alternating run(s) "
                     f"per subscriber; Telegraf: `{dr['telegraf']}`")
    facts += [f"- {note}" for note in result.get("notes", [])]
    for name, err in result.get("errors", {}).items():
        facts.append(f"- ERROR in {name} (its rows are missing): {err.splitlines()[0][:200]}")
    return "\n".join([
        "# Benchmark results",
        "",
        "Written by `make bench` (`python -m benchmarks`); the raw figures are in",
        "`benchmarks/results/latest.json` (not committed).",
        "",
        markdown_table(rows),
        "",
        *facts,
        "",
        NOTES,
        "",
    ])


def write(result: dict, rows: list[Row], out_dir: Path, markdown_path: Path | None, command: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {**result, "rows": [{**asdict(r), "vs_limit": r.vs_limit, "vs_baseline": r.vs_baseline} for r in rows]}
    text = json.dumps(result, indent=2, default=float)
    stamp = result["machine"]["date"].replace(":", "").replace("+0000", "Z")
    (out_dir / f"bench-{stamp}.json").write_text(text)
    latest = out_dir / "latest.json"
    latest.write_text(text)
    if markdown_path is not None:
        markdown_path.write_text(markdown(result, rows, command))
    return latest
