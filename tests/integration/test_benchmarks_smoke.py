"""Smoke test of ``make bench``: the smallest runs end to end, checked for shape, never for speed.

Timings are not asserted anywhere (the machine is shared; speed belongs in
``benchmarks/``): these tests only prove that the benchmark harness still
starts its servers, drives the real processes and writes complete results.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_quick_limit_naive_and_edge_write_complete_results(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "limit,naive,edge", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
    assert result["quick"] is True and result["errors"] == {}
    assert {"cpu", "cores", "python", "numpy", "litert", "date"} <= set(result["machine"])

    b = result["benchmarks"]
    assert set(b) == {"limit", "naive", "edge"}
    for qos in ("qos0", "qos1"):
        assert b["limit"][qos]["received"] == b["limit"]["messages"]
        assert _positive(b["limit"][qos]["msg_per_s"])
    naive = b["naive"]
    assert naive["readings_processed"] == naive["offered"]
    assert naive["results_received"] == naive["expected_results"]
    assert _positive(naive["readings_per_s"]) and _positive(naive["peak_rss_mb"])
    for variant in ("default", "batch_results"):
        edge = b["edge"][variant]
        assert edge["readings_processed"] == edge["offered"], edge
        assert edge["results_received"] == edge["expected_results"], edge
        assert _positive(edge["readings_per_s"]) and _positive(edge["cpu_ms_per_reading"])
        assert _positive(edge["peak_rss_mb"])

    names = {row["name"] for row in result["rows"]}
    assert "edge runtime, flat out (default config)" in names
    edge_row = next(r for r in result["rows"] if r["name"] == "edge runtime, flat out (default config)")
    assert _positive(edge_row["value"]) and _positive(edge_row["baseline"]) and _positive(edge_row["limit"])
    # The row reports the measurements above, and its verdict is computed from them (not asserted: speed).
    assert (edge_row["value"], edge_row["baseline"]) == (b["edge"]["default"]["readings_per_s"], naive["readings_per_s"])
    assert edge_row["passed"] is (edge_row["value"] >= edge_row["baseline"] and edge_row["value"] >= 0.6 * edge_row["limit"])
    printed = next(line for line in proc.stdout.splitlines() if "edge runtime, flat out (default config)" in line)
    assert ("PASS" if edge_row["passed"] else "FAIL") in printed  # the printed table says the same


def test_quick_paired_and_imports_write_complete_results(tmp_path: Path) -> None:
    """Issue 12's paired run: the edge and the bare subscriber both got the whole stream, and the row's
    ratio and verdict are computed from their CPU per message; the import costs are all there."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "paired,imports", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["errors"] == {}
    for variant, protocol in (("default", "5"), ("mqtt311", "3.1.1")):
        run = result["benchmarks"]["paired"][variant]
        assert run["protocol"] == protocol
        assert run["edge"]["readings_in"] == run["readings"] == run["bare"]["messages"], run
        assert run["edge"]["results_received"] == run["readings"] - run["devices"], run
        assert _positive(run["edge"]["cpu_us_per_reading"]) and _positive(run["bare"]["cpu_us_per_message"])
        assert abs(run["cpu_ratio"] - run["edge"]["cpu_us_per_reading"] / run["bare"]["cpu_us_per_message"]) < 0.01
    row = next(r for r in result["rows"] if r["name"].startswith("edge CPU per reading, paced"))
    assert row["passed"] is (row["vs_limit"] <= 2.0)
    imports = result["benchmarks"]["imports"]
    assert all(_positive(imports[k]) for k in ("bare_interpreter_mb", "numpy", "pydantic (BaseModel)", "paho-mqtt"))


def test_naive_baseline_computes_the_products_features() -> None:
    """The baseline is only a fair comparison if it does the same work: same features, same scores."""
    from benchmarks.naive import Scorer, features
    from edgeloop.edge.config import BUNDLED_MODEL, DEFAULT_VIBRATION_STAGES
    from edgeloop.edge.inference import TfliteModel
    from edgeloop.edge.stages import build_pipeline

    model = TfliteModel(BUNDLED_MODEL)
    pipeline = build_pipeline(DEFAULT_VIBRATION_STAGES, 3, model_stats=model.normalization)
    rng = np.random.default_rng(3)
    windows = rng.normal(0.0, 0.5, size=(6, 128, 3)).astype(np.float32)
    windows[..., 2] += 1.0
    product = pipeline.transform(list(windows))
    stats = model.normalization
    naive = np.stack([(features(w) - np.asarray(stats["mean"])) / np.asarray(stats["std"]) for w in windows])
    np.testing.assert_allclose(naive, product, rtol=1e-3, atol=1e-3)

    scorer = Scorer(BUNDLED_MODEL)
    scores = [scorer.score(w) for w in windows]
    np.testing.assert_allclose(scores, model.run(product)[:, model.score_output], rtol=1e-3, atol=1e-4)
