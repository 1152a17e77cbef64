"""Property: nothing an edge (or anyone with broker access) publishes crashes the bridge or
puts a point into the database under another device's name.

Extends tests/unit/test_bridge_app.py::test_no_topic_or_payload_makes_handle_raise (which
checks that every message is batched or settled) with an oracle built from the contract's
own parsers and the line protocol that would be written:

- a message the contract refuses (topic shape, JSON, schema, payload device/model or status
  node different from the topic's) is rejected with that reason, once, with a dead-letter;
- a message the contract accepts is written -- one line per result, each tagged with the
  topic's device and model, no line breaks -- unless the line protocol cannot represent it
  faithfully ("unencodable");
- oversized payloads are refused as "oversized" even when they are valid JSON.
"""

from __future__ import annotations

import json
import re
import time

import helpers
from helpers import SHA, ScriptedSink
from fuzzing import NASTY_TEXT, fuzz, json_bytes, json_values, near_miss, tally
from hypothesis import event, given
from hypothesis import strategies as st

from edgeloop.bridge.app import Bridge
from edgeloop.bridge.batching import Batch
from edgeloop.bridge.config import BridgeConfig
from lab.configs import SYNTHETIC_RESULTS
from edgeloop.contract import (
    ContractError,
    DeadLetter,
    decode_results,
    decode_status,
    parse_result_topic,
    parse_status_topic,
)

MAX_PAYLOAD = 4096
DEVICES = ["dev-1", "dev-2"]


def result(device: str = "dev-1", model: str = "m1", seq: int = 0) -> dict:
    return helpers.result(device, model, seq, v=1, node="edge-1")


def status(node: str = "edge-1") -> dict:
    return {"v": 1, "node": node, "state": "online", "ts": 1_795_740_561.0,
            "models": {"m1": {"version": "1", "sha256": SHA}}, "counters": {"rejected": 1}}


RESULT_KEYS = sorted(result()) + ["site", "top_k", "extra"]

topics = st.one_of(
    st.sampled_from(["results/dev-1/m1", "results/dev-2/m1", "results/dev-1/m2", "status/edge-1", "status/dev-1"]),
    st.sampled_from(["results/dev-1", "results/dev-1/m1/x", "results/+/m1", "results/#", "results//m1", "status/",
                     "status/edge-1/x", "samples/dev-1/m1", "deadletter/edge", "", "results/dev 1/m1",
                     "results/dev-b/evil/m1"]),
    st.builds(lambda a, b: f"results/{a}/{b}", st.sampled_from(NASTY_TEXT) | st.text(max_size=8),
              st.sampled_from(["m1", *NASTY_TEXT])),
    st.text(max_size=40),
)


@st.composite
def messages(draw) -> tuple[str, bytes]:
    """(topic, payload): mostly a topic of the payload's kind, so payloads reach the deep checks."""
    kind = draw(st.sampled_from(["result", "array", "near_result", "status", "near_status", "json", "bytes",
                                 "oversized"]))
    device = draw(st.sampled_from(DEVICES))
    if draw(st.integers(0, 9)) < 3:
        topic = draw(topics)
    elif "status" in kind:
        topic = draw(st.sampled_from(["status/edge-1", "status/dev-1"]))
    else:
        topic = draw(st.sampled_from(["results/dev-1/m1", "results/dev-1/m1", "results/dev-2/m1", "results/dev-1/m2"]))
    if kind == "result":
        return topic, json_bytes(result(device, seq=draw(st.integers(0, 10))))
    if kind == "array":
        items = draw(st.lists(st.builds(result, st.sampled_from(DEVICES), st.sampled_from(["m1", "m2"]),
                                        st.integers(0, 10)), max_size=4))
        return topic, json_bytes(items)
    if kind == "near_result":
        return topic, json_bytes(draw(near_miss(result(device), extra_keys=RESULT_KEYS)))
    if kind == "status":
        return topic, json_bytes(status(draw(st.sampled_from(["edge-1", "dev-1"]))))
    if kind == "near_status":
        return topic, json_bytes(draw(near_miss(status(), extra_keys=["node", "state", "ts", "models", "counters", "x"])))
    if kind == "json":
        return topic, json_bytes(draw(json_values))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=200))
    return topic, json_bytes(result(device)) + b" " * (MAX_PAYLOAD + draw(st.integers(0, 100)))


