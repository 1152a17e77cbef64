"""When the edge acknowledges a QoS 1 reading: once nothing is lost if the process dies right after.

A reading is acknowledged (paho ``manual_ack``) only when

1. every window it completed has its result in the outbox on disk: the worker
   calls ``commit(stamp)`` after the outbox append (or when no window is
   pending) with the outbox's ``append_seq``, and ``release(synced)`` runs
   once that append is fsynced (at once, except with ``outbox.fsync: batch``,
   where the outbox's sync thread calls it), and
2. no *future* window still needs its samples: an overlapping window (size
   128, hop 64) is cut from this reading and the next one, and the window
   buffer is memory. So, with a persistent session, the last readings of each
   stream stay unacknowledged until ``history`` samples have arrived after
   them (``size - 1`` for a window stage). If the process is killed, the
   broker sends them again to the next process, which rebuilds the window
   buffer from them; the windows they complete again are identical, so they
   overwrite themselves in the database.

Safety valves, so held readings never stall the broker's in-flight window or
outlive their packet id (brokers reuse ids after 65535 messages): a held
reading is released (acknowledged, counted ``input_released_early``) when more
than ``max_held`` are held, or when ``max_age`` later messages have arrived.
The edge sets ``max_held`` below the broker's in-flight window
(``held_limit``): held readings count against that window, and a window full of
held readings would stop the very messages that release them (a deadlock).
The stall net (``tick``) covers a window exactly as large as what the edge
holds: when ``max_held`` readings are held, nothing else is in progress and no
message has arrived for ``stall_s``, the oldest one is released -- once, until
a message arrives again. Below ``max_held`` a quiet stream's readings are never
released by time, so slow sensors keep their durability.
After a reconnect, acknowledgements for the previous connection are not sent
(``MqttLink.ack`` checks the generation): the broker resends those messages,
and the engine skips what it has already seen (``stale_readings``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Ack = Callable[[int, int, int], object]  # (mid, qos, generation)

#: Readings held at most, whatever the window (the packet-id valve's reason: ids are reused).
MAX_HELD = 5000
#: Seconds without any arriving message, at ``max_held`` held, before the stall net releases the oldest.
STALL_S = 5.0


def held_limit(window: int | None, queue_size: int, max_held: int = MAX_HELD) -> int:
    """How many readings the edge may hold against a broker in-flight ``window`` (None: unlimited).

    Held readings leave room for at least one more message (so something can always arrive and
    release them), and for the input queue, up to half the window (so readings keep flowing).
    """
    if window is None:
        return max_held
    room = max(1, min(queue_size, window // 2))
    return max(0, min(max_held, window - room))


@dataclass(slots=True)
class _Held:
    mid: int
    qos: int
    gen: int
    samples: int
    index: int  # receive order, for the age valve


class InputAcks:
    """``received()`` after each ingest, ``commit(stamp)`` once results are appended, ``release(seq)``
    once appends up to ``seq`` are on disk. Thread-safe (the worker and the outbox's sync thread)."""

    def __init__(
        self,
        ack: Ack,
        history: Callable[[str], int],
        *,
        max_held: int = MAX_HELD,
        max_age: int = 30_000,
        stall_s: float = STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ack = ack
        self._history = history
        self.max_held = max_held
        self.max_age = max_age
        self.stall_s = stall_s
        self._clock = clock
        self._last_arrival = clock()
        self._lock = threading.Lock()
        self._pending: list[tuple[str, int, int, int, int]] = []
        self._stamped: deque[tuple[int, list[tuple[str, int, int, int, int]]]] = deque()
        self._streams: dict[str, deque[_Held]] = {}
        self._samples: dict[str, int] = {}
        self._index = 0
        self._next_sweep = 1024
        self.held = 0
        self.acked = 0
        self.released_early = 0
        self.stall_releases = 0

    def received(self, topic: str, mid: int, qos: int, gen: int, samples: int) -> None:
        """A message was ingested; ``samples`` is what the engine took from it (0: rejected or skipped)."""
        if qos:
            with self._lock:
                self._pending.append((topic, mid, qos, gen, samples))
                self._last_arrival = self._clock()

    @property
    def uncommitted(self) -> int:
        return len(self._pending) + sum(len(batch) for _, batch in self._stamped)

    def commit(self, stamp: int = 0, synced: int | None = 0) -> None:
        """Everything ingested so far has its results in outbox append ``stamp``; if ``synced``
        (the outbox's ``synced_seq``) is given, release what is on disk right away."""
        with self._lock:
            if self._pending:
                self._stamped.append((stamp, self._pending))
                self._pending = []
        if synced is not None:
            self.release(synced)

    def release(self, synced: int) -> None:
        """Appends up to ``synced`` are on disk: acknowledge their readings, unless a window still needs them."""
        with self._lock:
            while self._stamped and self._stamped[0][0] <= synced:
                self._process(self._stamped.popleft()[1])

    def _process(self, batch: list[tuple[str, int, int, int, int]]) -> None:
        for topic, mid, qos, gen, samples in batch:
            self._index += 1
            history = self._history(topic) if samples > 0 else 0
            if history <= 0:
                self._send(mid, qos, gen)
                continue
            stream = self._streams.get(topic)
            if stream is None:
                stream = self._streams[topic] = deque()
                self._samples[topic] = 0
            stream.append(_Held(mid, qos, gen, samples, self._index))
            total = self._samples[topic] + samples
            self.held += 1
            # The oldest reading is no longer needed once `history` samples arrived after it.
            while stream and total - stream[0].samples >= history:
                head = stream.popleft()
                total -= head.samples
                self.held -= 1
                self._send(head.mid, head.qos, head.gen)
            self._samples[topic] = total
        if self.held > self.max_held or (self.held and self._index >= self._next_sweep):
            self._next_sweep = self._index + 1024
            self._valve()

    def _valve(self) -> None:
        oldest_ok = self._index - self.max_age
        over = self.held - self.max_held
        heads = sorted((stream[0].index, topic) for topic, stream in self._streams.items() if stream)
        for _, topic in heads:
            stream = self._streams[topic]
            while stream and (stream[0].index < oldest_ok or over > 0):
                head = stream.popleft()
                self._samples[topic] -= head.samples
                self.held -= 1
                over -= 1
                self.released_early += 1
                self._send(head.mid, head.qos, head.gen)
            if not stream:
                del self._streams[topic]
                del self._samples[topic]

    def tick(self) -> bool:
        """The stall net, called from the worker loop (every 0.5 s when idle). True if it released one.

        Fires when ``max_held`` readings are held, nothing is waiting for the outbox, and no
        message arrived for ``stall_s``: then the broker's window is probably full of what we hold
        (no larger than assumed), and only an acknowledgement lets the next one in. One release:
        the next needs a message to arrive and the limit to be reached again, so quiet streams lose
        at most one held reading per quiet spell, and none while fewer than ``max_held`` are held.
        """
        with self._lock:
            if (not self.held or self.held < self.max_held or self._pending or self._stamped
                    or self._clock() - self._last_arrival < self.stall_s):
                return False
            _, topic = min((stream[0].index, topic) for topic, stream in self._streams.items() if stream)
            stream = self._streams[topic]
            head = stream.popleft()
            self._samples[topic] -= head.samples
            if not stream:
                del self._streams[topic]
                del self._samples[topic]
            self.held -= 1
            self.released_early += 1
            self.stall_releases += 1
            self._send(head.mid, head.qos, head.gen)
            return True

    def release_all(self) -> None:
        """Acknowledge everything held (used when the session is not persistent: nothing would be resent)."""
        with self._lock:
            for stream in self._streams.values():
                for held in stream:
                    self._send(held.mid, held.qos, held.gen)
            self._streams.clear()
            self._samples.clear()
            self.held = 0

    def _send(self, mid: int, qos: int, gen: int) -> None:
        self.acked += 1
        self._ack(mid, qos, gen)

    def counters(self) -> dict[str, int]:
        return {"input_held": self.held, "input_released_early": self.released_early}
