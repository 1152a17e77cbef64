"""What this edge did with every signed deployment, on disk: the replay guard and the crash-loop breaker.

Why on disk: a retained manifest is delivered again after every restart. An
edge that remembers deployments only in memory re-installs a model it refused,
re-runs one that crashed it, and accepts an old, validly signed manifest
replayed by anyone who may write ``models/#``. The ledger keeps, per model,
every signed manifest it acted on: ``deploy_id``, the deployer's ``seq``,
version, sha256 and what happened (``state``, ``reason``, ``detail``).

* The **head** of a model is its row with the highest ``seq``; a manifest
  whose ``seq`` is not above the head's is a replay (unless it *is* the head,
  redelivered).
* ``installing`` is written (and fsynced) before the edge loads a model in
  its own process and stays until probation judged it: a head still
  ``installing`` at startup means the edge died with that model, and it is
  not tried again.

SQLite (``PRAGMA synchronous=FULL``): every write is durable when it returns
and a crash never leaves half a row. One file, ``{dir}/deploy-ledger.sqlite``;
inspect it with ``sqlite3``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

LEDGER_FILE = "deploy-ledger.sqlite"

#: States of a row. Final: refused, rolled_back, healthy, running (the node already ran it), not_targeted.
STATES = ("receiving", "installing", "refused", "rolled_back", "healthy", "running", "not_targeted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deploys (
    model     TEXT NOT NULL,
    deploy_id TEXT NOT NULL,
    seq       INTEGER,
    version   TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    state     TEXT NOT NULL,
    reason    TEXT,
    detail    TEXT,
    ts        REAL NOT NULL,
    PRIMARY KEY (model, deploy_id)
)
"""


@dataclass(frozen=True)
class Entry:
    model: str
    deploy_id: str
    seq: int | None
    version: str
    sha256: str
    state: str
    reason: str | None
    detail: str | None
    ts: float


class DeployLedger:
    """Thread-safe; every method is one short transaction."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LEDGER_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def head(self, model: str) -> Entry | None:
        """The row with the highest seq (None if no sequenced manifest was ever recorded)."""
        return self._one("SELECT * FROM deploys WHERE model = ? AND seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
                         (model,))

    def get(self, model: str, deploy_id: str) -> Entry | None:
        return self._one("SELECT * FROM deploys WHERE model = ? AND deploy_id = ?", (model, deploy_id))

    def record(self, model: str, deploy_id: str, seq: int | None, version: str, sha256: str, state: str,
               reason: str | None = None, detail: str | None = None) -> None:
        """Insert or update the row of one publication (keyed by model and deploy_id)."""
        if state not in STATES:
            raise ValueError(f"unknown ledger state {state!r}")
        with self._lock:
            self._db.execute(
                "INSERT INTO deploys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, deploy_id) DO UPDATE SET "
                "state = excluded.state, reason = excluded.reason, detail = excluded.detail, ts = excluded.ts",
                (model, deploy_id, seq, version, sha256, state, reason, (detail or "")[:1024] or None, time.time()),
            )

    def installing(self) -> list[Entry]:
        """Rows still ``installing``: at startup, deployments the edge died with."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM deploys WHERE state = 'installing'").fetchall()
        return [Entry(*row) for row in rows]

    def mark_interrupted(self, entry: Entry, detail: str) -> None:
        """Refuse ``entry`` for good (reason ``interrupted``), and every other unfinished or "already running"
        publication of the same artifact, so no redelivered manifest of it is loaded again."""
        with self._lock:
            self._db.execute(
                "UPDATE deploys SET state = 'refused', reason = 'interrupted', detail = ?, ts = ? WHERE model = ? "
                "AND (deploy_id = ? OR (sha256 = ? AND state IN ('installing', 'receiving', 'running')))",
                (detail[:1024], time.time(), entry.model, entry.deploy_id, entry.sha256),
            )

    def entries(self, model: str) -> list[Entry]:
        """Every row of ``model``, oldest first (for tests and people)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM deploys WHERE model = ? ORDER BY ts", (model,)).fetchall()
        return [Entry(*row) for row in rows]

    def _one(self, sql: str, args: tuple) -> Entry | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return Entry(*row) if row else None
