"""At-least-once plumbing without a broker: the outbox sender's window and acks, and the reliability
settings in both configs. The bridge's manual acks, against a real broker: tests/integration/test_bridge_acks.py."""

from __future__ import annotations

import pytest

from edgeloop.bridge.config import BridgeConfig
from edgeloop.errors import ConfigError
from edgeloop.edge.config import load_edge_config
from edgeloop.edge.delivery import EdgeDelivery, broker_window, session_expiry_s, window_history
from edgeloop.edge.inputacks import MAX_HELD
from edgeloop.edge.outbox import Outbox
from edgeloop.edge.sender import OutboxSender
from helpers import RecordingLink
from lab.servers import eventually


def test_sender_keeps_at_most_window_in_flight_and_deletes_only_acked(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    link = RecordingLink()
    sender = OutboxSender(box, link, window=3)
    box.append([("results/d/m", str(i).encode()) for i in range(10)])
    sender.start()
    try:
        eventually(lambda: len(link.sent) == 3)
        assert sender.inflight == 3 and box.depth == 10
        sender.on_publish(link.sent[0][0], None)
        sender.on_publish(link.sent[1][0], "Not authorized")  # a v5 refusal: dropped, counted, not resent
        eventually(lambda: len(link.sent) == 5)
        assert [p for _, _, p in link.sent] == [str(i).encode() for i in range(5)]  # oldest first
        eventually(lambda: box.depth == 8)
        assert sender.counters()["outbox_refused"] == 1 and sender.counters()["outbox_acked"] == 1
        link.connected.clear()  # offline: nothing more is handed to the client
        for mid, _, _ in list(link.sent[2:]):
            sender.on_publish(mid, None)
        eventually(lambda: sender.inflight == 0)
        eventually(lambda: box.depth == 5, timeout=0.5)  # acknowledged rows are deleted in batches, within ~0.1 s
        assert len(link.sent) == 5
        link.connected.set()
        sender.wake()
        eventually(lambda: len(link.sent) == 8)
        for mid, _, _ in list(link.sent[5:]):
            sender.on_publish(mid, None)
        eventually(lambda: len(link.sent) == 10)
        for mid, _, _ in list(link.sent[8:]):
            sender.on_publish(mid, None)
        assert sender.drain(5)
        assert [p for _, _, p in link.sent] == [str(i).encode() for i in range(10)]
        assert box.depth == 0
    finally:
        sender.stop()
        box.close()


def test_sender_drain_gives_up_after_its_timeout_and_keeps_the_rest(tmp_path):
    box = Outbox(tmp_path / "o.sqlite")
    link = RecordingLink()
    link.connected.clear()
    sender = OutboxSender(box, link, window=3)
    box.append([("results/d/m", b"x")])
    sender.start()
    try:
        assert sender.drain(0.2) is False
        assert box.depth == 1
    finally:
        sender.stop()
        box.close()


def test_bridge_config_share_group_and_client_id():
    cfg = BridgeConfig.model_validate({"node_id": "bridge-2", "share_group": "ingest"})
    assert cfg.mqtt.client_id == "bridge-2"  # one persistent session per replica
    assert cfg.topic_filters == ["$share/ingest/results/+/+", "$share/ingest/status/+"]
    assert BridgeConfig().mqtt.client_id == "edgeloop-bridge" and BridgeConfig().topic_filters == ["results/+/+", "status/+"]
    assert BridgeConfig.model_validate({"mqtt": {"client_id": "x"}, "node_id": "n"}).mqtt.client_id == "x"
    with pytest.raises(ValueError, match="share_group"):
        BridgeConfig.model_validate({"share_group": "a/b"})


def test_edge_reliability_defaults_and_errors(tmp_path):
    cfg = load_edge_config(None, {"node_id": "n1"})
    assert (cfg.input.qos, cfg.outbox.enabled, cfg.outbox.fsync) == (1, True, "batch")
    assert session_expiry_s(cfg) == 3600 and window_history(cfg) == {"vibration": 127}
    assert session_expiry_s(load_edge_config(None, {"mqtt": {"session_expiry_s": 0}})) == 0
    bad = tmp_path / "edge.yaml"
    bad.write_text("output: {qos: 0}\n")
    with pytest.raises(ConfigError, match="outbox"):
        load_edge_config(bad)
    bad.write_text("outbox: {fsync: sometimes}\n")
    with pytest.raises(ConfigError, match="outbox.fsync"):
        load_edge_config(bad)


def test_edge_link_options_follow_the_config(tmp_path):
    cfg = load_edge_config(None, {"node_id": "n1", "outbox": {"path": str(tmp_path / "o.sqlite")}})
    d = EdgeDelivery(cfg)
    try:
        opts = d.link_options()
        assert opts["clean_start"] is False and opts["session_expiry_s"] == 3600 and opts["manual_ack"] is True
        # Receive Maximum: the queue plus what may be held, so held readings never fill the window.
        assert opts["receive_maximum"] == cfg.input.queue_size + MAX_HELD and opts["on_publish"] is not None
        assert d.acks.max_held == MAX_HELD
    finally:
        d.close()
    clean = load_edge_config(None, {"node_id": "n2", "mqtt": {"session_expiry_s": 0}, "input": {"qos": 0},
                                    "outbox": {"enabled": False}})
    d = EdgeDelivery(clean)
    opts = d.link_options()
    assert opts["clean_start"] is True and opts["manual_ack"] is False and opts["on_publish"] is None
    d.close()


def test_edge_holds_fewer_readings_than_the_broker_window(tmp_path):
    def held_cap(**over) -> tuple[int | None, int, int | None]:
        cfg = load_edge_config(None, {"node_id": "n1", "outbox": {"path": str(tmp_path / "o.sqlite")}, **over})
        d = EdgeDelivery(cfg)
        try:
            return broker_window(cfg), d.acks.max_held, d.link_options()["receive_maximum"]
        finally:
            d.close()

    assert held_cap(input={"queue_size": 2}) == (2 + MAX_HELD, MAX_HELD, 2 + MAX_HELD)
    assert held_cap(input={"queue_size": 100_000}) == (65535, MAX_HELD, 65535)
    assert held_cap(mqtt={"protocol": "3.1.1"}) == (20, 10, 10_000 + MAX_HELD)  # mosquitto's default
    assert held_cap(mqtt={"protocol": "3.1.1"}, input={"broker_inflight": 100}) == (100, 50, 10_000 + MAX_HELD)
    assert held_cap(mqtt={"protocol": "3.1.1"}, input={"broker_inflight": 0}) == (None, MAX_HELD, 10_000 + MAX_HELD)
    assert held_cap(input={"broker_inflight": 64}) == (64, 32, 10_000 + MAX_HELD)  # a v5 broker capping lower


class DiskCheckingLink(RecordingLink):
    """Records, with each reading ack, what an independent reader of the outbox file sees at that moment."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self.outbox = outbox
        self.seen_at_ack: list[tuple[int, int, int]] = []  # (mid, outbox synced_seq, rows in the file)

    def ack(self, mid, qos, generation):  # noqa: ANN001
        import sqlite3

        with sqlite3.connect(self.outbox.path) as other:
            rows = other.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.seen_at_ack.append((mid, self.outbox.synced_seq, rows))
        return super().ack(mid, qos, generation)


def edge_delivery(tmp_path, **over) -> tuple[EdgeDelivery, DiskCheckingLink]:
    """The real EdgeDelivery (outbox.fsync: batch) on a recording link. Not started: the test runs the
    sync thread's turn itself (``_sync``), so "appended" and "on disk" are two moments it controls."""
    cfg = load_edge_config(None, {"node_id": "n1", "outbox": {"path": str(tmp_path / "o.sqlite"), "fsync": "batch"},
                                  **over})
    d = EdgeDelivery(cfg)
    link = DiskCheckingLink(d.outbox)
    d.attach(link)
    return d, link


def test_edge_acks_a_reading_only_after_its_results_are_on_disk(tmp_path):
    # No persistent session: no window history, so on-disk results are the only condition.
    d, link = edge_delivery(tmp_path, mqtt={"session_expiry_s": 0})
    try:
        d.ingested("sensors/dev-1/vibration", 7, 1, 0, 64, engine_pending=1)  # completed a window, not flushed
        assert link.acks == []  # its result exists nowhere yet
        d.publish([("results/dev-1/vibration_ae", b"r7")], engine_pending=0)
        assert link.acks == []  # appended, not yet fsynced: a power cut could still lose it
        d._sync()  # the sync thread's group commit
        assert [mid for mid, _, _ in link.acks] == [7]
        assert link.seen_at_ack == [(7, 1, 1)]  # at the ack: append 1 fsynced, its row in the file
        d.ingested("sensors/dev-1/vibration", 8, 1, 0, 0, engine_pending=0)  # rejected reading: nothing to wait for
        assert [mid for mid, _, _ in link.acks] == [7, 8]
    finally:
        d.close()


def test_edge_holds_the_readings_a_future_window_needs(tmp_path):
    # Persistent session (the default): a 64-sample reading stays needed until 127 samples came after it.
    d, link = edge_delivery(tmp_path)
    try:
        d.ingested("sensors/dev-1/vibration", 1, 1, 0, 64, engine_pending=0)
        d.ingested("sensors/dev-1/vibration", 2, 1, 0, 64, engine_pending=1)
        d.publish([("results/dev-1/vibration_ae", b"w2")], engine_pending=0)
        d._sync()
        assert link.acks == []  # reading 1 is half of the next window, reading 2 all of its first half
        d.ingested("sensors/dev-1/vibration", 3, 1, 0, 64, engine_pending=1)
        d.publish([("results/dev-1/vibration_ae", b"w3")], engine_pending=0)
        assert link.acks == []  # w3 not on disk yet
        d._sync()
        assert [mid for mid, _, _ in link.acks] == [1]  # 128 samples after it: no window needs it any more
        assert link.seen_at_ack == [(1, 2, 2)]
    finally:
        d.close()
