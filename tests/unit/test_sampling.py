"""Samples for retraining: the sampler's choice and budget, the SampleBatch contract, the engine's output."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from reference import reference_features

from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.startup import build_engine
from edgeloop.rejects import Rejects
from edgeloop.edge.config import load_edge_config
from edgeloop.contract import (
    ContractError,
    SampleBatch,
    decode_results,
    decode_samples,
    parse_sample_topic,
    sample_topic,
)
from edgeloop.edge.sampling import HOUR_S, Sampler, SamplingSettings

SHA = "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_budget_is_a_hard_cap_over_any_rolling_hour():
    clock = Clock()
    sampler = Sampler(SamplingSettings(fraction=1.0, budget_per_hour_per_device=50, seed=1), clock=clock)
    sent: list[float] = []
    for _ in range(400):  # one window every 30 s for 200 minutes
        if sampler.choose("dev-1", anomaly=False):
            sent.append(clock.t)
        clock.t += 30.0
    sent_a = np.array(sent)
    for start in sent_a:
        assert np.sum((sent_a >= start) & (sent_a < start + HOUR_S)) <= 50
    assert len(sent) > 150  # the budget refills as the hour rolls on: 400 * 30 s is 3.3 hours
    assert sampler.counters["samples_dropped_budget"] == 400 - len(sent)


def test_budget_is_per_device():
    sampler = Sampler(SamplingSettings(fraction=1.0, budget_per_hour_per_device=3), clock=Clock())
    kept = {d: sum(bool(sampler.choose(d, False)) for _ in range(10)) for d in ("a", "b")}
    assert kept == {"a": 3, "b": 3}
    assert sampler.sent_last_hour("a") == 3


def test_flagged_windows_cannot_starve_the_random_sample():
    sampler = Sampler(
        SamplingSettings(fraction=1.0, budget_per_hour_per_device=10, flagged_share=0.3), clock=Clock()
    )
    sampler.settings = sampler.settings.model_copy(update={"fraction": 0.0})
    flagged = [sampler.choose("dev", anomaly=True) for _ in range(20)]
    assert flagged.count("flagged") == 3  # 30% of the budget
    sampler.settings = sampler.settings.model_copy(update={"fraction": 1.0})
    randoms = [sampler.choose("dev", anomaly=True) for _ in range(20)]
    assert randoms.count("random") == 7  # the rest of the budget stays for random windows


def test_flagged_off_and_fraction_zero_keep_nothing():
    sampler = Sampler(SamplingSettings(fraction=0.0, flagged=False), clock=Clock())
    assert all(sampler.choose("d", a) is None for a in (True, False) for _ in range(100))


def test_fraction_is_seeded_and_roughly_right():
    def run() -> list:
        s = Sampler(SamplingSettings(fraction=0.1, budget_per_hour_per_device=10**6, seed=5), clock=Clock())
        return [s.choose("d", False) for _ in range(5000)]

    first, second = run(), run()
    assert first == second
    assert 400 <= first.count("random") <= 600


def test_sampling_config_errors_name_the_field():
    with pytest.raises(Exception, match="sampling.fraction"):
        load_edge_config(None, {"sampling": {"fraction": 1.5}})
    with pytest.raises(Exception, match="sampling.budget"):
        load_edge_config(None, {"sampling": {"budget": 3}})


# ------------------------------------------------------------------ contract


def _batch(**kw) -> dict:
    row = {"ts": 1.7e9, "seq": 3, "features": [0.5, 1.5], "score": 0.2, "anomaly": False, "reason": "random"}
    base = {"device": "dev-1", "sensor": "vibration", "model": "m", "model_version": "1", "model_sha256": SHA,
            "rows": [row]}
    base.update(kw)
    return base


def test_sample_batch_round_trip_and_refusals():
    payload = json.dumps(_batch()).encode()
    batch = decode_samples(payload, 10_000)
    assert batch.rows[0].features == [0.5, 1.5] and batch.stage == "features"
    with pytest.raises(ContractError) as exc:
        decode_samples(payload, 10)
    assert exc.value.reason == "oversized"
    bad_rows = [dict(_batch()["rows"][0]), dict(_batch()["rows"][0], features=[1.0])]
    for bad in (_batch(rows=[]), _batch(rows=bad_rows), _batch(model_sha256="x")):
        with pytest.raises(ContractError) as exc:
            decode_samples(json.dumps(bad).encode(), 10_000)
        assert exc.value.reason == "invalid_schema"
    with pytest.raises(ContractError) as exc:
        decode_samples(b'{"v":1,"rows":[{"features":[NaN]}]}', 10_000)
    assert exc.value.reason in ("malformed_json", "non_finite")
    with pytest.raises(ValidationError):
        SampleBatch(**_batch(rows=[dict(_batch()["rows"][0], reason="other")]))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_sample_topic_parser_never_raises_anything_but_contract_errors(topic):
    try:
        device, model = parse_sample_topic(topic)
    except ContractError:
        return
    assert sample_topic(device, model) == topic


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_decode_samples_never_raises_anything_but_contract_errors(payload):
    try:
        decode_samples(payload, 1000)
    except ContractError:
        pass


# ------------------------------------------------------------------ engine


def test_engine_publishes_raw_features_of_kept_windows_next_to_results():
    cfg = load_edge_config(None, {"node_id": "n1", "sampling": {"fraction": 0.5, "seed": 3}})
    engine = build_engine(cfg, Rejects("edge", logging.getLogger("test")))
    sim = FleetSimulator(2, seed=4, anomaly_rate=0.02, sensors=("vibration",))
    windows: dict[tuple[str, int], list[np.ndarray]] = {}
    chunks: dict[str, list[np.ndarray]] = {}
    for topic, reading in sim.readings(count=120):
        engine.ingest(topic, reading.model_dump_json().encode(), time.monotonic())
        device = topic.split("/")[1]
        chunks.setdefault(device, []).append(np.asarray(reading.values, dtype=np.float32))
        if len(chunks[device]) >= 2:
            windows[(device, reading.seq)] = np.concatenate(chunks[device][-2:])
    messages = engine.flush()
    results = {(r.device, r.seq): r for t, p in messages if t.startswith("results/") for r in decode_results(p, 10**6)}
    batches = [(t, decode_samples(p, 10**6)) for t, p in messages if t.startswith("samples/")]
    assert {t for t, _ in batches} == {sample_topic(d, "vibration_ae") for d in ("dev-000", "dev-001")}
    rows = [(b, r) for _, b in batches for r in b.rows]
    random_rows = [r for _, r in rows if r.reason == "random"]
    flagged = {k for k, r in results.items() if r.anomaly}
    assert flagged and 0.3 * len(results) < len(random_rows) < 0.7 * len(results)
    random_keys = {(b.device, r.seq) for b, r in rows if r.reason == "random"}
    assert random_keys & flagged, "the random draw must not depend on the verdict"
    assert {(b.device, r.seq) for b, r in rows if r.reason == "flagged"} == flagged - random_keys
    for batch, row in rows:
        result = results[(batch.device, row.seq)]
        assert batch.node == "n1" and batch.model_version == result.model_version
        assert row.score == result.score and row.anomaly == result.anomaly and row.ts == result.ts
        expected = reference_features(windows[(batch.device, row.seq)])  # raw: before normalize
        np.testing.assert_allclose(row.features, expected, rtol=2e-3, atol=2e-4)
    assert engine.counters["samples_out"] == len(rows)


def test_engine_without_sampling_publishes_no_samples():
    cfg = load_edge_config(None, {"sampling": {"enabled": False}})
    engine = build_engine(cfg, Rejects("edge", logging.getLogger("test")))
    for topic, reading in FleetSimulator(1, seed=4, sensors=("vibration",)).readings(count=10):
        engine.ingest(topic, reading.model_dump_json().encode(), time.monotonic())
    assert [t for t, _ in engine.flush() if t.startswith("samples/")] == []
