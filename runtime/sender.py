"""Moves messages from the outbox to the broker, oldest first, and forgets each on its PUBACK.

Why a thread of its own: the worker only appends to the outbox (a disk write
per micro-batch) and never waits on the network; this loop keeps at most
``window`` messages in the MQTT client at a time, so a long outage grows the
file on disk, not the process's memory.

paho keeps what it was handed across reconnects and sends it again after
CONNACK (with DUP set), so each row is handed to the client once per process:
after a restart, everything still on disk is handed over again, in order.

Threads: ``on_publish`` runs on paho's network thread and only appends the
mid to a deque (it must not take a lock paho's own publish path may hold);
the sender thread maps mids to rows and deletes them from the table.

A PUBACK wakes the sender thread only when the window is full (someone waits
for room); otherwise the thread turns every ``SETTLE_EVERY_S`` while messages
are in flight. Measured at 1,000 results/s in batches of one (docs/benchmarks.md):
a wake-up per PUBACK cost more than the batched deletes it served. (Sending from
the worker's thread right after the append, with no hop at all, was tried too,
and cost more: paho's network thread and the worker then contend for paho's locks.)

Deletes are batched: acknowledged rows leave the table within two ``SETTLE_EVERY_S``
after their PUBACK (or once ``SETTLE_ROWS`` are waiting), in one transaction,
instead of one transaction per PUBACK -- at 1,000 results/s that was a tenth of
the edge's CPU. A ``kill -9`` in between only means the next process sends those
few rows again: delivery was at-least-once already, and a result sent twice
overwrites itself in the database. ``drain()`` (a clean stop) deletes at once.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time

from edgeloop.mqtt import MqttLink
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.edge.outbox import Outbox, Row

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
#: Acknowledged rows wait at most this long (or until this many) before their batched delete.
SETTLE_EVERY_S = 0.05
SETTLE_ROWS = 256


class OutboxSender:
    """``start()``, ``wake()`` after an append, ``drain(timeout)``, ``stop()``; ``on_publish`` for MqttLink."""

    def __init__(self, outbox: Outbox, link: MqttLink | None, window: int = 100) -> None:
        self.outbox = outbox
        self.link = link  # set before start() when the link is built after the sender
        self.window = max(1, window)
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self._inflight: dict[int, Row] = {}
        self._done: list[Row] = []  # acknowledged (or refused), not yet deleted from the table
        self._next_delete = 0.0
        self._draining = False
        self._acks: collections.deque[tuple[int, str | None]] = collections.deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeloop-outbox", daemon=True)
        self._log = RateLimitedLog(log)

    # ------------------------------------------------------------------ any thread

    def on_publish(self, mid: int, refusal: str | None) -> None:
        """paho's network thread: a PUBACK (or a QoS 0 write) for ``mid``; ``refusal`` is the broker's
        v5 reason when it refused the message, else None."""
        self._acks.append((mid, refusal))
        if self._draining or len(self._inflight) >= self.window:
            self._wake.set()  # the window is full: room comes from settling this ack

    def wake(self) -> None:
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def counters(self) -> dict[str, int]:
        return {
            "outbox_sent": self.sent,
            "outbox_acked": self.acked,
            "outbox_refused": self.refused,
            "outbox_inflight": len(self._inflight),
        }

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._thread.start()

    def drain(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty and every sent message acknowledged, at most ``timeout_s``.

        What is not acknowledged by then stays on disk for the next start.
        """
        deadline = time.monotonic() + timeout_s
        self._draining = True  # acknowledged rows are deleted at once from here on
        while time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            if self.outbox.depth == 0 and not self._inflight and not self._acks and not self._done:
                return True
            self._idle.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.outbox.depth == 0 and not self._inflight

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)

    # ------------------------------------------------------------------ sender thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except sqlite3.Error as exc:  # a disk error must not end delivery for good
                self._log.warning("outbox_error", "outbox read/delete failed: %s; retrying", exc)
                self._stop.wait(1.0)
            self._idle.set()
            # While messages are in flight (their PUBACKs do not wake this thread) or acknowledged rows
            # wait for their batched delete, turn every SETTLE_EVERY_S.
            busy = self._inflight or self._acks or self._done
            self._wake.wait(SETTLE_EVERY_S if busy else IDLE_WAIT_S)
            self._wake.clear()
        try:
            self._settle(force=True)
        except sqlite3.Error:
            pass

    def _turn(self) -> None:
        self._settle()
        link = self.link
        if link is None or not link.connected.is_set():
            return  # paho holds what is in flight and resends it after CONNACK; nothing more until then
        room = self.window - len(self._inflight)
        for row in self.outbox.next(room) if room > 0 else ():
            try:
                info = link.publish(row.topic, row.payload, qos=1)
            except ValueError as exc:  # paho refuses the topic or payload outright: it never will
                self.refused += 1
                self._log.warning("outbox_invalid", "dropping unsendable outbox message on %r: %s", row.topic[:128], exc)
                self.outbox.delete([row])
                continue
            self._inflight[info.mid] = row
            self.sent += 1

    def _settle(self, force: bool = False) -> None:
        done = self._done
        while self._acks:
            mid, refusal = self._acks.popleft()
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # a publish that did not come from the outbox (status, dead letters)
            if refusal is None:
                self.acked += 1
            else:
                # A v5 PUBACK reason code >= 0x80 (e.g. not authorized): resending will not change it.
                self.refused += 1
                self._log.warning("outbox_refused", "broker refused an outbox message on %r (%s): dropped",
                                  row.topic[:128], refusal)
            done.append(row)
        if done and (force or self._draining or len(done) >= SETTLE_ROWS or time.monotonic() >= self._next_delete):
            self._done = []
            self._next_delete = time.monotonic() + SETTLE_EVERY_S
            try:
                self.outbox.delete(done)
            except BaseException:
                self._done = done + self._done  # kept for the next try (the loop retries after a disk error)
                raise
