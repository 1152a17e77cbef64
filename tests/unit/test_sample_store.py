"""The sample store on a real filesystem (Parquet via pyarrow): write, read back, partitions, retention."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeloop.bridge.loopconfig import SampleStoreSettings
from edgeloop.bridge.samples import SampleStore
from edgeloop.contract import SampleBatch, SampleRow

SHA = "cd" * 32
DAY = 86_400.0
T0 = 1_800_000_000.0  # 2027-01-15


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def batch(device: str, n: int, width: int = 4, model: str = "m", reason: str = "random", start: int = 0) -> SampleBatch:
    rows = [
        SampleRow(ts=T0 + k, seq=start + k, features=[float(start + k + j) for j in range(width)], score=0.1 * k,
                  anomaly=reason == "flagged", reason=reason)
        for k in range(n)
    ]
    return SampleBatch(device=device, sensor="vibration", model=model, model_version="1", model_sha256=SHA,
                       site="s1", rows=rows)


def store(tmp_path: Path, clock: Clock, **kw) -> SampleStore:
    return SampleStore(SampleStoreSettings(enabled=True, dir=tmp_path / "samples", **kw), clock=clock)


def test_rows_round_trip_through_parquet_partitioned_by_model_and_day(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock)
    s.add(batch("d1", 5), received=T0)
    s.add(batch("d2", 3, reason="flagged"), received=T0 + 1)
    s.add(batch("d1", 2, model="other"), received=T0 + DAY)
    assert s.flush() == 10 and s.flush() == 0
    rel = sorted(str(p.relative_to(tmp_path / "samples").parent) for p in s.files())
    assert rel == ["model=m/date=2027-01-15", "model=other/date=2027-01-16"]
    assert not list((tmp_path / "samples").rglob("*.tmp"))
    frame = s.read("m")
    assert len(frame) == 8 and frame.features.shape == (8, 4) and frame.features.dtype == np.float32
    assert list(frame.device) == ["d1"] * 5 + ["d2"] * 3 and list(frame.site) == ["s1"] * 8
    np.testing.assert_array_equal(frame.features[1], [1, 2, 3, 4])
    assert list(s.read("m", reasons=("random",)).device) == ["d1"] * 5
    assert len(s.read("m", since=T0 + 0.5)) == 3 and len(s.read("m", until=T0 + 0.5)) == 5
    assert s.count("m") == 8 and s.count("m", reasons=("flagged",)) == 3 and s.count("nothing") == 0
    assert len(s.read("nothing")) == 0


def test_flush_is_due_by_rows_or_age(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock, flush_interval_s=10, max_rows_per_file=6)
    assert not s.flush_due()
    s.add(batch("d", 3))
    assert not s.flush_due()
    clock.t += 11
    assert s.flush_due()
    s.add(batch("d", 3))
    clock.t -= 11
    assert s.flush_due()  # 6 rows


def test_a_backlog_of_old_batches_is_written_once_per_interval_not_once_per_batch(tmp_path):
    """Batches the loop takes from a backlog were received long ago; their age must not make every
    add a flush (a file per batch slowed the loop below the arrival rate: the backlog only grew)."""
    clock = Clock()
    s = store(tmp_path, clock, flush_interval_s=0.5)
    flushes = 0
    for k in range(100):  # 100 batches received 10 s ago, handled 10 ms apart
        s.add(batch("d", 3, start=3 * k), received=T0 - 10.0 + 0.01 * k)
        clock.t += 0.01
        if s.flush_due():
            flushes += s.flush() > 0
    assert flushes == 1 and len(s.files()) == 1
    s.flush()
    assert s.count("m") == 300 and len(s.files()) == 2


def test_a_changed_feature_width_keeps_only_the_newest_width(tmp_path):
    s = store(tmp_path, Clock())
    s.add(batch("d", 4, width=3), received=T0)
    s.add(batch("d", 2, width=5), received=T0 + 1)
    s.flush()
    frame = s.read("m")
    assert frame.features.shape == (2, 5)


def test_buffer_overflow_drops_the_oldest_rows_and_counts_them(tmp_path):
    s = store(tmp_path, Clock(), max_buffered_rows=10)
    s.add(batch("d", 8, start=0), received=T0)
    s.add(batch("d", 8, start=100), received=T0 + 1)
    assert s.stats()["buffered"] == 10 and s.counters["rows_dropped_overflow"] == 6
    s.flush()
    assert list(s.read("m").seq) == [6, 7, *range(100, 108)]


def test_a_failed_write_keeps_the_rows_for_the_next_flush(tmp_path):
    s = store(tmp_path, Clock())
    s.add(batch("d", 4))
    (tmp_path / "samples").write_text("not a directory")
    assert s.flush() == 0 and s.counters["write_errors"] == 1
    (tmp_path / "samples").unlink()
    assert s.flush() == 4 and len(s.read("m")) == 4


def test_retention_by_age_then_by_size(tmp_path):
    clock = Clock()
    s = store(tmp_path, clock, retention_days=2, max_bytes=1024 * 1024)
    for day in range(4):
        s.add(batch("d", 5, start=day * 10), received=T0 + day * DAY)
        s.flush()
    clock.t = T0 + 3 * DAY
    assert s.enforce_retention() == 1  # the day older than 2 days
    assert sorted(set(s.read("m").seq // 10)) == [1, 2, 3]
    sizes = [p.stat().st_size for p in s.files()]
    s.settings = s.settings.model_copy(update={"max_bytes": sum(sizes) - 1})
    assert s.enforce_retention() == 1  # the oldest file goes first
    assert sorted(set(s.read("m").seq // 10)) == [2, 3]


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError):
        SampleStoreSettings(max_bytes=10)
    with pytest.raises(ValueError):
        SampleStoreSettings(retention_days=0)
    assert os.fspath(SampleStoreSettings().dir) == "samples"
