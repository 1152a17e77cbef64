"""The edge's store-and-forward outbox: a message leaves the disk only when the broker has it.

Every result and sample the edge publishes is appended here first (one
transaction per micro-batch), sent oldest first by ``edgeloop.edge.sender``, and
deleted only when the broker's PUBACK (QoS 1) arrives. What is on disk after a
``kill -9``, a power cut or a long outage is sent again, in order, by the next
process: delivery is at-least-once, and a redelivered result overwrites itself
in InfluxDB (its point identity is deterministic: see ``edgeloop.bridge.schema``).

Why SQLite (standard library ``sqlite3``) in WAL mode: a well-kept embedded
store with atomic, crash-safe transactions and no extra dependency; WAL lets
the sender read while the worker appends, and turns each commit into one
sequential append to the ``-wal`` file.

Durability (``fsync``). Every commit is in the OS's hands when ``append()``
returns, so every mode survives ``kill -9`` of the process; they differ in
when the write-ahead log reaches the disk, i.e. what survives a power cut:

``full``
    ``PRAGMA synchronous=FULL``: each append transaction is fsynced before
    ``append()`` returns. One fsync per micro-batch (not per message), paid by
    the caller: about 16 ms each on the benchmark machine's virtual disk.
``batch`` (the edge's default)
    ``synchronous=NORMAL`` plus ``sync()``: an fsync of the WAL that a
    background thread runs at most every ``fsync_interval_ms`` after appends
    (group commit). ``synced_seq`` says which appends are on disk; the edge
    acknowledges the readings behind them only then (runtime/inputacks.py), so
    a power cut loses nothing the broker will not send again, and the worker
    never waits for the disk.
``normal``
    ``synchronous=NORMAL`` only: the WAL is synced at checkpoints. A power cut
    may lose the last appends (never the database's consistency).

Deletes (acknowledged messages) always commit with ``synchronous=NORMAL``:
losing a delete to a power cut only resends a message the broker already has.

Bounds and overflow, each counted:

- ``max_messages`` / ``max_bytes`` (topic + payload bytes): an append that
  would exceed either drops the *oldest messages not yet handed to the MQTT
  client* (``dropped_overflow``) -- under a long outage the newest data wins,
  and messages already in flight are never dropped under the sender's feet.
- ``ttl_s``: a message older than this when its turn to be sent comes is
  deleted unsent (``expired``): a result that is days late is noise.
- A database that cannot be opened (corrupt file) is moved aside to
  ``<path>.corrupt-<unix time>`` and a fresh one is created (logged as an error).

Reads without a query. While the sender keeps up, what it reads next is exactly
what this process appended last, so ``append`` also keeps those rows in memory
(the *head*, at most ``HEAD_MAX_ROWS`` rows and ``HEAD_MAX_BYTES``) and ``next``
hands them out from there: at 1,000 results/s the SELECT per result was a sixth
of the edge's CPU. The head is only used while it is exactly the table's rows
after the cursor; anything that deletes unsent rows (overflow, TTL) or a head
that grew too large drops it, and ``next`` reads the table again until it has
caught up. The table stays the only thing that counts after a crash.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Fsync = Literal["full", "batch", "normal"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so id order = append order
    created REAL    NOT NULL,                   -- unix time of the append, for the TTL
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL
)
"""

#: How often (seconds) the sender's reads also delete expired messages.
TTL_SWEEP_EVERY_S = 1.0

#: The in-memory head (see the module docstring): what an outage may pile up before reads go back to the table.
HEAD_MAX_ROWS = 1_000
HEAD_MAX_BYTES = 1024 * 1024


