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
the sender thread maps mids to rows and deletes them in one transaction per turn.
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
        self._wake.set()

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
        while time.monotonic() < deadline:
            self._idle.clear()
            self._wake.set()
            if self.outbox.depth == 0 and not self._inflight and not self._acks:
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
            self._wake.wait(IDLE_WAIT_S)
            self._wake.clear()
        try:
            self._settle()
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

    def _settle(self) -> None:
        done: list[Row] = []
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
        if done:
            self.outbox.delete(done)
