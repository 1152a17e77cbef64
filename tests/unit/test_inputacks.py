"""When the edge acknowledges readings: after commit, and only once no future window needs them.

``InputAcks`` on its own, table by table; the last test goes through ``EdgeDelivery``, as the app wires it.
"""

from __future__ import annotations

from helpers import RecordingLink

from edgeloop.edge.config import load_edge_config
from edgeloop.edge.delivery import EdgeDelivery
from edgeloop.edge.inputacks import MAX_HELD, InputAcks, held_limit


def make(history: int, **kw) -> tuple[InputAcks, list[int]]:
    acked: list[int] = []
    acks = InputAcks(lambda mid, qos, gen: acked.append(mid), lambda topic: history, **kw)
    return acks, acked


def test_nothing_is_acknowledged_before_commit():
    acks, acked = make(history=0)
    for mid in range(1, 4):
        acks.received("sensors/d/s", mid, 1, 1, 64)
    assert acked == [] and acks.uncommitted == 3
    acks.commit()
    assert acked == [1, 2, 3]


def test_acks_wait_until_the_append_holding_the_results_is_on_disk():
    acks, acked = make(history=0)
    acks.received("sensors/d/s", 1, 1, 1, 64)
    acks.commit(stamp=5, synced=4)  # appended as outbox transaction 5; the disk has up to 4
    acks.received("sensors/d/s", 2, 1, 1, 64)
    acks.commit(stamp=6, synced=None)
    assert acked == []
    acks.release(5)
    assert acked == [1]
    acks.release(9)
    assert acked == [1, 2] and acks.uncommitted == 0


def test_qos0_messages_are_never_acknowledged():
    acks, acked = make(history=0)
    acks.received("sensors/d/s", 0, 0, 1, 64)
    acks.commit()
    assert acked == []


def test_readings_a_future_window_needs_are_held_per_stream():
    # window size 128 -> history 127 samples; readings of 64 samples.
    acks, acked = make(history=127)
    for mid in range(1, 6):  # stream a: mids 1..5
        acks.received("sensors/a/s", mid, 1, 1, 64)
    acks.received("sensors/b/s", 100, 1, 1, 64)  # stream b: one reading
    acks.commit()
    # Each reading is released once >= 127 samples arrived after it: the last two of a are held, b is held.
    assert acked == [1, 2, 3]
    assert acks.held == 3
    acks.received("sensors/a/s", 6, 1, 1, 64)
    acks.commit()
    assert acked == [1, 2, 3, 4]


def test_rejected_or_repeated_readings_are_acknowledged_at_once():
    acks, acked = make(history=127)
    acks.received("sensors/a/s", 1, 1, 1, 0)  # samples 0: rejected or a repeated seq
    acks.commit()
    assert acked == [1] and acks.held == 0


def test_the_held_count_valve_releases_the_oldest_and_counts():
    acks, acked = make(history=10_000, max_held=3)
    for mid in range(1, 6):
        acks.received(f"sensors/d{mid}/s", mid, 1, 1, 64)
    acks.commit()
    assert acks.held == 3 and acks.released_early == 2 and sorted(acked) == [1, 2]


def test_the_age_valve_releases_readings_older_than_max_age_messages():
    acks, acked = make(history=10_000, max_age=100)
    acks.received("sensors/quiet/s", 1, 1, 1, 64)
    acks.commit()
    for mid in range(2, 2000):  # other streams keep going; none of them needs holding
        acks.received("sensors/busy/s", mid, 1, 1, 0)
    acks.commit()
    assert 1 in acked and acks.released_early == 1


def test_release_all_acknowledges_everything_held():
    acks, acked = make(history=127)
    acks.received("sensors/a/s", 1, 1, 7, 64)
    acks.commit()
    assert acked == []
    acks.release_all()
    assert acked == [1] and acks.held == 0


