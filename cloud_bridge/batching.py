"""A batch of lines and the policy for getting it into the database.

Why separate from the app: what to do when a write fails is the one piece of
the bridge with real decisions in it (Telegraf keeps it in the agent, not in
the outputs), and it is easiest to read and test on its own:

- Throttled / Unavailable: keep the batch and retry it with capped, jittered
  exponential backoff (``edgeloop.backoff``; Retry-After honoured), until it is
  written or the bridge is stopping and its drain deadline has passed.
- Misconfigured (401/403/404, no such endpoint or retention policy, ...): the
  same -- the batch is *held*, unacknowledged, and retried with the same
  backoff until a person fixes the credentials or the database; the cause is
  logged rate-limited with its fix and shown in ``stats()`` (``held_*``) and
  the metrics. When the server takes the batch it is written, then acked.
  Data is never acknowledged and dropped because of a config problem.
- PartialWrite (400): the server refused some points and may have stored
  others, and its report cannot be trusted to say which (influxd 1.6.7 with
  ``max-values-per-tag`` says ``dropped=10`` and stores 10 of the 20 good
  points of the request). So the batch is resent in halves, recursively: a
  request answered 204 is written; a single line answered 400 is refused and
  dead-lettered with the server's reason for that line. Resending is safe
  because a point is keyed by measurement, tag set and timestamp: writing it
  again stores the same point, not a second one. The search spends at most
  ``probe_budget`` extra requests per batch; lines still unresolved then are
  dead-lettered as ``partial_write_unconfirmed`` and counted lost
  (``points_unconfirmed``) -- never as written. A request answered 400 with
  nothing written (influxd's bare ``unable to parse``, or ``dropped`` >= its
  size) needs no search: all its lines are refused.
- TooLarge (413): send the batch in halves.
- An unexpected exception from a sink (a bug): the lines are dead-lettered
  (``internal_error``), counted in ``points_dropped``, and the bridge goes on.

A batch remembers the deliveries (messages) its lines came from and hands
them to ``on_settled`` when it is done with them: that is where the bridge
sends the MQTT acks (paho ``manual_ack``), so a QoS 1 result is acknowledged
to the broker only after every one of its points was written or refused and
dead-lettered. A batch given up at stop is *not* settled: with a persistent
session the broker sends it again to the next process.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

from edgeloop.backoff import ReconnectBackoff
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.rejects import Rejects

from edgeloop.bridge.errors import Misconfigured, PartialWrite, Throttled, TooLarge, Unavailable
from edgeloop.bridge.sinks import Sink

log = logging.getLogger("cloud_bridge")

RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0
#: Extra requests one batch may spend finding out which points a partial write refused.
PROBE_BUDGET = 256


class _GaveUp(Exception):
    """The drain deadline passed while a chunk was still being retried."""


class Delivery(NamedTuple):
    """One MQTT message a batch holds lines from: what to acknowledge once it is settled."""

    topic: str
    mid: int = 0
    qos: int = 0
    generation: int = 0  # MqttLink.generation when it arrived: acks for older connections are not sent


class Batch:
    """Lines waiting to be written, their size, and the deliveries they came from."""

    __slots__ = ("lines", "nbytes", "deliveries", "started", "device_ts")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.nbytes = 0
        self.deliveries: list[Delivery] = []
        self.started = 0.0
        self.device_ts: list[float] = []  # device time of each result, for the stored-lag figure

    def add(self, lines: list[str], delivery: Delivery | str, device_ts: list[float] | None = None) -> None:
        if not self.lines:
            self.started = time.monotonic()
        self.lines.extend(lines)
        self.nbytes += sum(map(len, lines))
        self.deliveries.append(delivery if isinstance(delivery, Delivery) else Delivery(delivery))
        if device_ts:
            self.device_ts.extend(device_ts)


class LagTracker:
    """Device time -> stored in the database, over the last ``keep`` results.

    Meaningful when device clocks are synchronised (NTP) with the bridge's;
    it is the end-to-end figure a user cares about: how old is the newest point
    on my dashboard.
    """

    def __init__(self, keep: int = 20_000) -> None:
        self._lags: deque[float] = deque(maxlen=keep)

    def record(self, stored_at: float, device_ts: list[float]) -> None:
        self._lags.extend(stored_at - ts for ts in device_ts)

    def percentiles_ms(self) -> dict[str, float]:
        lags = sorted(self._lags)
        if not lags:
            return {}
        pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] * 1000.0  # noqa: E731
        return {"p50": pick(0.50), "p99": pick(0.99), "max": lags[-1] * 1000.0, "n": float(len(lags))}


class BatchWriter:
    """Writes batches through a sink with the policy above; counts everything; never raises."""

    def __init__(
        self,
        sink: Sink,
        rejects: Rejects,
        target: str,
        on_settled: Callable[[list[Delivery]], None],
        *,
        retry_max_s: float = RETRY_MAX_S,
        probe_budget: int | None = None,
    ) -> None:
        self.sink = sink
        self.rejects = rejects
        self.target = target
        self.on_settled = on_settled
        self.retry_max_s = retry_max_s
        self.probe_budget = PROBE_BUDGET if probe_budget is None else probe_budget
        self.give_up_at: float | None = None  # monotonic deadline while stopping
        self.halt = False
        self.points_written = 0  # in a request the server answered 2xx
        self.points_refused = 0  # alone (or with only refused company) in a request answered 400: dead-lettered
        self.points_unconfirmed = 0  # partial write the probe budget could not resolve: dead-lettered, counted lost
        self.points_dropped = 0  # sink bug (dead-lettered) or given up at stop (not acked: redelivered)
        self.probe_writes = 0
        self.given_up_at_stop = 0
        self.batches = 0
        self.retries = 0
        self.errors: Counter[str] = Counter()
        self.lag = LagTracker()
        #: While a batch is held on a Misconfigured error: its cause, since when (monotonic), its points, the fix.
        self.held_cause: str | None = None
        self.held_since: float | None = None
        self.held_points = 0
        self.held_fix = ""
        self._wake = threading.Event()
        self._rng = random.Random()
        self._log = RateLimitedLog(log)

    def stopping(self, deadline: float) -> None:
        """From now on, give up retrying at ``deadline`` (monotonic) and wake any backoff sleep."""
        self.give_up_at = deadline
        self._wake.set()

    def give_up(self, batch: Batch, written: int = 0) -> None:
        """Not acknowledged: a persistent session redelivers it (``written`` of its lines are in already)."""
        self.points_dropped += len(batch.lines) - written
        self.given_up_at_stop += len(batch.deliveries)

    def held_for_s(self) -> float:
        return 0.0 if self.held_since is None else time.monotonic() - self.held_since

    def write(self, batch: Batch) -> None:
        n = len(batch.lines)
        before = (self.points_refused, self.points_unconfirmed, self.points_dropped)
        written = self.points_written
        try:
            self._write_chunks(batch.lines)
        except _GaveUp as exc:
            log.error("stopping: gave up a batch of %d points (not acknowledged: a persistent session "
                      "redelivers it): %s", n, exc)
            self.give_up(batch, self.points_written - written)
            return  # not settled: no MQTT ack
        if (self.points_refused, self.points_unconfirmed, self.points_dropped) == before:
            self.lag.record(time.time(), batch.device_ts)
        self.batches += 1
        self.on_settled(batch.deliveries)

    def _write_chunks(self, lines: list[str]) -> None:
        """Write ``lines``; split a request the server refused in part until every line is settled."""
        pending = [(0, len(lines))]  # [lo, hi) ranges still to write; the earliest on top
        budget = self.probe_budget
        partial = False
        while pending:
            lo, hi = pending.pop()
            chunk = lines[lo:hi]
            try:
                self._send(chunk)
                self.points_written += len(chunk)
                continue
            except PartialWrite as exc:
                if not partial:
                    partial = True
                    self.errors["partial"] += 1
                if len(chunk) == 1 or exc.none_written or (exc.dropped is not None and exc.dropped >= len(chunk)):
                    self._dead_letter(chunk, "partial_write", exc.reason)
                    self.points_refused += len(chunk)
                    continue
                if budget < 2:
                    self._dead_letter(chunk, "partial_write_unconfirmed",
                                      f"the server refused some of these points and stored others, and did not "
                                      f"say which (probe budget spent; replaying them is safe): {exc.reason}")
                    self.points_unconfirmed += len(chunk)
                    continue
                budget -= 2
                self.probe_writes += 2
            except TooLarge as exc:
                self.errors["too_large"] += 1
                if len(chunk) == 1:
                    self._dead_letter(chunk, "too_large", str(exc))
                    self.points_refused += 1
                    continue
            except _GaveUp:
                raise
            except Exception as exc:  # noqa: BLE001 -- a sink bug costs these lines (dead-lettered), not the bridge
                self.errors["unexpected"] += 1
                self.points_dropped += len(chunk)
                log.exception("unexpected error writing %d points, dead-lettered them: %r", len(chunk), exc)
                self._dead_letter(chunk, "internal_error", repr(exc))
                continue
            mid = (lo + hi) // 2
            pending += [(mid, hi), (lo, mid)]

    def _send(self, chunk: list[str]) -> None:
        """One request, retried while the server is down, throttling or refusing us as configured."""
        backoff = ReconnectBackoff(RETRY_FIRST_S, self.retry_max_s, 0.0, rng=self._rng)
        attempt = 0
        while True:
            try:
                self.sink.write(chunk)
            except (Throttled, Unavailable, Misconfigured) as exc:
                kind = exc.cause if isinstance(exc, Misconfigured) else \
                    "throttled" if isinstance(exc, Throttled) else "unavailable"
                self.errors[kind] += 1
                if self.halt or (self.give_up_at is not None and time.monotonic() >= self.give_up_at):
                    raise _GaveUp(f"after {attempt + 1} attempts: {exc}") from exc
                delay = backoff.next_delay()
                if isinstance(exc, Throttled) and exc.retry_after is not None:
                    delay = min(self.retry_max_s, max(delay, exc.retry_after))
                attempt += 1
                self.retries += 1
                if isinstance(exc, Misconfigured):
                    self._hold(exc, len(chunk), attempt, delay)
                else:
                    self._log.warning(kind, "write of %d points failed (%s), retry %d in %.2fs",
                                      len(chunk), exc, attempt, delay)
                self._sleep(delay)
                continue
            if self.held_cause is not None:
                log.warning("InfluxDB takes writes again after %.0fs held (%s): the held points are written, "
                            "then acknowledged", self.held_for_s(), self.held_cause)
                self.held_cause, self.held_since, self.held_points, self.held_fix = None, None, 0, ""
            return

    def _hold(self, exc: Misconfigured, points: int, attempt: int, delay: float) -> None:
        if self.held_cause is None:
            self.held_since = time.monotonic()
        self.held_cause, self.held_points, self.held_fix = exc.cause, points, exc.fix
        self._log.warning(f"held_{exc.cause}",
                          "InfluxDB refused the write (%s): holding %d points unacknowledged for %.0fs so far "
                          "(the broker keeps what follows), retry %d in %.1fs; fix: %s",
                          exc, points, self.held_for_s(), attempt, delay, exc.fix)

    def _sleep(self, delay: float) -> None:
        if self.give_up_at is None:
            self._wake.wait(delay)  # stopping() wakes us to re-check the deadline
        else:
            time.sleep(max(0.0, min(delay, self.give_up_at - time.monotonic())))

    def _dead_letter(self, lines: list[str], reason: str, detail: str) -> None:
        """One dead-letter per line: its payload is the line itself, ready to be written again."""
        for line in lines:
            self.rejects.reject(self.target, line.encode("utf-8"), reason, detail)
