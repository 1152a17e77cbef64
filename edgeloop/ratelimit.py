"""Rate-limited logging: a flood of bad input must not become a flood of log lines."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Log at most ``per_interval`` lines per ``interval_s`` per key; report what was suppressed."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, per_interval: int = 5) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.per_interval = per_interval
        self._window: dict[str, tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
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
            self.logger.warning(msg, *args, exc_info=exc_info)
        return emit
