"""The bridge's writer policy with a scripted sink and no broker: batching, retries, rejects, drain.

Messages enter through ``_on_message`` exactly as paho would hand them over;
the MQTT link is never connected (the integration tests do that).
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeloop.bridge.app as app_module
import edgeloop.bridge.batching as batching_module
from edgeloop.bridge.app import Bridge
from edgeloop.bridge.batching import Batch
from edgeloop.bridge.config import BridgeConfig
from edgeloop.bridge.errors import Fatal, PartialWrite, Throttled, Unavailable
from edgeloop.mqtt import Message
from lab.configs import SYNTHETIC_RESULTS

SHA = "ab" * 32


def result(device="dev-1", model="m1", seq=0, **over) -> dict:
    r = {"device": device, "sensor": "s", "model": model, "model_version": "1", "model_sha256": SHA,
         "ts": 1795740561.0 + seq / 1000, "seq": seq, "outputs": [0.5], "score": 0.1, "anomaly": False,
         "label": "ok", "latency_ms": 1.0}
    r.update(over)
    return r


def message(topic: str, payload: bytes | dict | list) -> Message:
    return Message(topic, payload if isinstance(payload, bytes) else json.dumps(payload).encode())


class ScriptedSink:
    """Raises the scripted errors in order, then accepts; records every accepted batch."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.batches: list[list[str]] = []
        self.attempts = 0
        self.closed = False

    def write(self, lines: list[str]) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(list(lines))

    def close(self) -> None:
        self.closed = True


def eventually(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.005)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(batching_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(app_module, "QUEUE_BLOCK_S", 0.05)


def start_writer_only(bridge: Bridge) -> None:
    """What ``start()`` does, minus connecting to a broker."""
    bridge._started = True
    bridge._writer = batching_module.BatchWriter(bridge._sink, bridge.rejects, "influx:edgeloop", bridge._settle)
    bridge._thread.start()


def make_bridge(sink, **influx) -> tuple[Bridge, list]:
    cfg = BridgeConfig.model_validate(
        {"influx": {"api": "v1", "batch_size": 10, "flush_interval_ms": 50, **influx}, "queue_size": 1000,
         **SYNTHETIC_RESULTS}
    )
    bridge = Bridge(cfg, sink=sink)
    letters: list = []
    bridge.rejects.publish = lambda topic, payload: letters.append((topic, json.loads(payload)))
    start_writer_only(bridge)
    return bridge, letters


def test_batches_by_size_then_by_interval_and_stop_drains():
    sink = ScriptedSink()
    bridge, _ = make_bridge(sink)
    for seq in range(25):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["points_written"] == 25)
    assert [len(b) for b in sink.batches] == [10, 10, 5]
    array = [result(seq=100 + i) for i in range(3)]
    bridge._on_message(message("results/dev-1/m1", array))
    assert bridge.stop(timeout_s=5) is True
    assert sink.closed
    stats = bridge.stats()
    assert (stats["received"], stats["results"], stats["points_written"], stats["settled"]) == (26, 28, 28, 26)


def test_unavailable_and_throttled_batches_are_retried_and_kept():
    sink = ScriptedSink(Unavailable("refused"), Throttled("slow down", retry_after=0.02), Unavailable("5xx"))
    bridge, _ = make_bridge(sink)
    for seq in range(10):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["points_written"] == 10)
    stats = bridge.stats()
    assert stats["retries"] == 3 and stats["write_errors"] == {"unavailable": 2, "throttled": 1}
    assert len(sink.batches) == 1 and len(sink.batches[0]) == 10
    assert bridge.stop(timeout_s=5)


def test_partial_write_moves_on_and_dead_letters_a_summary():
    reason = 'partial write: field type conflict: input field "score" ... dropped=2'
    sink = ScriptedSink(PartialWrite(reason, dropped=2))
    bridge, letters = make_bridge(sink)
    for seq in range(12):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 2)
    stats = bridge.stats()
    assert stats["points_written"] == 8 + 2 and stats["points_refused"] == 2 and stats["retries"] == 0
    assert stats["rejected"] == {"partial_write": 1}
    (topic, letter), = letters
    assert topic == "deadletter/bridge" and letter["reason"] == "partial_write" and "dropped=2" in letter["detail"]
    assert letter["topic"] == "influx:edgeloop"
    bridge.stop(timeout_s=5)


def test_fatal_drops_the_batch_and_keeps_running():
    sink = ScriptedSink(Fatal("HTTP 404: database not found"))
    bridge, _ = make_bridge(sink)
    for seq in range(15):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 2)
    stats = bridge.stats()
    assert stats["points_dropped"] == 10 and stats["points_written"] == 5 and stats["write_errors"] == {"fatal": 1}
    assert bridge.stop(timeout_s=5)


def test_a_sink_bug_costs_one_batch_not_the_writer():
    sink = ScriptedSink(ZeroDivisionError("bug"))
    bridge, _ = make_bridge(sink)
    for seq in range(11):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["points_written"] == 1)
    assert bridge.stats()["write_errors"] == {"unexpected": 1}
    assert bridge.stop(timeout_s=5)


