"""When the edge acknowledges readings: after commit, and only once no future window needs them.

``InputAcks`` on its own, table by table; the last test goes through ``EdgeDelivery``, as the app wires it.
"""

from __future__ import annotations

from helpers import RecordingLink

from edgeloop.edge.config import load_edge_config
from edgeloop.edge.delivery import EdgeDelivery
from edgeloop.edge.inputacks import InputAcks


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
