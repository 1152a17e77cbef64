"""Smoke test of the codec benchmark (benchmarks/codecs.py): every case runs, nothing is rejected, and the
report compares each edgeloop case with the ingest path from before codecs. Never asserts a speed."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import codecs, report  # noqa: E402


def test_quick_codec_benchmark_runs_every_case_and_reports_the_before_after_pair():
    results = codecs.run(quick=True)
    assert list(results) == [c.name for c in codecs.CASES]
    for name, r in results.items():
        assert r["rejected"] == 0, name  # every generated payload is valid for its codec
        assert r["readings_per_s"] > 0 and r["cpu_us_per_reading"] > 0 and r["samples_per_s"] >= r["readings_per_s"]
    # Sparkplug B (stateful): births once per engine, then DDATA whose node seq wraps 255 -> 0; none refused.
    [sparkplug] = [c.name for c in codecs.CASES if c.input and c.input.get("codec") == "sparkplug"]
    assert results[sparkplug]["readings"] > 256 and results[sparkplug]["rejected"] == 0
    assert results["edgeloop, 64x3 chunk"]["baseline"] == "before codecs: decode_reading, 64x3 chunk"
    assert results["edgeloop, 1 sample"]["baseline"] == "before codecs: decode_reading, 1 sample"
    rows = [r for r in report.build_rows({"codecs": results}) if r.target]
    assert [r.name for r in rows] == ["CPU per reading, edgeloop, 64x3 chunk", "CPU per reading, edgeloop, 1 sample"]
    assert all(r.baseline and r.passed is not None for r in rows)
