"""The engine's ingest path with topic templates and codecs, on the bundled model.

Routing by template, device and tag checks, arrival numbering and arrival time when a
format has neither, windows over one-value messages, pipelines without a window stage,
the extra tags on results, and what a codec's ``ended``/``replies`` do.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

from edgeloop.contract import decode_results
from edgeloop.edge.config import BUNDLED_MODEL, EdgeConfig
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.ingest.codec import Decoded, Reading
from edgeloop.rejects import Rejects

#: The bundled vibration model over 8-sample windows of 3 channels: its features do not depend on
#: the window size, so one-value climate messages can drive it (the scores mean nothing here).
SMALL_WINDOW = [
    {"type": "window", "size": 8, "hop": 8},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]


@pytest.fixture(scope="module")
def model():
    return TfliteModel(BUNDLED_MODEL, max_batch=64)


def make_engine(model, pipelines, site=None) -> tuple[Engine, Rejects]:
    cfg = EdgeConfig(pipelines=pipelines, site=site)
    rejects = Rejects("edge", logging.getLogger("test.ingest"), node="n1")
    runners = [PipelineRunner.build(p, model) for p in cfg.pipelines]
    return Engine(runners, rejects, node_id="n1", site=site), rejects


def results(messages):
    return [r for topic, payload in messages if topic.startswith("results/") for r in decode_results(payload, 1 << 20)]


def z2m(i: int) -> bytes:
    return json.dumps({"battery": 100, "humidity": 41.0 + i, "linkquality": 115, "pressure": 1013.2,
                       "temperature": 21.5 + 0.1 * i, "voltage": 3005}).encode()


def test_windows_over_consecutive_one_value_messages_with_arrival_time_and_numbering(model):
    engine, rejects = make_engine(model, [
        {"sensor": "vibration"},
        {"sensor": "climate", "input": {"preset": "zigbee2mqtt"}, "stages": SMALL_WINDOW},
    ])
    before = time.time()
    for i in range(16):
        assert engine.ingest("zigbee2mqtt/living_room", z2m(i), time.monotonic()) == 1
    out = results(engine.flush())
    assert [(r.device, r.sensor, r.seq) for r in out] == [("living_room", "climate", 7), ("living_room", "climate", 15)]
    assert before <= out[0].ts <= out[1].ts <= time.time()  # no device time: arrival time
    assert out[0].tags is None and rejects.total == 0


def test_a_pipeline_without_a_window_stage_scores_every_message(model):
    engine, _ = make_engine(model, [{"sensor": "t", "in_channels": 30, "stages": [{"type": "normalize", "from_model": True}],
                                     "input": {"codec": "json", "topic": "home/{device}/state"}}])
    payload = json.dumps([0.1] * 30).encode()
    for _ in range(3):
        assert engine.ingest("home/probe-1/state", payload, time.monotonic()) == 1
    assert [r.seq for r in results(engine.flush())] == [0, 1, 2]


def test_template_tags_sensor_and_site_reach_the_results(model):
    engine, rejects = make_engine(model, [{
        "sensor": "climate", "stages": SMALL_WINDOW,
        "input": {"preset": "zigbee2mqtt", "topic": "plant/{site}/{area}/{line}/{device}/{sensor}"}}], site="edge-site")
    for i in range(8):
        engine.ingest("plant/berlin/north/l3/press-7/inlet", z2m(i), time.monotonic())
        engine.ingest("plant/berlin/north/l3/press-7/outlet", z2m(i), time.monotonic())
    out = sorted(results(engine.flush()), key=lambda r: r.sensor)
    assert [(r.device, r.sensor, r.site, r.tags) for r in out] == [
        ("press-7", "inlet", "berlin", {"area": "north", "line": "l3"}),
        ("press-7", "outlet", "berlin", {"area": "north", "line": "l3"}),
    ]
    assert rejects.total == 0


@pytest.mark.parametrize("topic,reason", [
    ("zigbee2mqtt/living room", "bad_topic"),
    ("zigbee2mqtt/$weird", "bad_topic"),
    ("zigbee2mqtt/" + "x" * 65, "bad_topic"),
    ("zigbee2mqtt/a/b", "no_pipeline"),
    ("sensors/d/climate", "no_pipeline"),
    ("zigbee2mqtt/" + "x" * 300, "bad_topic"),
])
def test_untrusted_topic_values_are_rejected_with_a_reason(model, topic, reason):
    engine, rejects = make_engine(model, [{"sensor": "climate", "input": {"preset": "zigbee2mqtt"}, "stages": SMALL_WINDOW}])
    assert engine.ingest(topic, z2m(0), 0.0) == 0
    assert dict(rejects.by_reason) == {reason: 1}


def test_bad_tag_values_are_rejected(model):
    engine, rejects = make_engine(model, [{"sensor": "c", "input": {"preset": "zigbee2mqtt", "topic": "z/{area}/{device}"},
                                           "stages": SMALL_WINDOW}])
    assert engine.ingest("z/$x/d", z2m(0), 0.0) == 0
    assert dict(rejects.by_reason) == {"bad_tag": 1}


class ScriptedCodec:
    """Stands in for a multi-reading codec (SenML pack, Sparkplug): returns what the test says."""

    name = "scripted"

    def __init__(self) -> None:
        self.next: Decoded = Decoded()

    def decode(self, topic, fields, payload, arrival):
        return self.next


def rows(n: int, value: float = 0.5) -> np.ndarray:
    return np.full((n, 3), value, dtype=np.float32)


def test_multi_reading_messages_ended_streams_replies_and_codec_devices(model):
    engine, rejects = make_engine(model, [{"sensor": "vibration"}])
    scripted = ScriptedCodec()
    engine.routes[0] = ("vibration", scripted)
    scripted.next = Decoded([Reading("a", rows(64), 1_800_000_000.0, 0), Reading("b", rows(32), 1_800_000_000.0, 0)],
                            replies=[("spBv1.0/g/NCMD/n", b"rebirth")])
    # Held for as long as the reading that gave the fewest samples needs (runtime/inputacks.py).
    assert engine.ingest("sensors/x/vibration", b"", 0.0) == 32
    assert engine.replies == [("spBv1.0/g/NCMD/n", b"rebirth")] and engine.counters["replies_out"] == 1
    assert engine.live_streams == 2
    scripted.next = Decoded(ended=["a"])
    assert engine.ingest("sensors/x/vibration", b"", 0.0) == 0
    assert engine.live_streams == 1 and engine.counters["streams_ended"] == 1
    # A device named by the payload (not the topic) is checked too: bad_device.
    scripted.next = Decoded([Reading("no/slash", rows(1), None, None), Reading("c", rows(64), None, None, tags={"model": "x"})])
    assert engine.ingest("sensors/x/vibration", b"", 0.0) == 0
    assert dict(rejects.by_reason) == {"bad_device": 1, "bad_tag": 1}


def test_a_codec_bug_costs_one_message_not_the_worker(model):
    engine, rejects = make_engine(model, [{"sensor": "vibration"}])

    class Broken:
        name = "broken"

        def decode(self, topic, fields, payload, arrival):
            raise KeyError("oops")

    engine.routes[0] = ("vibration", Broken())
    assert engine.ingest("sensors/x/vibration", b"{}", 0.0) == 0
    assert dict(rejects.by_reason) == {"codec_error": 1}


def test_edgeloop_readings_keep_their_seq_checks(model):
    engine, rejects = make_engine(model, [{"sensor": "vibration"}])

    def reading(seq):
        return json.dumps({"v": 1, "ts": 1_800_000_000.0 + seq, "seq": seq, "values": rows(64).tolist()}).encode()

    assert engine.ingest("sensors/d/vibration", reading(0), 0.0) == 64
    assert engine.ingest("sensors/d/vibration", reading(0), 0.0) == 0  # redelivery
    assert engine.ingest("sensors/d/vibration", reading(5), 0.0) == 64  # gap: window restarts
    assert engine.counters["stale_readings"] == 1 and engine.counters["sequence_gaps"] == 1
    assert rejects.total == 0