def default_state_dir() -> Path:
    """``$EDGELOOP_STATE_DIR``, else ``$XDG_STATE_HOME/edgeloop``, else ``~/.local/state/edgeloop``."""
    explicit = os.environ.get("EDGELOOP_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "edgeloop"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    topic: str
    payload: bytes

    @property
    def size(self) -> int:
        return len(self.topic) + len(self.payload)


class Outbox:
    """Append, read in order, delete on ack. Thread-safe (one connection behind a lock)."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_messages: int = 1_000_000,
        max_bytes: int = 512 * 1024 * 1024,
        ttl_s: float = 7 * 24 * 3600.0,
        fsync: Fsync = "batch",
        clock=time.time,
    ) -> None:
        if fsync not in ("full", "batch", "normal"):
            raise ValueError(f"fsync must be 'full', 'batch' or 'normal', got {fsync!r}")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.fsync = fsync
        self._clock = clock
        self._lock = threading.Lock()
        self._cursor = 0  # highest id handed out by next() in this process
        self._next_sweep = 0.0
        self.appended = 0
        self.deleted = 0
        self.dropped_overflow = 0
        self.expired = 0
        self.recovered_corrupt = 0
        #: Append transactions committed / known to be on disk (see ``sync()``).
        self.append_seq = 0
        self.synced_seq = 0
        self.syncs = 0
        self._db = self._open()
        count, nbytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)), 0) FROM outbox"
        ).fetchone()
        self.depth = int(count)
        self.nbytes = int(nbytes)
        #: Messages found on disk at open: what a previous process left to replay.
        self.replayed_at_open = self.depth
        #: Rows after the cursor, appended by this process, in id order; valid only while ``_head_whole``
        #: (then it holds every row of the table after the cursor). At open the table may hold older rows.
        self._head: deque[Row] = deque()
        self._head_bytes = 0
        self._head_whole = self.depth == 0
        self.head_reads = 0

    # ------------------------------------------------------------------ open/close

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connect()
            _fsync_dir(self.path.parent)  # the files' names are durable too, not only their bytes
            return db
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s cannot be opened (%s): moved aside to %s, starting empty", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.replace(Path(f"{aside}{suffix}"))
            self.recovered_corrupt += 1
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: explicit BEGIN/COMMIT, so one transaction covers a whole micro-batch.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode is {mode}, WAL not available")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute(_SCHEMA)
            db.execute("SELECT count(*) FROM outbox").fetchone()  # touches the table: a corrupt file fails here
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @property
    def _synchronous(self) -> str:
        return "FULL" if self.fsync == "full" else "NORMAL"

    def sync(self) -> int:
        """fsync the write-ahead log: every append committed before the call is on disk after it.

        Returns the ``append_seq`` now covered (also stored in ``synced_seq``).
        A no-op for ``full`` (each append synced itself) and ``normal`` (no promise).
        """
        seq = self.append_seq
        if self.fsync == "batch" and seq > self.synced_seq:
            try:
                fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            except FileNotFoundError:  # checkpointed and removed: the database file holds it, synced
                pass
            else:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.syncs += 1
        self.synced_seq = max(self.synced_seq, seq)
        return seq

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._db.close()
                self._db = None

    # ------------------------------------------------------------------ writes

    def append(self, messages: list[tuple[str, bytes]]) -> None:
        """Store ``messages`` durably (see fsync) in one transaction; drop the oldest unsent if over a bound.

        Raises sqlite3.Error if the disk refuses (full, read-only): the caller decides.
        """
        if not messages:
            return
        now = self._clock()
        rows = [(now, topic, payload) for topic, payload in messages]
        size = sum(len(t) + len(p) for t, p in messages)
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO outbox (created, topic, payload) VALUES (?, ?, ?)", rows)
                last_id = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                self.depth += len(rows)
                self.nbytes += size
                if self.depth > self.max_messages or self.nbytes > self.max_bytes:
                    self._drop_oldest_unsent()
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._recount()
                self._drop_head()
                raise
            if self._head_whole:
                if len(self._head) + len(rows) > HEAD_MAX_ROWS or self._head_bytes + size > HEAD_MAX_BYTES:
                    self._drop_head()  # an outage or a slow broker: the table is read again once it catches up
                else:
                    # One transaction under the lock, AUTOINCREMENT: the ids are last_id - n + 1 .. last_id.
                    first = last_id - len(rows) + 1
                    self._head.extend(Row(first + k, topic, payload) for k, (topic, payload) in enumerate(messages))
                    self._head_bytes += size
            self.appended += len(rows)
            self.append_seq += 1
            if self.fsync != "batch":
                self.synced_seq = self.append_seq

    def _drop_oldest_unsent(self) -> None:
        """Inside append's transaction: delete the oldest rows not handed out yet until both bounds hold."""
        excess_n = max(0, self.depth - self.max_messages)
        excess_b = max(0, self.nbytes - self.max_bytes)
        dropped = freed = 0
        cur = self._db.execute(
            "SELECT id, length(CAST(topic AS BLOB)) + length(payload) FROM outbox WHERE id > ? ORDER BY id",
            (self._cursor,),
        )
        last_id = None
        for row_id, size in cur:
            if dropped >= excess_n and freed >= excess_b:
                break
            dropped += 1
            freed += size
            last_id = row_id
        cur.close()
        if last_id is None:
            return
        self._drop_head()
        self._db.execute("DELETE FROM outbox WHERE id > ? AND id <= ?", (self._cursor, last_id))
        self.depth -= dropped
        self.nbytes -= freed
        self.dropped_overflow += dropped

    def delete(self, rows: list[Row]) -> None:
        """Forget acknowledged rows (one lazily-synced transaction)."""
        if not rows:
            return
        with self._lock:
            db = self._db
            if db is None:
                return
            if self.fsync == "full":
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                n = 0
                for i in range(0, len(rows), 500):
                    chunk = rows[i : i + 500]
                    n += db.execute(
                        f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", [r.id for r in chunk]
                    ).rowcount
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                if self.fsync == "full":
                    db.execute("PRAGMA synchronous=FULL")
            if n == len(rows):
                self.depth -= n
                self.nbytes -= sum(r.size for r in rows)
            else:  # some were dropped or expired meanwhile: count from the table
                self._recount()
            self.deleted += n

    def _recount(self) -> None:
        count, nbytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)), 0) FROM outbox"
        ).fetchone()
        self.depth, self.nbytes = int(count), int(nbytes)

    # ------------------------------------------------------------------ reads

    def next(self, limit: int) -> list[Row]:
        """Up to ``limit`` rows not yet handed out by this process, oldest first; expired ones are deleted."""
        if limit <= 0:
            return []
        with self._lock:
            db = self._db
            if db is None:
                return []
            now = self._clock()
            if now >= self._next_sweep:
                self._next_sweep = now + TTL_SWEEP_EVERY_S
                self._expire(now)
            if self._head_whole:
                head = self._head
                rows = [head.popleft() for _ in range(min(limit, len(head)))]
                self._head_bytes -= sum(r.size for r in rows)
                self.head_reads += len(rows)
            else:
                rows = [
                    Row(i, t, p)
                    for i, t, p in db.execute(
                        "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (self._cursor, limit)
                    )
                ]
                # Fewer than asked: every row after the cursor is handed out, so from here on the
                # rows after it are exactly what this process appends next.
                self._head_whole = len(rows) < limit
            if rows:
                self._cursor = rows[-1].id
            return rows

    def _drop_head(self) -> None:
        self._head.clear()
        self._head_bytes = 0
        self._head_whole = False

    def _expire(self, now: float) -> None:
        cutoff = now - self.ttl_s
        n, freed = self._db.execute(
            "SELECT count(*), coalesce(sum(length(CAST(topic AS BLOB)) + length(payload)), 0) "
            "FROM outbox WHERE id > ? AND created < ?",
            (self._cursor, cutoff),
        ).fetchone()
        if n:
            self._drop_head()
            self._db.execute("DELETE FROM outbox WHERE id > ? AND created < ?", (self._cursor, cutoff))
            self.depth -= n
            self.nbytes -= freed
            self.expired += n
            log.warning("outbox: %d messages older than ttl_s=%.0f deleted unsent", n, self.ttl_s)

    def counters(self) -> dict[str, int]:
        return {
            "outbox_depth": self.depth,
            "outbox_bytes": self.nbytes,
            "outbox_dropped_overflow": self.dropped_overflow,
            "outbox_expired": self.expired,
            "outbox_replayed_at_start": self.replayed_at_open,
        }
