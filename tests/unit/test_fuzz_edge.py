"""Property: nothing a sensor peer sends crashes the edge or corrupts what it publishes.

The boundary is ``Engine.ingest(topic, payload)`` with the bundled model, exactly what the
edge's worker calls for every MQTT message. For any sequence of messages:

- ``ingest`` never raises;
- a message is accepted exactly when an independent oracle (contract topic + payload
  parsers, pipeline sensor and channel count, float32 range) says it is valid; otherwise it
  costs exactly one reject with a reason code, counted, and one dead-letter that carries
  the topic and the payload size;
- everything ``flush()`` publishes decodes with the contract's own decoders, has finite
  numbers, and names the device of the topic the window came from;
- a window whose model output is not valid becomes a counted, dead-lettered reject too.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from fuzzing import NASTY_NUMBERS, NASTY_TEXT, fuzz, json_bytes, json_values, near_miss, tally
from hypothesis import event, given
from hypothesis import strategies as st

from edgeloop.rejects import Rejects
from edgeloop.edge.config import BUNDLED_MODEL, PipelineSettings
from edgeloop.contract import (
    ContractError,
    DeadLetter,
    decode_reading,
    decode_results,
    decode_samples,
    parse_result_topic,
    parse_sample_topic,
    parse_sensor_topic,
)
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.sampling import Sampler, SamplingSettings

# Extreme planted values overflow inside the feature stage on purpose (numpy warns); the
# property is that such windows are dead-lettered, never published.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

MAX_PAYLOAD = 16 * 1024
DEVICES = ["dev-1", "dev-2", "m_3.a:b"]
CHANNELS = 3
SAMPLES = 64  # per reading: a window (128, hop 64) completes with every reading after the first


@pytest.fixture(scope="module")
def model():
    return TfliteModel(BUNDLED_MODEL, max_batch=64)


class Harness:
    """An Engine with a list-appending dead-letter publisher."""

    def __init__(self, model: TfliteModel) -> None:
        self.letters: list[tuple[str, bytes]] = []
        self.rejects = Rejects("edge", logging.getLogger("fuzz.edge"), publish=lambda t, p: self.letters.append((t, p)),
                               node="edge-fuzz")
        runner = PipelineRunner.build(PipelineSettings(), model)
        sampler = Sampler(SamplingSettings(fraction=1.0, seed=1, budget_per_hour_per_device=10**6))
        self.engine = Engine([runner], self.rejects, node_id="edge-fuzz", max_payload_bytes=MAX_PAYLOAD,
                             sampler=sampler)
        self.seq: dict[str, int] = {}


def reading(values, seq: int, ts: float = 1_795_740_561.0, **extra) -> dict:
    return {"v": 1, "ts": ts, "seq": seq, "values": values, "rate_hz": 1000.0, **extra}


@st.composite
def good_values(draw) -> list[list[float]]:
    """A chunk of realistic samples, sometimes with an extreme value planted in it."""
    seed = draw(st.integers(0, 2**32 - 1))
    rows = np.random.default_rng(seed).normal(0.0, 1.0, (SAMPLES, CHANNELS)).round(4)
    if draw(st.booleans()):
        rows[draw(st.integers(0, SAMPLES - 1)), draw(st.integers(0, CHANNELS - 1))] = draw(st.sampled_from(NASTY_NUMBERS))
    return rows.tolist()


topics = st.one_of(
    st.sampled_from([f"sensors/{d}/vibration" for d in DEVICES]),
    st.sampled_from(["sensors/dev-1/temperature", "sensors/dev-1", "sensors/dev-1/vibration/x", "sensors//vibration",
                     "sensors/+/vibration", "sensors/#", "results/dev-1/vibration", "$SYS/x", "sensors/dev 1/vibration",
                     "sensors/" + "d" * 65 + "/vibration", ""]),
    st.builds(lambda a, b: f"sensors/{a}/{b}", st.sampled_from(NASTY_TEXT) | st.text(max_size=8),
              st.just("vibration") | st.text(max_size=8)),
    st.text(max_size=40),
)


@st.composite
def messages(draw, harness_devices=DEVICES) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["good", "good", "good", "near_miss", "json", "bytes", "oversized", "shape"]))
    device = draw(st.sampled_from(harness_devices[:1] * 4 + harness_devices))  # mostly one stream: windows form
    topic = f"sensors/{device}/vibration" if kind == "good" or draw(st.booleans()) else draw(topics)
    seq = draw(st.integers(0, 3)) if draw(st.integers(0, 9)) == 0 else -1  # -1: the stream's next seq
    if kind == "good":
        return topic, reading(draw(good_values()), seq)
    if kind == "near_miss":
        return topic, draw(near_miss(reading(draw(good_values()), seq), extra_keys=["v", "ts", "seq", "values",
                                                                                  "rate_hz", "label", "x"]))
    if kind == "json":
        return topic, json_bytes(draw(json_values))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=300))
    if kind == "shape":
        width = draw(st.integers(1, 5))
        rows = draw(st.integers(1, 4))
        return topic, reading([[0.5] * width for _ in range(rows)] if draw(st.booleans()) else [0.5] * width, seq)
    pad = MAX_PAYLOAD + draw(st.integers(1, 1000))
    return topic, json.dumps(reading([[0.0] * CHANNELS], seq)).encode() + b" " * pad  # valid JSON, too big


def oracle_accepts(topic: str, payload: bytes) -> bool:
    """Independent of the engine: would this message be taken into a window (or skipped as a repeat)?"""
    try:
        _, sensor = parse_sensor_topic(topic)
        parsed = decode_reading(payload, MAX_PAYLOAD)
    except ContractError:
        return False
    values = np.asarray(parsed.values, dtype=np.float64).reshape(parsed.n_samples, -1)
    with np.errstate(over="ignore"):
        fits = np.isfinite(values.astype(np.float32)).all()
    return sensor == "vibration" and parsed.n_channels == CHANNELS and bool(fits)


def check_published(messages_out: list[tuple[str, bytes]], ingested_devices: set[str]) -> None:
    for topic, payload in messages_out:
        if topic.startswith("results/"):
            device, model = parse_result_topic(topic)
            for result in decode_results(payload, 1 << 22):
                assert (result.device, result.model) == (device, model)
                assert np.isfinite(result.outputs).all() and np.isfinite(result.score)
        else:
            device, model = parse_sample_topic(topic)
            batch = decode_samples(payload, 1 << 22)
            assert batch.device == device
        assert device in ingested_devices


@fuzz
@given(batch=st.lists(messages(), min_size=1, max_size=10))
def test_no_sensor_message_crashes_the_engine_or_goes_unaccounted(model, batch):
    h = Harness(model)
    accepted_devices: set[str] = set()
    for topic, doc in batch:
        payload = doc if isinstance(doc, bytes) else json_bytes(doc)
        if isinstance(doc, dict) and doc.get("seq") == -1:  # the stream's next seq: windows really form
            h.seq[topic] = h.seq.get(topic, -1) + 1
            payload = json_bytes({**doc, "seq": h.seq[topic]})
        before_rejects, before_letters = h.rejects.total, len(h.letters)
        tally("edge: sensor topic + payload -> Engine.ingest")
        h.engine.ingest(topic, payload, 0.0)
        expected_ok = oracle_accepts(topic, payload)
        new_rejects = h.rejects.total - before_rejects
        new_letters = h.letters[before_letters:]
        if expected_ok:
            assert new_rejects == 0 and not new_letters, (topic, payload[:200], h.rejects.by_reason)
            accepted_devices.add(parse_sensor_topic(topic)[0])
        else:
            assert new_rejects == 1 and len(new_letters) == 1, (topic, payload[:200])
            (letter_topic, letter_bytes), = new_letters
            letter = DeadLetter.model_validate_json(letter_bytes)
            assert letter_topic == "deadletter/edge" and letter.reason and letter.reason in h.rejects.by_reason
            assert letter.payload_bytes == len(payload) and letter.topic == topic[: len(letter.topic)]
    published = h.engine.flush()
    check_published(published, accepted_devices)
    for reason in h.rejects.by_reason:
        event(f"reject {reason}")
    event("published results" if published else "published nothing")
    # Invalid model outputs are rejects too: every reject, whatever its source, has a dead-letter.
    assert h.rejects.total == len(h.letters) == h.rejects.dead_lettered
    assert h.engine.counters["readings_in"] == len(batch)


def test_values_beyond_float32_are_rejected_not_windowed(model):
    h = Harness(model)
    h.engine.ingest("sensors/dev-1/vibration", json_bytes(reading([[1e39, 0.0, 0.0]] * SAMPLES, 0)), 0.0)
    assert h.rejects.by_reason == {"non_finite": 1}


def test_extreme_but_float32_values_never_publish_a_non_finite_result(model):
    """3e38 squares to infinity inside the feature stage: the window is invalid input, dead-lettered, not scored."""
    h = Harness(model)
    for seq in range(3):
        h.engine.ingest("sensors/dev-1/vibration", json_bytes(reading([[3e38, -3e38, 1.0]] * SAMPLES, seq)), 0.0)
    published = h.engine.flush()
    check_published(published, {"dev-1"})
    assert not [t for t, _ in published if t.startswith("results/")]
    assert h.rejects.by_reason == {"invalid_input": 2} and h.engine.counters["invalid_inputs"] == 2  # 3 readings: 2 windows
    assert h.engine.counters["windows"] == 0 and h.engine.counters["invalid_outputs"] == 0  # the model never saw them
    assert h.rejects.total == len(h.letters)
