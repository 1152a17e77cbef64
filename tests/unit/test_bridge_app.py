"""The bridge's writer policy with a scripted sink and no broker: batching, retries, rejects, drain.

Messages enter through ``_on_message`` exactly as paho would hand them over;
the MQTT link is never connected (the integration tests do that).
"""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgeloop.bridge.app as app_module
import edgeloop.bridge.batching as batching_module
from edgeloop.bridge.app import Bridge
from edgeloop.bridge.batching import Batch
from edgeloop.bridge.config import BridgeConfig
from edgeloop.bridge.errors import Misconfigured, PartialWrite, Throttled, TooLarge, Unavailable
from edgeloop.mqtt import Message
from helpers import ScriptedSink, result
from lab.servers import eventually
from lab.configs import SYNTHETIC_RESULTS

def message(topic: str, payload: bytes | dict | list) -> Message:
    return Message(topic, payload if isinstance(payload, bytes) else json.dumps(payload).encode())


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(batching_module, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(app_module, "QUEUE_BLOCK_S", 0.05)


def no_broker() -> str:
    """A broker URL nothing listens on: ``start(wait_s=None)`` connects in the background and never gets there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"mqtt://127.0.0.1:{s.getsockname()[1]}"


def make_bridge(sink, **influx) -> tuple[Bridge, list]:
    """A bridge started the real way (``start()`` builds the writer and starts its thread), its MQTT link
    never connected; dead letters recorded."""
    cfg = BridgeConfig.model_validate(
        {"mqtt": {"url": no_broker()}, "influx": {"api": "v1", "batch_size": 10, "flush_interval_ms": 50, **influx},
         "queue_size": 1000, **SYNTHETIC_RESULTS}
    )
    bridge = Bridge(cfg, sink=sink)
    letters: list = []
    bridge.rejects.publish = lambda topic, payload: letters.append((topic, json.loads(payload)))
    bridge.start(wait_s=None)
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


class LossySink:
    """Refuses lines holding ``bad`` as influxd 1.6.7 does with max-values-per-tag: a request with a bad
    line answers 400 ``dropped=<bad count>`` yet stores only every other good line of it."""

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.stored: set[str] = set()
        self.requests = 0

    def write(self, lines: list[str]) -> None:
        self.requests += 1
        bad = [line for line in lines if self.bad in line]
        if not bad:
            self.stored.update(lines)
            return
        good = [line for line in lines if self.bad not in line]
        self.stored.update(good[::2])
        raise PartialWrite(f"partial write: max-values-per-tag limit exceeded dropped={len(bad)}", dropped=len(bad))

    def close(self) -> None:
        pass


def test_partial_write_finds_each_refused_point_and_counts_only_what_was_stored():
    sink = LossySink(bad="dev-new")
    bridge, letters = make_bridge(sink, batch_size=30, flush_interval_ms=60_000)
    for seq in range(30):
        device = "dev-new" if seq % 3 == 2 else "dev-1"
        bridge._on_message(message(f"results/{device}/m1", result(device=device, seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 1)
    stats = bridge.stats()
    # The server said dropped=10 and stored 10 of the 20 good points; the bridge resent until all 20 were in.
    assert len(sink.stored) == 20 and all("dev-new" not in line for line in sink.stored)
    assert stats["points_written"] == 20 and stats["points_refused"] == 10 and stats["points_unconfirmed"] == 0
    assert stats["write_errors"] == {"partial": 1} and stats["probe_writes"] == sink.requests - 1
    assert stats["rejected"] == {"partial_write": 10} and stats["settled"] == 30
    refused = [base64.b64decode(letter["payload_b64"]).decode() for _, letter in letters]
    assert all("device=dev-new" in line for line in refused) and len(set(refused)) == 10
    assert all(letter["reason"] == "partial_write" and "max-values-per-tag" in letter["detail"] for _, letter in letters)
    bridge.stop(timeout_s=5)


def test_partial_write_beyond_the_probe_budget_is_dead_lettered_as_unconfirmed_never_written(monkeypatch):
    monkeypatch.setattr(batching_module, "PROBE_BUDGET", 2)
    sink = LossySink(bad="seq=0i")
    bridge, letters = make_bridge(sink, batch_size=8, flush_interval_ms=60_000)
    for seq in range(8):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 1)
    stats = bridge.stats()
    # One split (2 probes): the half without seq 0 is written; the half with it stays unresolved.
    assert stats["points_written"] == 4 and stats["points_unconfirmed"] == 4 and stats["points_refused"] == 0
    assert stats["rejected"] == {"partial_write_unconfirmed": 4} and stats["settled"] == 8
    assert all("did not say which" in letter["detail"] for _, letter in letters)
    bridge.stop(timeout_s=5)


def test_nothing_parsed_refuses_the_request_without_probing():
    sink = ScriptedSink(PartialWrite("unable to parse 'x': missing fields"))
    bridge, letters = make_bridge(sink, flush_interval_ms=60_000)
    for seq in range(10):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 1)
    stats = bridge.stats()
    assert stats["points_refused"] == 10 and stats["points_written"] == 0 and sink.attempts == 1
    assert len(letters) == 10
    bridge.stop(timeout_s=5)


def test_too_large_is_sent_in_halves():
    class Limit(ScriptedSink):
        def write(self, lines):
            if len(lines) > 3:
                raise TooLarge("HTTP 413: request entity too large")
            super().write(lines)

    sink = Limit()
    bridge, _ = make_bridge(sink, flush_interval_ms=60_000)
    for seq in range(10):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["batches"] == 1)
    assert sum(len(b) for b in sink.batches) == 10 and max(len(b) for b in sink.batches) <= 3
    assert bridge.stats()["points_written"] == 10
    bridge.stop(timeout_s=5)


@pytest.mark.parametrize("cause", ["not_found", "unauthorized", "forbidden", "no_endpoint", "http_418"])
def test_a_misconfigured_server_holds_the_batch_unacknowledged_until_it_takes_it(cause):
    refusal = Misconfigured("HTTP 4xx: no", cause, "do the thing")
    sink = ScriptedSink(*[refusal] * 40)  # held for 40 retries (>= ~1 s): the stats are read while it holds
    bridge, letters = make_bridge(sink, retry_max_s=0.05, flush_interval_ms=60_000)
    held: list[dict] = []
    for seq in range(10):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: sink.attempts >= 2 and held.append(bridge.stats()) is None)
    assert held[0]["held_cause"] == cause and held[0]["held_points"] == 10 and held[0]["settled"] == 0
    eventually(lambda: bridge.stats()["points_written"] == 10)
    stats = bridge.stats()
    assert stats["settled"] == 10 and stats["held_cause"] == "" and stats["held_points"] == 0
    assert stats["write_errors"] == {cause: 40} and stats["retries"] == 40 and stats["points_dropped"] == 0
    assert letters == [] and len(sink.batches) == 1 and len(sink.batches[0]) == 10
    assert bridge.stop(timeout_s=5)


def test_a_held_batch_still_refused_at_stop_is_given_up_not_acknowledged():
    sink = ScriptedSink(*[Misconfigured("HTTP 401", "unauthorized", "token")] * 10_000)
    bridge, _ = make_bridge(sink, retry_max_s=0.05)
    bridge._on_message(message("results/dev-1/m1", result()))
    eventually(lambda: sink.attempts >= 12)  # retry_max_s caps the backoff: many attempts, quickly
    assert bridge.stop(timeout_s=0.2) is False
    stats = bridge.stats()
    assert stats["settled"] == 0 and stats["given_up_at_stop"] == 1 and stats["points_written"] == 0


def test_a_sink_bug_costs_one_batch_not_the_writer():
    sink = ScriptedSink(ZeroDivisionError("bug"))
    bridge, _ = make_bridge(sink)
    for seq in range(11):
        bridge._on_message(message("results/dev-1/m1", result(seq=seq)))
    eventually(lambda: bridge.stats()["points_written"] == 1)
    assert bridge.stats()["write_errors"] == {"unexpected": 1} and bridge.stats()["points_dropped"] == 10
    assert bridge.stats()["rejected"] == {"internal_error": 10}
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
    # stop() returns (False) although the database never comes back: it gave up at its deadline.
    assert bridge.stop(timeout_s=0.3) is False
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
