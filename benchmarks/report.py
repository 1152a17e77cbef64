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
        rows.append(Row("throughput", "edge runtime, flat out (default config)", edge, "readings/s", limit=q1,
                        baseline=naive, target=">= 1.0x naive",
                        passed=None if naive is None else edge >= naive))
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
        for q in ("p50", "p99"):
            target = passed = None
            if rate == "1000" and q == "p99":
                target, passed = "<= 25 ms", edge_r["p99_ms"] <= 25.0
            rows.append(Row("latency", f"edge {q} reading->result @ {int(rate):,}/s", edge_r[f"{q}_ms"], "ms",
                            limit=_get(lat, "echo", rate, f"{q}_ms"), baseline=_get(lat, "naive", rate, f"{q}_ms"),
                            target=target, passed=passed, higher_is_better=False))
        rows.append(Row("latency", f"edge CPU @ {int(rate):,}/s", edge_r["cpu_percent"], "% of a core",
                        limit=_get(lat, "echo", rate, "cpu_percent"), baseline=_get(lat, "naive", rate, "cpu_percent"),
                        higher_is_better=False))

    rss = [r for r in [_get(b, "edge", "default", "peak_rss_mb"), *(_get(lat, "edge", k, "peak_rss_mb") for k in ("1000", "5000"))]
           if r is not None]
    if rss:
        echo_rss = [r for r in (_get(lat, "echo", k, "peak_rss_mb") for k in ("1000", "5000")) if r is not None]
        naive_rss = [r for r in [_get(b, "naive", "peak_rss_mb"),
                                 *(_get(lat, "naive", k, "peak_rss_mb") for k in ("1000", "5000"))] if r is not None]
        rows.append(Row("memory", "edge peak RSS (VmHWM, max over its runs)", max(rss), "MB",
                        limit=max(echo_rss) if echo_rss else None, baseline=max(naive_rss) if naive_rss else None,
                        target="<= 150 MB", passed=max(rss) <= 150.0, higher_is_better=False))

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
database write rate. In the codecs rows (decode + engine ingest in process, no
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
