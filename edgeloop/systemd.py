"""systemd service notifications (sd_notify): READY, WATCHDOG, STOPPING.

Why: under ``Type=notify`` systemd knows the edge is up only once it says
READY=1, and with ``WatchdogSec=`` it restarts a runtime whose worker thread
stops pinging -- a hung interpreter or a dead loop is noticed even though the
process is still alive. Outside systemd (no ``$NOTIFY_SOCKET``) every call is
a no-op.

The protocol is one datagram on a unix socket named by ``$NOTIFY_SOCKET``
(``@name`` = abstract namespace), so the standard library is enough; the
PyPI ``sdnotify`` package does the same in as many lines and has been
unmaintained since 2017.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    """``ready()``, ``ping()`` (rate-limited WATCHDOG=1), ``stopping()``, ``status(text)``."""

    def __init__(self, socket_path: str | None, watchdog_s: float | None) -> None:
        self.socket_path = socket_path
        #: Ping at twice the rate systemd requires (sd_watchdog_enabled's advice).
        self.ping_every_s = watchdog_s / 2 if watchdog_s else None
        self._next_ping = 0.0
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET") or None
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(path, watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def notify(self, state: str) -> bool:
        """Send one state string; False (logged once) if systemd cannot be reached."""
        if self.socket_path is None:
            return False
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall(state.encode())
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.socket_path, exc)
                self._failed = True
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def ping(self) -> None:
        """WATCHDOG=1 at most every half watchdog period; cheap enough to call once per loop turn."""
        if self.ping_every_s is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.ping_every_s
            self.notify("WATCHDOG=1")
