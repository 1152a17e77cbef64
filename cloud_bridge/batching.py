"""A batch of lines and the policy for getting it into the database.

Why separate from the app: what to do when a write fails is the one piece of
the bridge with real decisions in it (Telegraf keeps it in the agent, not in
the outputs), and it is easiest to read and test on its own:

- Throttled / Unavailable: keep the batch and retry it with capped exponential
  backoff and full jitter (honouring Retry-After), until it is written or the
  bridge is stopping and its drain deadline has passed.
- PartialWrite: influxd stored the good points; move on and dead-letter a
  summary with the server's reason (the server names only the first bad line).
- Fatal, or an unexpected exception from a sink: log an error, count, drop.

A batch remembers the deliveries (messages) its lines came from and hands
them to ``on_settled`` when it is done with them either way: that is where the
bridge sends the MQTT acks (paho ``manual_ack``), so a QoS 1 result is
acknowledged to the broker only after the database accepted it (or it was
refused or dead-lettered). A batch given up at stop is *not* settled: with a
persistent session the broker sends it again to the next process.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

from edgeloop.ratelimit import RateLimitedLog
from edgeloop.rejects import Rejects

from edgeloop.bridge.errors import Fatal, PartialWrite, Throttled, Unavailable
from edgeloop.bridge.sinks import Sink

log = logging.getLogger("cloud_bridge")

RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0


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
    """Writes batches through a sink with the retry policy above; counts everything; never raises."""

    def __init__(
        self,
        sink: Sink,
        rejects: Rejects,
        target: str,
        on_settled: Callable[[list[Delivery]], None],
    ) -> None:
        self.sink = sink
        self.rejects = rejects
        self.target = target
        self.on_settled = on_settled
        self.give_up_at: float | None = None  # monotonic deadline while stopping
        self.halt = False
        self.points_written = 0
        self.points_refused = 0
        self.points_dropped = 0
        self.given_up_at_stop = 0
        self.batches = 0
        self.retries = 0
        self.errors: Counter[str] = Counter()
        self.lag = LagTracker()
        self._wake = threading.Event()
        self._rng = random.Random()
        self._log = RateLimitedLog(log)

    def stopping(self, deadline: float) -> None:
        """From now on, give up retrying at ``deadline`` (monotonic) and wake any backoff sleep."""
        self.give_up_at = deadline
        self._wake.set()

    def give_up(self, batch: Batch) -> None:
        self.points_dropped += len(batch.lines)
        self.given_up_at_stop += len(batch.deliveries)

    def write(self, batch: Batch) -> None:
        attempt = 0
        n = len(batch.lines)
        while True:
            try:
                self.sink.write(batch.lines)
            except (Throttled, Unavailable) as exc:
                kind = "throttled" if isinstance(exc, Throttled) else "unavailable"
                self.errors[kind] += 1
                if self.halt or (self.give_up_at is not None and time.monotonic() >= self.give_up_at):
                    log.error("stopping: gave up a batch of %d points after %d attempts (not acknowledged: "
                              "a persistent session redelivers it): %s", n, attempt + 1, exc)
                    self.give_up(batch)
                    return  # not settled: no MQTT ack
                delay = self._backoff(attempt, exc)
                attempt += 1
                self.retries += 1
                self._log.warning(kind, "write of %d points failed (%s), retry %d in %.2fs", n, exc, attempt, delay)
                self._sleep(delay)
                continue
            except PartialWrite as exc:
                self.errors["partial"] += 1
                refused = min(n, exc.dropped or 0)
                self.points_written += n - refused
                self.points_refused += refused
                self._deadletter_partial(batch, exc)
            except Fatal as exc:
                self.errors["fatal"] += 1
                self.points_dropped += n
                log.error("database refused a batch of %d points, dropped it (fix the config): %s", n, exc)
            except Exception as exc:  # noqa: BLE001 -- a sink bug costs one batch, not the bridge
                self.errors["unexpected"] += 1
                self.points_dropped += n
                log.exception("unexpected error writing %d points, dropped them: %r", n, exc)
            else:
                self.points_written += n
                self.lag.record(time.time(), batch.device_ts)
            break
        self.batches += 1
        self.on_settled(batch.deliveries)

    def _backoff(self, attempt: int, exc: Exception) -> float:
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt)
        delay = self._rng.uniform(delay / 2, delay)
        if isinstance(exc, Throttled) and exc.retry_after is not None:
            delay = min(RETRY_MAX_S, max(delay, exc.retry_after))
        return delay

    def _sleep(self, delay: float) -> None:
        if self.give_up_at is None:
            self._wake.wait(delay)  # stopping() wakes us to re-check the deadline
        else:
            time.sleep(max(0.0, min(delay, self.give_up_at - time.monotonic())))

    def _deadletter_partial(self, batch: Batch, exc: PartialWrite) -> None:
        summary = {
            "points": len(batch.lines),
            "dropped": exc.dropped,
            "reason": exc.reason,
            "topics": sorted({d.topic for d in batch.deliveries})[:20],
            "first_line": batch.lines[0][:400],
        }
        self.rejects.reject(self.target, json.dumps(summary).encode(), "partial_write", exc.reason)