def test_through_edge_delivery_the_window_config_and_the_outbox_decide_the_acks(tmp_path):
    """The app's wiring: ``EdgeDelivery`` builds ``InputAcks`` from the config (hold ``size - 1`` samples per
    sensor: window 128, hop 64), commits after the outbox append, and acks through the attached link."""
    cfg = load_edge_config(None, {"node_id": "n1", "outbox": {"path": str(tmp_path / "o.sqlite"), "fsync": "full"}})
    delivery = EdgeDelivery(cfg)
    link = RecordingLink()
    delivery.attach(link)
    try:
        for mid in range(1, 6):  # five 64-sample readings of one stream; windows still pending in the engine
            delivery.ingested("sensors/a/vibration", mid, 1, 7, 64, engine_pending=1)
        delivery.ingested("sensors/b/vibration", 100, 1, 7, 64, engine_pending=1)
        assert link.acks == []  # nothing before the results are in the outbox
        delivery.publish([("results/a/vibration_ae", b"{}")], engine_pending=0)
        # On disk (fsync: full): acked on the link, with the connection generation it came on, except the
        # readings a future window of their stream still needs.
        assert link.acks == [(1, 1, 7), (2, 1, 7), (3, 1, 7)]
        assert delivery.counters()["input_held"] == 3
        delivery.ingested("sensors/a/vibration", 6, 1, 7, 64, engine_pending=0)
        assert [mid for mid, _, _ in link.acks] == [1, 2, 3, 4]
    finally:
        delivery.close()


def test_held_readings_stay_below_the_broker_window():
    # MQTT 3.1.1 against mosquitto's 20: half the window stays free for the queue and new readings.
    assert held_limit(20, queue_size=10_000) == 10
    assert held_limit(100, queue_size=10_000) == 50
    assert held_limit(1, queue_size=2) == 0  # a window of one: hold nothing, or nothing more arrives
    # MQTT 5 announces queue_size + MAX_HELD: the queue's room is kept and MAX_HELD still fits.
    assert held_limit(2 + MAX_HELD, queue_size=2) == MAX_HELD
    assert held_limit(65535, queue_size=1_000_000) == MAX_HELD
    assert held_limit(None, queue_size=2) == MAX_HELD  # no broker limit
    for window in range(1, 200):
        for queue_size in (1, 2, 10, 10_000):
            assert held_limit(window, queue_size) < window  # room for at least one more message


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_stall_net_releases_the_oldest_once_when_the_limit_is_held_and_nothing_arrives():
    clock = Clock()
    acks, acked = make(history=10_000, max_held=3, stall_s=5.0, clock=clock)
    for mid in (1, 2, 3):
        acks.received(f"sensors/d{mid}/s", mid, 1, 1, 64)
    acks.commit()
    assert acks.held == 3 and acked == []
    clock.now = 4.9
    assert not acks.tick() and acked == []  # not yet quiet for stall_s
    clock.now = 5.0
    assert acks.tick() and acked == [1]  # the oldest
    assert acks.released_early == 1 and acks.stall_releases == 1 and acks.held == 2
    clock.now = 60.0
    assert not acks.tick() and acked == [1]  # once: below the limit a quiet stream keeps its holds
    acks.received("sensors/d4/s", 4, 1, 1, 64)  # the released slot let one in: at the limit again
    acks.commit()
    clock.now = 64.0
    assert not acks.tick()
    clock.now = 65.0
    assert acks.tick() and acked == [1, 2]


def test_the_stall_net_leaves_quiet_streams_below_the_limit_alone():
    clock = Clock()
    acks, acked = make(history=10_000, max_held=3, stall_s=5.0, clock=clock)
    for mid in (1, 2):
        acks.received(f"sensors/d{mid}/s", mid, 1, 1, 64)
    acks.commit()
    clock.now = 3600.0
    assert not acks.tick() and acked == [] and acks.held == 2
    acks.received("sensors/d3/s", 3, 1, 1, 64)  # at the limit, but its results are not on disk yet
    acks.commit(stamp=1, synced=None)
    clock.now = 7200.0
    assert not acks.tick() and acked == []  # in progress: not a stall