def contract_verdict(topic: str, payload: bytes) -> tuple[str | None, list]:
    """(reason the contract refuses it, or None; the results or statuses it holds)."""
    try:
        if topic.startswith("results/"):
            device, model = parse_result_topic(topic)
            results = decode_results(payload, MAX_PAYLOAD)
            if any((r.device, r.model) != (device, model) for r in results):
                return "topic_mismatch", results
            return None, results
        if topic.startswith("status/"):
            node = parse_status_topic(topic)
            if not payload:
                return None, []
            st_ = decode_status(payload, MAX_PAYLOAD)
            return (None if st_.node == node else "topic_mismatch"), [st_]
        return "bad_topic", []
    except ContractError as exc:
        return exc.reason, []


@fuzz
@given(message=messages())
def test_bridge_writes_only_what_the_contract_accepts_under_the_topics_identity(message):
    topic, payload = message
    bridge = Bridge(BridgeConfig.model_validate({"max_payload_bytes": MAX_PAYLOAD, **SYNTHETIC_RESULTS}),
                    sink=ScriptedSink())  # never written to: the writer is not started
    letters: list[tuple[str, bytes]] = []
    bridge.rejects.publish = lambda t, p: letters.append((t, p))
    batch = Batch()
    tally("bridge: result/status topic + payload -> Bridge._handle")
    bridge._handle(topic, payload, batch)
    stats = bridge.stats()
    refused, parsed = contract_verdict(topic, payload)
    rejected = dict(stats["rejected"])
    assert "internal_error" not in rejected
    if refused is not None:
        assert rejected == {refused: 1} and not batch.lines, (topic, payload[:120], rejected)
    elif rejected:
        # The bridge's own policy beyond the contract: a line it cannot encode, or a result whose
        # timestamp lies outside store.max_past_s / max_future_s of its arrival (docs/security.md).
        assert len(rejected) == 1 and sum(rejected.values()) == 1 and not batch.lines, rejected
        if "timestamp_out_of_range" in rejected:
            past, future = SYNTHETIC_RESULTS["store"]["max_past_s"], 300.0
            now = time.time()
            assert any(not (now - past + 60 <= r.ts <= now + future - 60) for r in parsed), parsed
        else:
            assert rejected == {"unencodable": 1}
    else:
        assert len(batch.lines) == len(parsed) and stats["settled"] == (0 if parsed else 1)
        for line in batch.lines:
            assert "\n" not in line and "\r" not in line
        if topic.startswith("results/"):
            device, model = parse_result_topic(topic)
            for line in batch.lines:
                tags = re.split(r"(?<!\\) ", line, maxsplit=1)[0].split(",")
                assert f"device={device}" in tags and f"model={model}" in tags, line
    # Every reject has exactly one dead-letter describing it.
    assert len(letters) == sum(rejected.values())
    for letter_topic, raw in letters:
        letter = DeadLetter.model_validate_json(raw)
        assert letter_topic == "deadletter/bridge" and letter.reason in rejected
        assert letter.payload_bytes == len(payload)
    event(f"reject {next(iter(rejected))}" if rejected else ("written" if batch.lines else "settled empty"))


def test_oversized_payloads_are_refused_before_they_are_parsed(monkeypatch):
    """The size check comes first: the JSON parser never sees an oversized payload."""
    import edgeloop.contract as contract

    calls = []

    class Spy:
        def validate_json(self, payload):  # noqa: ANN001, ANN201
            calls.append(len(payload))
            raise AssertionError("parsed an oversized payload")

    for name in ("_READING", "_RESULTS", "_STATUS", "_SAMPLES"):
        monkeypatch.setattr(contract, name, Spy())
    big = json.dumps(result()).encode() + b" " * 300
    for decode in (contract.decode_reading, contract.decode_results, contract.decode_status, contract.decode_samples):
        try:
            decode(big, 256)
        except ContractError as exc:
            assert exc.reason == "oversized"
        else:
            raise AssertionError(f"{decode.__name__} accepted an oversized payload")
    assert calls == []
