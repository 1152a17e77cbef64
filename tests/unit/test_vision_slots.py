"""Back-pressure: the newest frame of each stream wins, drops are counted, nothing queues up."""

from __future__ import annotations

import threading

from edgeloop.edge.vision.slots import LatestFrames, PendingFrame


def frame(topic: str, n: int) -> PendingFrame:
    return PendingFrame(topic, f"{topic}#{n}".encode(), None, float(n))


def test_newest_frame_wins_per_stream_and_drops_are_counted():
    slots = LatestFrames()
    for n in range(5):
        slots.put(frame("frames/a/belt", n))
    slots.put(frame("frames/b/belt", 10))
    slots.put(frame("frames/a/belt", 11))
    assert len(slots) == 2
    taken = slots.take(timeout=0)
    assert [f.payload for f in taken] == [b"frames/a/belt#11", b"frames/b/belt#10"]  # in turn, newest frames
    assert slots.received == 7 and slots.dropped_stale == 5
    assert slots.take(timeout=0) == [] and len(slots) == 0


def test_take_serves_slots_in_turn_one_batch_at_a_time_with_their_newest_frames():
    slots = LatestFrames()
    for s in range(5):
        slots.put(frame(f"frames/d{s}/cam", s))
    first = slots.take(timeout=0, limit=2)
    assert [f.topic for f in first] == ["frames/d0/cam", "frames/d1/cam"]
    slots.put(frame("frames/d0/cam", 9))  # d0 was just served: it goes to the back of the line
    slots.put(frame("frames/d3/cam", 10))  # an overwrite keeps d3's place, with its newest frame
    assert [f.payload for f in slots.take(timeout=0, limit=2)] == [b"frames/d2/cam#2", b"frames/d3/cam#10"]
    assert [f.payload for f in slots.take(timeout=0, limit=2)] == [b"frames/d4/cam#4", b"frames/d0/cam#9"]
    assert slots.dropped_stale == 1 and len(slots) == 0


def test_a_busy_stream_cannot_starve_a_quiet_one():
    slots = LatestFrames()
    slots.put(frame("frames/quiet/cam", 0))
    taken = []
    for n in range(1, 100):
        slots.put(frame("frames/busy/cam", n))
        if n % 10 == 0:
            taken += slots.take(timeout=0, limit=1)
    assert taken[0].topic == "frames/quiet/cam"  # first in line, although busy frames kept arriving
    assert [f.payload for f in taken[1:]] == [f"frames/busy/cam#{n}".encode() for n in range(20, 100, 10)]


def test_streams_beyond_the_limit_are_dropped_and_counted():
    slots = LatestFrames(max_streams=2)
    assert slots.put(frame("frames/a/c", 1)) and slots.put(frame("frames/b/c", 1))
    assert not slots.put(frame("frames/x/c", 1))
    assert slots.put(frame("frames/a/c", 2))  # a known stream still gets its newest frame
    assert slots.dropped_streams == 1 and len(slots) == 2


def test_close_wakes_the_worker_and_keeps_waiting_frames():
    slots = LatestFrames()
    slots.put(frame("frames/a/c", 1))
    slots.close()
    assert not slots.put(frame("frames/a/c", 2))
    assert [f.payload for f in slots.take(timeout=5)] == [b"frames/a/c#1"]
    assert slots.take(timeout=5) == [] and slots.closed


def test_a_slow_consumer_sees_bounded_backlog_and_every_frame_is_accounted_for():
    slots = LatestFrames()
    streams, per_stream = 4, 2000
    taken: list[PendingFrame] = []
    batches: list[int] = []

    def consume():
        while True:
            got = slots.take(timeout=0.2)
            if got:
                batches.append(len(got))
                taken.extend(got)
            elif slots.closed:
                return

    worker = threading.Thread(target=consume)
    worker.start()
    for n in range(per_stream):
        for s in range(streams):
            slots.put(frame(f"frames/d{s}/cam", n))
    slots.close()
    worker.join(10)
    assert not worker.is_alive()
    assert max(batches) <= streams  # never more than one frame per stream waits
    assert len(taken) + slots.dropped_stale == streams * per_stream
    last = {f.topic: f.payload for f in taken}
    assert all(p.endswith(f"#{per_stream - 1}".encode()) for p in last.values())  # the newest always arrives
