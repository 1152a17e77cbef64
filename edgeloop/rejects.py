"""Counting, rate-limited logging and dead-lettering of rejected input.

Why one place: every component must treat bad input the same way -- count it
by reason, log it without flooding, publish it to ``deadletter/{component}``
and carry on -- so a hostile or buggy peer can never crash a loop or fill a
disk with log lines.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from edgeloop.ratelimit import RateLimitedLog
from edgeloop.contract import DeadLetter, deadletter_topic


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
