"""Results the engine encodes per batch (issue 12) are byte for byte what InferenceResult gives.

The engine checks a batch's outputs for finiteness at once and encodes plainly valid rows from
a dict (pydantic_core.to_json) instead of building and dumping an InferenceResult per window.
These tests hold that to the model: every published payload equals the model's own
``model_dump_json(exclude_none=True)`` of what it decodes to, and every row the model refuses
(a NaN or an infinite output) is still a counted, dead-lettered ``invalid_output``.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.contract import InferenceResult, decode_results, parse_result_topic
from edgeloop.edge.config import BUNDLED_MODEL, PipelineSettings
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.rejects import Rejects

SAMPLES = 64
DEVICES = ["dev-1", "dev-2", "m_3.a:b", "d4"]


@pytest.fixture(scope="module")
def model():
    return TfliteModel(BUNDLED_MODEL, max_batch=64)


class Planted:
    """The bundled model, but ``run`` returns planted outputs (NaN, inf, extremes) when given some."""

    def __init__(self, model: TfliteModel) -> None:
        self._model = model
        self.outputs: list[list[float]] | None = None

    def __getattr__(self, name):  # noqa: ANN001, ANN204
        return getattr(self._model, name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        real = self._model.run(batch)
        if self.outputs is None:
            return real
        planted = np.asarray(self.outputs[: len(real)], dtype=np.float32).reshape(len(real), -1)
        return planted


def reading(seq: int, device: int) -> bytes:
    values = np.random.default_rng(seq * 7 + device).normal(0.0, 1.0, (SAMPLES, 3)).round(4).tolist()
    return json.dumps({"v": 1, "ts": 1_795_740_561.0 + seq, "seq": seq, "values": values, "rate_hz": 1000.0}).encode()


def engine_with(model: Planted, batch_results: bool = False, site: str | None = "plant-7") -> tuple[Engine, list]:
    letters: list[tuple[str, bytes]] = []
    rejects = Rejects("edge", logging.getLogger("test.results"), publish=lambda t, p: letters.append((t, p)), node="n1")
    runner = PipelineRunner.build(PipelineSettings(), model)
    return Engine([runner], rejects, node_id="n1", site=site, batch_results=batch_results), letters


def fill(engine: Engine, seq: int) -> None:
    for d, device in enumerate(DEVICES):
        engine.ingest(f"sensors/{device}/vibration", reading(seq, d), 0.0)


def check_published(messages: list[tuple[str, bytes]], batch_results: bool) -> list[InferenceResult]:
    out = []
    for topic, payload in messages:
        if not topic.startswith("results/"):
            continue
        results = decode_results(payload, 1 << 20)
        if batch_results:
            expected = b"[" + b",".join(r.model_dump_json(exclude_none=True).encode() for r in results) + b"]"
        else:
            expected = results[0].model_dump_json(exclude_none=True).encode()
        assert payload == expected
        assert {parse_result_topic(topic)[0]} == {r.device for r in results}
        out += results
    return out


@pytest.mark.parametrize("batch_results", [False, True])
def test_real_outputs_encode_exactly_as_the_model_does(model, batch_results):
    engine, letters = engine_with(Planted(model), batch_results)
    for seq in range(4):
        fill(engine, seq)
    results = check_published(engine.flush(), batch_results)
    assert len(results) == 3 * len(DEVICES) and not letters
    assert {(r.device, r.seq) for r in results} == {(d, s) for d in DEVICES for s in (1, 2, 3)}
    assert all(r.site == "plant-7" and r.node == "n1" and r.latency_ms >= 0 for r in results)
    assert engine.runners["vibration"].tally["anomalies"] == sum(r.anomaly for r in results)


odd_floats = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-7, 3.4e38, -3.4e38, 1e-45, float("nan"), float("inf"), float("-inf")]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(odd_floats, min_size=len(DEVICES), max_size=len(DEVICES)), site=st.sampled_from([None, "s1"]),
       batch_results=st.booleans())
def test_planted_outputs_publish_or_reject_as_the_model_would(model, rows, site, batch_results):
    planted = Planted(model)
    engine, letters = engine_with(planted, batch_results, site=site)
    fill(engine, 0)
    fill(engine, 1)
    width = model.run(np.zeros((1, *model.input_shape), np.float32)).shape[1]
    planted.outputs = [[x] * width for x in rows]
    results = check_published(engine.flush(), batch_results)
    finite = [math.isfinite(float(np.float32(x))) for x in rows]
    assert len(results) == sum(finite)
    assert engine.counters["invalid_outputs"] == len(rows) - sum(finite)
    assert [json.loads(p)["reason"] for _t, p in letters] == ["invalid_output"] * (len(rows) - sum(finite))
    assert all(r.site == site for r in results)
