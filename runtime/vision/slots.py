"""Newest-wins hand-off of frames from the MQTT thread to the frame worker.

Why not a queue: a frame is worth something only while it is fresh. When
frames arrive faster than the model classifies them, a FIFO would grow and
every answer would be about an ever older picture. Here each stream
(``frames/{device}/{camera}``, keyed by topic) has one slot: a new frame
overwrites the one still waiting, and the overwritten frame is counted as
dropped. The worker takes the slots that have been occupied longest, one
batch at a time (``limit``), and publishes that batch's results before it
takes the next: slots are served in turn (round robin: an overwrite keeps
the slot's place in line), so no stream starves, and the frame taken from a
slot is the newest one, so latency stays bounded whatever the offered rate. Memory is bounded too: ``max_streams`` slots of at
most one frame each.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingFrame:
    topic: str
    payload: bytes
    properties: list[tuple[str, str]] | None
    received: float  # time.monotonic() at the door


class LatestFrames:
    """``put`` from the network thread, ``take`` from the worker; thread-safe."""

    def __init__(self, max_streams: int = 256) -> None:
        self.max_streams = max_streams
        self._slots: dict[str, PendingFrame] = {}
        self._since: dict[str, float] = {}  # when each slot was filled after being empty: its place in line
        self._cond = threading.Condition()
        self._closed = False
        self.received = 0
        self.dropped_stale = 0  # overwritten by a newer frame of the same stream before the worker took it
        self.dropped_streams = 0  # a stream beyond max_streams

    def put(self, frame: PendingFrame) -> bool:
        """Store ``frame`` in its stream's slot; False if it was dropped (too many streams, or closed)."""
        with self._cond:
            if self._closed:
                return False
            self.received += 1
            if frame.topic in self._slots:
                self.dropped_stale += 1
            elif len(self._slots) >= self.max_streams:
                self.dropped_streams += 1
                return False
            else:
                self._since[frame.topic] = frame.received
            self._slots[frame.topic] = frame
            self._cond.notify()
            return True

    def take(self, timeout: float | None = None, limit: int | None = None) -> list[PendingFrame]:
        """The newest frames of the ``limit`` longest-occupied slots (all if None), in that order,
        waiting up to ``timeout`` for one; [] on timeout or close. Other slots keep their frames."""
        with self._cond:
            if not self._slots and not self._closed:
                self._cond.wait(timeout)
            topics = sorted(self._slots, key=self._since.__getitem__)
            if limit is not None:
                topics = topics[:limit]
            frames = [self._slots.pop(t) for t in topics]
            for t in topics:
                del self._since[t]
            return frames

    def close(self) -> None:
        """Refuse new frames and wake the worker; frames already waiting can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._slots)
