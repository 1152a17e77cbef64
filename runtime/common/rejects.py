"""Counting, rate-limited logging and dead-lettering of rejected input.

Why one place: every component must treat bad input the same way -- count it
by reason, log it without flooding, publish it to ``deadletter/{component}``
and carry on -- so a hostile or buggy peer can never crash a loop or fill a
disk with log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from runtime.contract import DeadLetter, deadletter_topic


class RateLimitedLog:
    """Log at most ``per_interval`` lines per ``interval_s`` per key; report what was suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, per_interval: int = 5) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.per_interval = per_interval
        self._window: dict[str, tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object) -> bool:
        now = time.monotonic()
        with self._lock:
            start, logged, suppressed = self._window.get(key, (now, 0, 0))
            if now - start >= self.interval_s:
                if suppressed:
                    self.logger.warning("%s: %d similar messages suppressed", key, suppressed)
                start, logged, suppressed = now, 0, 0
            if logged < self.per_interval:
                self._window[key] = (start, logged + 1, suppressed)
                emit = True
            else:
                self._window[key] = (start, logged, suppressed + 1)
                emit = False
        if emit:
            self.logger.warning(msg, *args)
        return emit


Publish = Callable[[str, bytes], object]


class Rejects:
    """Counts rejects by reason, logs them rate-limited, dead-letters them.

    ``publish(topic, payload)`` is whatever sends a message (an MqttLink's
    publish at QoS 0); it may be None to only count and log.
    """

    def __init__(self, component: str, logger: logging.Logger, publish: Publish | None = None, node: str | None = None) -> None:
        self.component = component
        self.node = node
        self.topic = deadletter_topic(component)
        self.publish = publish
        self.by_reason: Counter[str] = Counter()
        self.dead_lettered = 0
        self._log = RateLimitedLog(logger)
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def reject(self, topic: str, payload: bytes, reason: str, detail: str) -> None:
        with self._lock:
            self.by_reason[reason] += 1
        self._log.warning(reason, "rejected message on %r (%s): %s", topic[:128], reason, detail[:300])
        if self.publish is None:
            return
        letter = DeadLetter.build(self.component, topic, payload, reason, detail, node=self.node)
        try:
            self.publish(self.topic, letter.model_dump_json().encode())
            with self._lock:
                self.dead_lettered += 1
        except Exception as exc:  # noqa: BLE001 -- dead-lettering must never take the loop down
            self._log.warning("deadletter_failed", "could not publish dead-letter: %s", exc)
