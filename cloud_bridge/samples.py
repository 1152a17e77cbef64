"""The sample store: field feature vectors on disk, as Parquet partitioned by model and day.

Why Parquet (pyarrow) and not InfluxDB: training reads whole columns of
thousands of 30-float vectors at once, which a columnar file gives in
milliseconds and a time-series database does not; InfluxDB stays the home of
the time series for dashboards. Why files and not a database: the trainer runs
in another process and needs only read access to a directory.

Layout (Hive-style, so ``pyarrow.dataset`` and other tools read it as is)::

    {dir}/model={model}/date={YYYY-MM-DD}/part-{unix_ms}-{pid}-{n}.parquet

``date`` is the bridge's UTC day when the rows arrived (``received``), not
the device's clock, so a device with a wrong clock cannot scatter partitions.
Columns: received, ts, device, sensor, node, site, model_version, seq, score,
anomaly, reason, features (list<float32>: raw features, before normalize).

Rows are buffered in memory and written as one file per model when
``max_rows_per_file`` rows are waiting or ``flush_interval_s`` has passed
since the first of them was buffered (``flush_due``). That is the store's
clock, not the rows' ``received``: a bridge working through a backlog of old
batches must still write one file per interval, not one per batch (measured:
a file per batch slowed the loop below the arrival rate, so the backlog only
grew). Files are written to a ``.tmp`` name and renamed, so a reader never
sees half a file. Buffer overflow (``max_buffered_rows``, e.g. when the
disk is full and writes fail) drops the oldest rows and counts them.
Retention (``enforce_retention``) deletes day partitions older than
``retention_days`` and then the oldest files until the store is under
``max_bytes``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeloop.bridge.loopconfig import SampleStoreSettings
from edgeloop.contract import SampleBatch

log = logging.getLogger("edgeloop.bridge.samples")

_COLUMNS = ("received", "ts", "device", "sensor", "node", "site", "model_version", "seq", "score", "anomaly", "reason")


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("received", pa.float64()),
            ("ts", pa.float64()),
            ("device", pa.string()),
            ("sensor", pa.string()),
            ("node", pa.string()),
            ("site", pa.string()),
            ("model_version", pa.string()),
            ("seq", pa.int64()),
            ("score", pa.float64()),
            ("anomaly", pa.bool_()),
            ("reason", pa.string()),
            ("features", pa.list_(pa.float32())),
        ]
    )


@dataclass
class SampleFrame:
    """Rows read from the store as numpy arrays (``features``: (N, F) float32)."""

    received: np.ndarray
    ts: np.ndarray
    device: np.ndarray
    site: np.ndarray
    node: np.ndarray
    model_version: np.ndarray
    seq: np.ndarray
    score: np.ndarray
    anomaly: np.ndarray
    reason: np.ndarray
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.received)

    def select(self, mask: np.ndarray) -> SampleFrame:
        return SampleFrame(**{k: v[mask] for k, v in self.__dict__.items()})

    @classmethod
    def empty(cls, width: int = 0) -> SampleFrame:
        obj = np.array([], dtype=object)
        return cls(
            received=np.array([]), ts=np.array([]), device=obj, site=obj, node=obj, model_version=obj,
            seq=np.array([], dtype=np.int64), score=np.array([]), anomaly=np.array([], dtype=bool),
            reason=obj, features=np.zeros((0, width), dtype=np.float32),
        )


def _day(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d")


class SampleStore:
    """Append SampleBatches, flush them to Parquet, read them back for training. Thread-safe."""

    def __init__(self, settings: SampleStoreSettings, clock=time.time) -> None:
        # Imported now, not in the first flush on the bridge's loop thread (a stall there is a backlog).
        import pyarrow.compute  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        self.settings = settings
        self.root = Path(settings.dir)
        self._clock = clock
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._buffers: dict[str, list[tuple]] = {}
        self._buffered = 0
        self._since: float | None = None  # store clock when the buffer took its first row
        self._seq = itertools.count()
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ writing

    def add(self, batch: SampleBatch, received: float | None = None) -> None:
        """Buffer one batch's rows (cheap: no I/O)."""
        received = self._clock() if received is None else received
        # float32 arrays, not the decoded lists: a buffered feature costs 4 bytes instead of ~32.
        rows = [
            (received, r.ts, batch.device, batch.sensor, batch.node, batch.site, batch.model_version, r.seq,
             r.score, r.anomaly, r.reason, np.asarray(r.features, dtype=np.float32))
            for r in batch.rows
        ]
        with self._lock:
            buf = self._buffers.setdefault(batch.model, [])
            buf.extend(rows)
            self._buffered += len(rows)
            if self._since is None:
                self._since = self._clock()
            over = self._buffered - self.settings.max_buffered_rows
            if over > 0:
                self._drop_oldest(over)
        self.counters["rows_in"] += len(rows)

    def _drop_oldest(self, count: int) -> None:
        for buf in sorted(self._buffers.values(), key=lambda b: b[0][0] if b else float("inf")):
            take = min(count, len(buf))
            del buf[:take]
            self._buffered -= take
            self.counters["rows_dropped_overflow"] += take
            count -= take
            if count <= 0:
                break
        log.warning("sample buffer full (%d rows): dropped the oldest", self.settings.max_buffered_rows)

    def flush_due(self, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        with self._lock:
            if not self._buffered:
                return False
            return (
                self._buffered >= self.settings.max_rows_per_file
                or now - (self._since or now) >= self.settings.flush_interval_s
            )

    def flush(self) -> int:
        """Write every buffered row (one file per model and day); return the rows written.

        A failed write keeps the rows buffered for the next flush (bounded by
        ``max_buffered_rows``) and is logged.
        """
        with self._flush_lock:
            with self._lock:
                buffers, self._buffers = self._buffers, {}
                self._buffered, self._since = 0, None
            written = 0
            for model, rows in buffers.items():
                by_day: dict[str, list[tuple]] = {}
                for row in rows:
                    by_day.setdefault(_day(row[0]), []).append(row)
                for day, day_rows in by_day.items():
                    try:
                        self._write(model, day, day_rows)
                        written += len(day_rows)
                    except OSError as exc:
                        self.counters["write_errors"] += 1
                        log.warning("cannot write %d samples of %s: %s", len(day_rows), model, exc)
                        with self._lock:
                            self._buffers.setdefault(model, [])[:0] = day_rows
                            self._buffered += len(day_rows)
                            self._since = self._since or self._clock()
            self.counters["rows_written"] += written
            return written

    def _write(self, model: str, day: str, rows: list[tuple]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = list(zip(*rows))
        table = pa.Table.from_arrays([pa.array(col) for col in columns[:-1]] + [pa.array(columns[-1], pa.list_(pa.float32()))],
                                     schema=_schema())
        part = self.root / f"model={model}" / f"date={day}"
        part.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(self._clock() * 1000)}-{os.getpid()}-{next(self._seq)}.parquet"
        tmp = part / (name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, part / name)
        self.counters["files_written"] += 1

    # ------------------------------------------------------------------ retention

    def files(self, model: str | None = None) -> list[Path]:
        pattern = f"model={model}/date=*/*.parquet" if model else "model=*/date=*/*.parquet"
        return sorted(self.root.glob(pattern))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def enforce_retention(self, now: float | None = None) -> int:
        """Delete day partitions past ``retention_days``, then oldest files over ``max_bytes``; return files deleted."""
        now = self._clock() if now is None else now
        oldest_day = _day(now - self.settings.retention_days * 86_400)
        deleted = 0
        for part in sorted(self.root.glob("model=*/date=*")):
            if part.name[len("date="):] < oldest_day:
                deleted += len(list(part.glob("*.parquet")))
                shutil.rmtree(part, ignore_errors=True)
        files = sorted(self.files(), key=lambda p: (p.parent.name, p.name))
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        for path in files:
            if total <= self.settings.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= sizes[path]
            deleted += 1
        self.counters["files_deleted"] += deleted
        return deleted

    # ------------------------------------------------------------------ reading

    def _dataset(self, model: str, since: float | None):
        import pyarrow.dataset as ds

        first_day = _day(since) if since is not None else None
        paths = [
            str(p) for p in self.files(model)
            if first_day is None or p.parent.name[len("date="):] >= first_day
        ]
        return ds.dataset(paths, format="parquet", schema=_schema()) if paths else None

    @staticmethod
    def _filter(since: float | None, until: float | None, reasons: tuple[str, ...] | None):
        import pyarrow.dataset as ds

        expr = None
        for cond in (
            (ds.field("received") >= since) if since is not None else None,
            (ds.field("received") < until) if until is not None else None,
            ds.field("reason").isin(list(reasons)) if reasons else None,
        ):
            if cond is not None:
                expr = cond if expr is None else expr & cond
        return expr

    def count(
        self, model: str, since: float | None = None, until: float | None = None, reasons: tuple[str, ...] | None = None
    ) -> int:
        """Rows of ``model`` on disk received in [since, until), without loading them."""
        dataset = self._dataset(model, since)
        return 0 if dataset is None else dataset.count_rows(filter=self._filter(since, until, reasons))

    def read(
        self,
        model: str,
        since: float | None = None,
        until: float | None = None,
        reasons: tuple[str, ...] | None = None,
    ) -> SampleFrame:
        """Rows of ``model`` received in [since, until) (files only: call ``flush`` first), oldest first.

        Rows whose feature width differs from the most recent rows' (a new
        pipeline) are left out.
        """
        import pyarrow.compute as pc

        dataset = self._dataset(model, since)
        if dataset is None:
            return SampleFrame.empty()
        table = dataset.to_table(filter=self._filter(since, until, reasons))
        if table.num_rows == 0:
            return SampleFrame.empty()
        table = table.sort_by("received")
        lengths = pc.list_value_length(table["features"]).to_numpy(zero_copy_only=False)
        width = int(lengths[-1])
        if (lengths != width).any():
            table = table.filter(pc.equal(pc.list_value_length(table["features"]), width))
        flat = table["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        cols = {name: table[name].to_numpy(zero_copy_only=False) for name in _COLUMNS}
        return SampleFrame(
            received=cols["received"], ts=cols["ts"], device=cols["device"].astype(object),
            site=cols["site"].astype(object), node=cols["node"].astype(object),
            model_version=cols["model_version"].astype(object), seq=cols["seq"].astype(np.int64),
            score=cols["score"], anomaly=cols["anomaly"].astype(bool), reason=cols["reason"].astype(object),
            features=flat.astype(np.float32).reshape(table.num_rows, width),
        )

    def stats(self) -> dict:
        with self._lock:
            buffered = self._buffered
        return {**self.counters, "buffered": buffered}
