"""The simulated fleet: determinism, shapes, ground truth, drift, time order, contract validity."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest

from edgeloop.devices.simulator import (
    DEFAULT_START_TS,
    FAULT_LABEL,
    TEMPERATURE,
    VIBRATION,
    FleetSimulator,
)
from edgeloop.contract import SensorReading, parse_sensor_topic


def _dump(sim: FleetSimulator, **kw) -> list[tuple[str, str]]:
    return [(topic, r.model_dump_json()) for topic, r in sim.readings(**kw)]


def test_same_seed_same_readings_other_seed_differs():
    a = _dump(FleetSimulator(3, seed=5, anomaly_rate=0.05, drift_at_s=1.0), duration_s=3.0)
    b = _dump(FleetSimulator(3, seed=5, anomaly_rate=0.05, drift_at_s=1.0), duration_s=3.0)
    c = _dump(FleetSimulator(3, seed=6, anomaly_rate=0.05, drift_at_s=1.0), duration_s=3.0)
    assert a == b
    assert a != c


def test_device_profile_does_not_depend_on_fleet_size():
    small, large = FleetSimulator(2, seed=3), FleetSimulator(7, seed=3)
    assert small.devices[1] == large.devices[1]
    np.testing.assert_array_equal(small.vibration_chunk(1, 40)[0], large.vibration_chunk(1, 40)[0])


def test_shapes_topics_and_ids():
    sim = FleetSimulator(3, seed=1)
    readings = list(sim.readings(duration_s=2.5))
    topics = {t for t, _ in readings}
    assert topics == {f"sensors/dev-00{i}/{s}" for i in range(3) for s in (VIBRATION, TEMPERATURE)}
    for topic, r in readings:
        _device, sensor = parse_sensor_topic(topic)
        if sensor == VIBRATION:
            assert (r.n_samples, r.n_channels) == (64, 3)
            assert r.rate_hz == 1000.0
        else:
            assert (r.n_samples, r.n_channels) == (1, 1)
            assert r.rate_hz is None
            assert 25.0 < r.values[0] < 70.0
    by_sensor = defaultdict(int)
    for topic, _ in readings:
        by_sensor[parse_sensor_topic(topic)[1]] += 1
    # 2.5 s: 39-40 chunks of 64 ms and 3 temperature readings per device
    assert 3 * 39 <= by_sensor[VIBRATION] <= 3 * 40
    assert by_sensor[TEMPERATURE] == 3 * 3


def test_count_and_duration_limits():
    sim = FleetSimulator(4, seed=2)
    assert len(list(sim.readings(count=123))) == 123
    assert list(sim.readings(count=0)) == []
    assert all(r.ts - DEFAULT_START_TS < 1.0 for _, r in sim.readings(duration_s=1.0))


def test_every_reading_validates_against_the_contract():
    sim = FleetSimulator(4, seed=9, anomaly_rate=0.2, drift_at_s=1.0)
    for _topic, r in sim.readings(duration_s=3.0):
        again = SensorReading.model_validate_json(r.model_dump_json())
        assert again == SensorReading.model_validate(r.model_dump())


def test_time_order_ts_monotonic_and_seq_contiguous_per_stream():
    sim = FleetSimulator(5, seed=4, anomaly_rate=0.02, time_scale=0.5, start_ts=1_800_000_000.0)
    last_ts: dict[str, float] = {}
    seqs: dict[str, list[int]] = defaultdict(list)
    previous = -math.inf
    for topic, r in sim.readings(duration_s=5.0):
        assert r.ts >= previous  # fleet-wide simulated-time order
        previous = r.ts
        assert r.ts > last_ts.get(topic, -math.inf)
        last_ts[topic] = r.ts
        seqs[topic].append(r.seq)
    for topic, s in seqs.items():
        assert s == list(range(len(s))), topic
    # time_scale compresses ts and scales the in-chunk sample rate with it
    assert all(r.rate_hz == 2000.0 for t, r in sim.readings(count=20) if t.endswith(VIBRATION))


def test_vibration_slices_are_independent_of_how_they_are_cut():
    sim = FleetSimulator(2, seed=11, anomaly_rate=0.05, drift_at_s=2.0)
    whole = sim.vibration_samples(1, 1000, 3000)
    parts = [sim.vibration_samples(1, s, 1000) for s in (1000, 2000, 3000)]
    np.testing.assert_array_equal(whole.samples, np.concatenate([p.samples for p in parts]))
    np.testing.assert_array_equal(whole.fault, np.concatenate([p.fault for p in parts]))


def test_published_values_are_the_rounded_building_block_samples():
    sim = FleetSimulator(2, seed=8, anomaly_rate=0.1)
    chunks = [(t, r) for t, r in sim.readings(duration_s=2.0) if t == "sensors/dev-001/vibration"]
    for topic, r in chunks[:10]:
        samples, label = sim.vibration_chunk("dev-001", r.seq)
        np.testing.assert_allclose(np.array(r.values), samples, atol=6e-5)
        assert r.label == label


@pytest.mark.parametrize("rate", [0.0005, 0.002, 0.01])
def test_fault_fraction_matches_the_requested_start_probability(rate):
    sim = FleetSimulator(20, seed=21, anomaly_rate=rate)
    n = 40_000
    masks = np.stack([sim.fault_mask(d, n) for d in range(20)])
    expected = sim.expected_fault_fraction
    # ~ rate * 20 * 40k fault episodes: 400..8000; relative sd of the fraction <= ~7%
    assert abs(masks.mean() - expected) < 0.25 * expected
    starts = np.count_nonzero(np.diff(masks.astype(np.int8), axis=1) == 1) + masks[:, 0].sum()
    healthy = (~masks).sum()
    assert abs(starts / healthy - rate) < 0.25 * rate


def test_fault_episodes_last_half_a_second_to_two_seconds():
    sim = FleetSimulator(1, seed=3, anomaly_rate=0.01)
    intervals = sim.fault_intervals(0, until_s=3000.0)
    assert len(intervals) > 50
    lengths = np.array([b - a for a, b in intervals])
    assert lengths.min() >= 0.5 - sim.chunk_s and lengths.max() <= 2.0 + sim.chunk_s
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(intervals))


def test_labels_follow_the_fault_schedule_and_zero_rate_has_none():
    sim = FleetSimulator(3, seed=5, anomaly_rate=0.02)
    vib = defaultdict(list)
    for topic, r in sim.readings(duration_s=60.0):
        device, sensor = parse_sensor_topic(topic)
        if sensor == VIBRATION:
            vib[device].append(r.label == FAULT_LABEL)
        else:
            assert (r.label == FAULT_LABEL) == bool(sim.in_fault(device, np.array([r.ts - sim.start_ts]))[0])
    for device, labels in vib.items():
        np.testing.assert_array_equal(labels, sim.fault_mask(device, len(labels)))
    assert any(any(v) for v in vib.values())
    clean = FleetSimulator(3, seed=5, anomaly_rate=0.0)
    assert all(r.label is None for _, r in clean.readings(duration_s=30.0))


def test_fault_chunks_carry_impacts_above_the_shaft_harmonics():
    sim = FleetSimulator(4, seed=13, anomaly_rate=0.02)
    high = {True: [], False: []}
    peak = {True: [], False: []}
    for d in range(4):
        block = sim.vibration_samples(d, 0, 64 * 3000)
        x = block.samples[:, 0].reshape(-1, 64)
        faulty = block.fault.reshape(-1, 64).any(axis=1)
        power = np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)) ** 2
        band = power[:, np.fft.rfftfreq(64, 1 / 1000.0) >= 200].sum(axis=1)  # shaft harmonics stay < 110 Hz
        centred = np.abs(x - x.mean(axis=1, keepdims=True)).max(axis=1)
        for flag in (True, False):
            high[flag] += band[faulty == flag].tolist()
            peak[flag] += centred[faulty == flag].tolist()
    assert len(high[True]) > 50
    assert np.median(high[True]) > 10 * np.median(high[False])
    assert np.median(peak[True]) > 1.2 * np.median(peak[False])


def _dominant_hz(x: np.ndarray, rate: float) -> float:
    spectrum = np.abs(np.fft.rfft(x - x.mean()))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_drift_changes_the_spectrum_but_not_the_labels():
    drift_at = 10.0
    sim = FleetSimulator(3, seed=17, drift_at_s=drift_at)
    for d in range(3):
        before = sim.vibration_samples(d, 2000, 4096)
        after = sim.vibration_samples(d, 15000, 4096)
        assert not before.drifted.any() and after.drifted.all()
        f_before = _dominant_hz(before.samples[:, 0], 1000.0)
        f_after = _dominant_hz(after.samples[:, 0], 1000.0)
        assert f_after / f_before == pytest.approx(1.4, rel=0.05)
        assert np.std(after.samples[:, 0]) > 1.15 * np.std(before.samples[:, 0])
        # without drift the spectrum stays put
        steady = FleetSimulator(3, seed=17).vibration_samples(d, 15000, 4096)
        assert _dominant_hz(steady.samples[:, 0], 1000.0) == pytest.approx(f_before, rel=0.05)
    assert all(r.label is None for _, r in sim.readings(duration_s=20.0))


def test_a_drift_started_mid_stream_is_the_drift_of_a_fleet_built_with_that_onset():
    """drift_from() (a rig changing the regime when something happened) never rewrites a reading already
    built, and what follows is what a fleet constructed with that drift_at_s yields (continuous phase)."""
    live = FleetSimulator(3, seed=4, anomaly_rate=0.05)
    stream = live.readings(duration_s=6.0)
    first = [(topic, r.model_dump_json()) for topic, r in itertools.islice(stream, 100)]
    last_t = SensorReading.model_validate_json(first[-1][1]).ts - DEFAULT_START_TS
    onset = live.drift_from(0.5)  # already past: moved after what was built
    assert onset > last_t > 0.5
    rest = [(topic, r.model_dump_json()) for topic, r in stream]
    assert first + rest == _dump(FleetSimulator(3, seed=4, anomaly_rate=0.05, drift_at_s=onset), duration_s=6.0)
    assert FleetSimulator(1).drift_from(3.0) == 3.0  # nothing built yet: the onset asked for
    with pytest.raises(ValueError):
        live.drift_from(-1.0)


def test_drift_raises_temperature():
    sim = FleetSimulator(1, seed=2, drift_at_s=100.0)
    _, temps, _ = sim.temperature(0, 0, 200)
    assert temps[100:].mean() - temps[:100].mean() > 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_devices": 0},
        {"seed": -1},
        {"anomaly_rate": 1.5},
        {"drift_at_s": -1.0},
        {"sensors": ("humidity",)},
        {"fault_duration_s": (2.0, 1.0)},
    ],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        FleetSimulator(**{"n_devices": 1, **kwargs})
