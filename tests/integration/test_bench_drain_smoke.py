"""Smoke test of the issue-12 drain benchmark: real mosquitto, influxd and bridge processes, a tiny backlog.

Checked for shape, never for speed: every subscriber drained every point (counted back from influxd by
the harness), CPU and peak RSS were read from /proc, and without ``EDGELOOP_PEER_TELEGRAF`` the Telegraf
row is skipped with a note instead of failing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import bridge_drain  # noqa: E402


def test_drain_runs_every_subscriber_to_the_last_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture) -> None:
    monkeypatch.delenv(bridge_drain.TELEGRAF_ENV, raising=False)
    out = bridge_drain.run(tmp_path, quick=True, runs=1, n_points=1_000)
    assert out["points"] == 1_000 and out["telegraf"].startswith("skipped")
    assert "Telegraf row skipped" in capfd.readouterr().err
    assert set(out["1_per_msg"]) == {"paho", "paho_v311", "bridge", "bridge_x2"}
    assert set(out["100_per_msg"]) == {"paho", "bridge", "bridge_x2"}
    for shape in ("1_per_msg", "100_per_msg"):
        for name, runs in out[shape].items():
            (r,) = runs
            assert r["points_per_s"] > 0 and r["cpu_us_per_msg"] > 0 and r["peak_rss_mib"] > 0, (shape, name, r)
            assert r["processes"] == (2 if name == "bridge_x2" else 1)
            assert 0 < r["first_point_s"] <= r["elapsed_s"], (shape, name, r)  # first message, for paho