JUNK = [
    ("results/dev-1/m1", b"{not json", "malformed_json"),
    ("results/dev-1/m1", json.dumps(result(score=float("nan"))).encode(), "non_finite"),  # NaN literal
    ("results/dev-1/m1", json.dumps(result(outputs=[float("inf")])).encode(), "non_finite"),
    ("results/dev-1/m1", json.dumps(result(score="high")).encode(), "invalid_schema"),
    ("results/dev-1/m1", json.dumps(result(device="dev-2")).encode(), "topic_mismatch"),
    ("results/dev-1/m1", json.dumps([result(), result(model="m2")]).encode(), "topic_mismatch"),
    ("results/dev-1/m1", b"[" + b" " * 300_000 + b"]", "oversized"),
    ("results/dev-1", json.dumps(result()).encode(), "bad_topic"),
    ("results/dev-1/m1/extra", json.dumps(result()).encode(), "bad_topic"),
    ("samples/dev-1/m1", json.dumps(result()).encode(), "bad_topic"),
    ("results/dev-1/m1", json.dumps(result(label="two\nlines")).encode(), "unencodable"),
    ("results/dev-1/m1", b"\xff\xfe", "malformed_json"),
    ("results/dev-1/m1", b"", "malformed_json"),
    ("results/dev-1/m1", b"null", "invalid_schema"),
    ("status/edge-1", b'{"node": "edge-2", "state": "online", "ts": 1.0}', "topic_mismatch"),
    ("status/edge-1", b"offline", "malformed_json"),
]


def test_junk_is_rejected_by_reason_and_good_messages_around_it_are_written():
    sink = ScriptedSink()
    bridge, letters = make_bridge(sink)
    for i, (topic, payload, _) in enumerate(JUNK):
        bridge._on_message(message("results/dev-1/m1", result(seq=i)))
        bridge._on_message(message(topic, payload))
    bridge._on_message(message("status/edge-1", b""))  # a retained status being cleared: ignored
    bridge._on_message(message("status/edge-1", {"node": "edge-1", "state": "online", "ts": 1795740561.0}))
    assert bridge.stop(timeout_s=5)
    stats = bridge.stats()
    expected: dict[str, int] = {}
    for _, _, reason in JUNK:
        expected[reason] = expected.get(reason, 0) + 1
    assert stats["rejected"] == expected
    assert stats["points_written"] == len(JUNK) + 1 and stats["ignored_empty_status"] == 1
    assert [reason for _, letter in letters for reason in [letter["reason"]]] == [r for _, _, r in JUNK]
    assert all(letter["payload_bytes"] == len(payload) for (_, letter), (_, payload, _) in zip(letters, JUNK))


def test_full_queue_blocks_briefly_then_drops_and_counts():
    cfg = BridgeConfig.model_validate({"queue_size": 2})
    bridge = Bridge(cfg, sink=ScriptedSink())  # writer not started: nothing drains the queue
    started = time.monotonic()
    for seq in range(3):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    assert time.monotonic() - started >= 0.05
    assert bridge.stats()["dropped_queue_full"] == 1 and bridge.stats()["queue_depth"] == 2


def test_stop_gives_up_after_timeout_when_the_database_stays_down():
    sink = ScriptedSink(*[Unavailable("down")] * 10_000)
    bridge, _ = make_bridge(sink)
    for seq in range(5):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: sink.attempts >= 2)
    started = time.monotonic()
    assert bridge.stop(timeout_s=0.3) is False
    assert time.monotonic() - started < 3
    stats = bridge.stats()
    assert stats["points_dropped"] == 5 and stats["given_up_at_stop"] == 5 and stats["points_written"] == 0


def test_a_topic_that_was_not_utf8_is_taken_and_rejected_not_raised():
    # The link hands over an invalid UTF-8 topic with U+FFFD in place of the bad bytes (edgeloop/mqtt.py);
    # whatever a handler raises anyway, the link catches (tests/integration/test_mqtt_link.py).
    bridge = Bridge(BridgeConfig(), sink=ScriptedSink())
    bridge._on_message(Message("results/\ufffd/x", b"{}"))
    assert bridge.stats()["received"] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20,
)
near_misses = st.builds(
    lambda base, key, value: json.dumps({**base, key: value}),
    st.just(result()),
    st.sampled_from(sorted(result()) + ["v", "extra"]),
    json_values,
)
topics = st.one_of(
    st.just("results/dev-1/m1"),
    st.just("status/dev-1"),
    st.text(max_size=40),
    st.builds(lambda a, b: f"results/{a}/{b}", st.text(max_size=10), st.text(max_size=10)),
)


@settings(max_examples=300, deadline=None)
@given(topic=topics, payload=st.one_of(st.binary(max_size=300), near_misses.map(str.encode),
                                       json_values.map(lambda v: json.dumps(v).encode())))
def test_no_topic_or_payload_makes_handle_raise(topic, payload):
    bridge = Bridge(BridgeConfig(), sink=ScriptedSink())
    bridge.rejects.publish = None
    batch = Batch()
    bridge._handle(topic, payload, batch)  # must not raise, whatever a peer sends
    stats = bridge.stats()
    # Every message ends up either in the batch or settled (rejected, ignored, or empty array).
    assert len(batch.deliveries) + stats["settled"] == 1
    assert sum(stats["rejected"].values()) <= stats["settled"] and "internal_error" not in stats["rejected"]
