"""The issue-12 drain rows of ``make bench``: medians of the runs, ratios and the PASS/FAIL the goals define.

No timing is asserted (speed belongs in benchmarks/); these check that a verdict is computed from the
figures it sits beside, so a table cannot say PASS for a goal its own numbers miss.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks.report import drain_rows  # noqa: E402


def run(msg_per_s: float, cpu: float, points_per_s: float | None = None, rss: float = 40.0) -> dict:
    return {"msg_per_s": msg_per_s, "points_per_s": points_per_s or msg_per_s, "cpu_us_per_msg": cpu,
            "peak_rss_mib": rss}


def drain(bridge1: list[dict], telegraf: list[dict] | None, bridge100: list[dict]) -> dict:
    one = {"paho": [run(10_000, 100), run(9_000, 110), run(11_000, 90)], "bridge": bridge1,
           "bridge_x2": [run(9_500, 150)]}
    if telegraf is not None:
        one["telegraf"] = telegraf
    return {"points": 20_000, "runs": 3, "bare_write_points_per_s": [100_000, 90_000, 110_000],
            "1_per_msg": one, "100_per_msg": {"paho": [run(200, 3000, 20_000)], "bridge": bridge100}}


def by_name(rows: list) -> dict:
    return {r.name: r for r in rows}


def test_goal_rows_use_medians_and_fail_when_the_figures_miss() -> None:
    rows = by_name(drain_rows(drain(
        bridge1=[run(8_000, 120), run(9_100, 130), run(9_500, 125)],  # median 9,100 >= 0.9 x median paho 10,000
        telegraf=[run(9_000, 60), run(10_000, 70), run(11_000, 65)],
        bridge100=[run(600, 8000, 60_000), run(700, 7000, 70_000), run(800, 6000, 80_000)],  # median 70k = 0.7x
    )))
    one = rows["bridge drain, 1 result/msg, 1 process"]
    assert (one.value, one.limit, one.baseline, one.passed) == (9_100, 10_000, 10_000, True)
    vs_tg = rows["bridge vs Telegraf (1 process): rate >= its rate at CPU/msg <= its CPU/msg"]
    assert vs_tg.passed is False  # slower than Telegraf's median 10,000 msg/s, and twice its CPU
    cpu = rows["bridge CPU per message, 1 result/msg, 1 process"]
    assert (cpu.value, cpu.limit, cpu.baseline) == (125, 100, 65)
    hundred = rows["bridge drain, 100 results/msg, 1 process"]
    assert (hundred.value, hundred.limit, hundred.passed) == (70_000, 100_000, True)
    assert rows["bridge CPU per point, 100 results/msg, 1 process"].value == 70.0


def test_a_bridge_ahead_of_telegraf_passes_and_a_slow_one_fails_the_limits() -> None:
    rows = by_name(drain_rows(drain(
        bridge1=[run(8_000, 50)], telegraf=[run(7_000, 60)], bridge100=[run(600, 8000, 60_000)],
    )))
    assert rows["bridge vs Telegraf (1 process): rate >= its rate at CPU/msg <= its CPU/msg"].passed is True
    assert rows["bridge drain, 1 result/msg, 1 process"].passed is False  # 8,000 < 0.9 x 10,000
    assert rows["bridge drain, 100 results/msg, 1 process"].passed is False  # 60,000 < 0.7 x 100,000


def test_without_telegraf_there_is_no_peer_row_and_no_verdict_against_it() -> None:
    rows = by_name(drain_rows(drain(bridge1=[run(9_500, 120)], telegraf=None, bridge100=[run(700, 7000, 70_000)])))
    assert not [name for name in rows if "Telegraf" in name]
    assert rows["bridge drain, 1 result/msg, 1 process"].baseline is None
    assert drain_rows(None) == []
