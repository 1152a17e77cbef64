"""benchmarks/vision.py still runs: the in-process part, briefly (figures are not checked, only produced)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import vision


def test_preprocess_measurements_are_produced_for_both_models():
    out = vision.preprocess(quick=True)
    assert out["frame"]["mean_bytes"] > 1000
    for kind in ("float", "int8"):
        figures = out[kind]
        assert {"stages_us", "model_us_batch1", "model_us_batch8", "engine_us_batch8", "engine_frames_per_s"} <= set(figures)
        assert all(math.isfinite(v) and v > 0 for k, v in figures.items() if k != "input")
    assert out["int8"]["input"].endswith("int8") and out["naive_us"] > 0
