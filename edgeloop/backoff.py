"""The reconnect policy of the MQTT link: exponential backoff with full jitter, reset only by a stable connection.

Why full jitter (``uniform(0, min(cap, base * 2**attempt))``, AWS Architecture
Blog, "Exponential Backoff And Jitter"): a fleet that lost the same broker
spreads its returns over the whole window instead of arriving in waves, and
each device still backs off exponentially while the broker keeps refusing.

Why "stable": a broker that accepts TCP and then refuses the CONNECT (bad
credentials), or accepts it and drops the connection at once (a client-id
clash, an ACL that closes the session), must not reset the delay to its
minimum -- that is a retry a second forever. Only a connection that was
accepted (CONNACK success) and stayed up for ``stable_s`` resets it.

Pure logic (no paho, no threads): ``edgeloop.mqtt`` calls ``connected()`` on an
accepted CONNACK and ``next_delay()`` before each reconnect wait.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple


class Draw(NamedTuple):
    """One wait chosen by the policy: ``attempt`` (0 after a reset), its ``ceiling`` and the ``delay_s`` drawn."""

    at: float
    attempt: int
    ceiling_s: float
    delay_s: float


class ReconnectBackoff:
    """``connected()`` when a connection is accepted, ``next_delay()`` after every failure or loss.

    ``attempt`` counts the failures since the last stable connection; the
    ceiling of the n-th wait is ``min(cap_s, base_s * 2**n)``. ``history``
    keeps the last draws (for logs and tests).
    """

    def __init__(self, base_s: float, cap_s: float, stable_s: float, *, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if base_s <= 0 or cap_s <= 0 or stable_s < 0:
            raise ValueError("base_s and cap_s must be > 0, stable_s >= 0")
        self.base_s = base_s
        self.cap_s = max(cap_s, base_s)
        self.stable_s = stable_s
        self.attempt = 0
        self.resets = 0
        self.history: deque[Draw] = deque(maxlen=64)
        self._rng = rng or random.Random()
        self._clock = clock
        self._up_since: float | None = None

    def connected(self) -> None:
        """The broker accepted a connection (CONNACK success): it counts as stable once it lasts ``stable_s``."""
        self._up_since = self._clock()

    def ceiling(self, attempt: int) -> float:
        # 2**attempt grows without bound; past the cap it no longer matters.
        return self.cap_s if attempt >= 64 else min(self.cap_s, self.base_s * 2.0**attempt)

    def next_delay(self) -> float:
        """The wait before the next attempt; resets the count first if the last connection was stable."""
        now = self._clock()
        if self._up_since is not None and now - self._up_since >= self.stable_s:
            if self.attempt:
                self.resets += 1
            self.attempt = 0
        self._up_since = None
        ceiling = self.ceiling(self.attempt)
        delay = self._rng.uniform(0.0, ceiling)
        self.history.append(Draw(now, self.attempt, ceiling, delay))
        self.attempt += 1
        return delay
