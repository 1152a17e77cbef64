"""Bounded edge state: a device id is whatever a peer writes in a topic (issue 11, finding 7).

Per (device, sensor) stream the engine keeps a window buffer and the last seq. Without
a cap and an idle expiry, 100k made-up device ids kept 100k buffers for the life of the
process (edge RSS 87 -> 287 MB). These tests drive the real Engine with the bundled model.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from edgeloop.contract import deadletter_topic
from edgeloop.edge.config import BUNDLED_MODEL, PipelineSettings
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.rejects import Rejects

SAMPLES = 64  # the default vibration pipeline: window 128, hop 64


@pytest.fixture(scope="module")
def model():
    return TfliteModel(BUNDLED_MODEL, max_batch=64)


def make_engine(model, **settings) -> tuple[Engine, list[tuple[str, bytes]]]:
    letters: list[tuple[str, bytes]] = []
    rejects = Rejects("edge", logging.getLogger("test.streams"), publish=lambda t, p: letters.append((t, p)), node="n1")
    runner = PipelineRunner.build(PipelineSettings(**settings), model)
    return Engine([runner], rejects, node_id="n1"), letters


def reading(seq: int) -> bytes:
    values = np.random.default_rng(seq).normal(0.0, 1.0, (SAMPLES, 3)).round(4).tolist()
    return json.dumps({"v": 1, "ts": 1_795_740_561.0 + seq, "seq": seq, "values": values, "rate_hz": 1000.0}).encode()


def test_a_new_stream_beyond_max_streams_is_rejected_and_dead_lettered(model):
    engine, letters = make_engine(model, max_streams=3)
    for i in range(3):
        assert engine.ingest(f"sensors/dev-{i}/vibration", reading(0), 0.0) == SAMPLES
    assert engine.ingest("sensors/intruder/vibration", reading(0), 0.0) == 0
    assert engine.rejects.by_reason == {"too_many_streams": 1}
    assert [t for t, _ in letters] == [deadletter_topic("edge")]
    assert json.loads(letters[0][1])["reason"] == "too_many_streams"
    assert engine.live_streams == 3
    # A stream already live keeps working at the cap: only new ones are refused.
    assert engine.ingest("sensors/dev-0/vibration", reading(1), 0.0) == SAMPLES
    assert engine.pending == 1  # dev-0's second reading completed its first window


def test_idle_streams_expire_and_free_room_for_new_ones(model):
    engine, _ = make_engine(model, max_streams=2, stream_idle_s=60.0)
    engine.ingest("sensors/old/vibration", reading(0), 100.0)
    engine.ingest("sensors/busy/vibration", reading(0), 100.0)
    engine.ingest("sensors/busy/vibration", reading(1), 150.0)
    assert engine.expire_idle(159.0) == 0  # old: 59 s idle, not yet
    assert engine.expire_idle(161.0) == 1  # old: 61 s idle; busy: 11 s
    assert engine.counters["streams_expired"] == 1 and engine.live_streams == 1
    windower = engine.runners["vibration"].pipeline.windower
    assert ("old", "vibration") not in windower._streams and ("busy", "vibration") in windower._streams
    assert engine.ingest("sensors/new/vibration", reading(0), 162.0) == SAMPLES  # room again
    assert engine.rejects.total == 0


def test_an_expired_stream_starts_a_fresh_window(model):
    engine, _ = make_engine(model, stream_idle_s=10.0)
    engine.ingest("sensors/d/vibration", reading(0), 0.0)  # half a window
    engine.expire_idle(20.0)
    engine.ingest("sensors/d/vibration", reading(1), 21.0)  # would complete the window had the state survived
    assert engine.pending == 0
    engine.ingest("sensors/d/vibration", reading(2), 22.0)
    assert engine.pending == 1


def test_memory_stays_bounded_under_a_flood_of_made_up_device_ids(model):
    engine, _ = make_engine(model, max_streams=500)
    payload = reading(0)
    for i in range(5000):
        engine.ingest(f"sensors/fake-{i}/vibration", payload, float(i))
    runner = engine.runners["vibration"]
    assert len(runner.last_seq) == len(runner.last_seen) == len(runner.pipeline.windower._streams) == 500
    assert engine.rejects.by_reason["too_many_streams"] == 4500
