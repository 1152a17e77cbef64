"""Drift monitor: the statistics, and the trigger on simulated fleets scored by the bundled model.

Time here is simulated (each window's device time is its arrival time), so the
fleet scenarios are deterministic and take no wall-clock time.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from helpers import SHA, fleet_stream

from edgeloop.bridge.drift import DriftMonitor, changed, ks_against_quantiles, psi, psi_against_quantiles
from edgeloop.bridge.loopconfig import DriftSettings
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.contract import SampleBatch, SampleRow
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import load_metadata, metadata_path

LEVELS = np.arange(1, 10) / 10


# ------------------------------------------------------------------ statistics


def test_psi_is_zero_for_the_expected_proportions_and_grows_with_the_shift():
    expected = np.full(10, 0.1)
    assert psi(expected, np.full(10, 50)) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    ref = rng.normal(size=100_000)
    edges = np.quantile(ref, LEVELS)
    same = psi_against_quantiles(rng.normal(size=2000), LEVELS, edges)
    small = psi_against_quantiles(rng.normal(0.3, 1, size=2000), LEVELS, edges)
    large = psi_against_quantiles(rng.normal(1.5, 1, size=2000), LEVELS, edges)
    assert same < 0.02 < small < 0.25 < large


def test_ks_against_reference_quantiles():
    rng = np.random.default_rng(1)
    levels = np.array([0.01, 0.05, *LEVELS, 0.95, 0.99])
    edges = np.quantile(rng.exponential(size=100_000), levels)
    d_same, p_same = ks_against_quantiles(rng.exponential(size=500), levels, edges)
    d_shift, p_shift = ks_against_quantiles(rng.exponential(size=500) * 2, levels, edges)
    assert p_same > 0.01 and d_same < 0.08
    assert p_shift < 1e-6 and d_shift > 0.2


def test_device_change_test_needs_significance_and_effect():
    rng = np.random.default_rng(2)
    base_s, base_f = rng.normal(size=100), rng.normal(size=(100, 10))
    same = changed(base_s, base_f, rng.normal(size=100), rng.normal(size=(100, 10)), 0.01, 0.3, 0.2)
    moved_features = rng.normal(size=(100, 10))
    moved_features[:, :4] += 2.0
    by_features = changed(base_s, base_f, rng.normal(size=100), moved_features, 0.01, 0.3, 0.2)
    by_score = changed(base_s, base_f, rng.normal(2, 1, size=100), rng.normal(size=(100, 10)), 0.01, 0.3, 0.2)
    assert not same[0] and by_features[0] and by_score[0]
    assert by_features[2] == pytest.approx(0.4)


def test_settings_refuse_an_interval_longer_than_the_window():
    with pytest.raises(ValueError, match="interval_s"):
        DriftSettings(window_s=5, interval_s=10)


# ------------------------------------------------------------------ fleets

SETTINGS = DriftSettings(
    enabled=True, window_s=20, interval_s=5, consecutive=3, min_samples=60, min_device_samples=15,
    baseline_samples=40, cooldown_s=1000,
)


@pytest.fixture(scope="module")
def model() -> TfliteModel:
    return TfliteModel(BUNDLED_MODEL)


def run_monitor(events: list, settings: DriftSettings = SETTINGS) -> tuple[DriftMonitor, list]:
    meta = load_metadata(metadata_path(BUNDLED_MODEL))
    monitor = DriftMonitor(settings, reference_for=lambda _m, _v: meta, clock=lambda: 0.0)
    triggers, next_eval = [], settings.interval_s
    for t, batch in events:
        while t >= next_eval:
            triggers += monitor.evaluate(now=next_eval)
            next_eval += settings.interval_s
        monitor.observe(batch, received=t)
    triggers += monitor.evaluate(now=next_eval)
    return monitor, triggers


def test_a_stable_fleet_with_ordinary_faults_does_not_trigger(model, caplog):
    sims = [FleetSimulator(3, seed=42, anomaly_rate=0.004)] * 3
    with caplog.at_level(logging.DEBUG, logger="edgeloop.bridge.drift"):
        monitor, triggers = run_monitor(fleet_stream(model, sims, 150.0))
    assert triggers == []
    [ev] = monitor.last_evaluations()
    assert ev.status == "stable" and ev.evidence["compared_devices"] == 3
    # Every evaluation is one DEBUG line (what an operator, and the closed-loop e2e test, read).
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drift evaluation ")]
    assert len(logged) == len(monitor.history) > 0
    assert logged[-1] == (f"drift evaluation {ev.model}/{ev.cohort} at={ev.at:.3f}: stable "
                          f"(devices 3, compared 3, changed 0, mismatched 0)")


def test_a_fleet_wide_regime_change_triggers_once_with_evidence(model):
    drift_at = 60.0
    sims = [FleetSimulator(3, seed=42, anomaly_rate=0.004, drift_at_s=drift_at)] * 3
    _, triggers = run_monitor(fleet_stream(model, sims, 150.0))
    assert len(triggers) == 1  # then the cooldown holds
    [trig] = triggers
    assert drift_at < trig.since <= trig.at and trig.at - drift_at <= 60.0  # simulated seconds
    assert trig.model == model.name and trig.version == model.version and trig.cohort == "fleet"
    ev = trig.evidence
    assert ev["changed_devices"] >= 2 and ev["consecutive"] == SETTINGS.consecutive
    for key in ("score_psi", "score_ks", "score_ks_p", "feature_psi_max", "feature_psi_median", "anomaly_rate"):
        assert np.isfinite(ev[key])
    assert ev["anomaly_rate"] > ev["expected_anomaly_rate"]


def test_a_single_devices_burst_of_faults_does_not_trigger(model):
    normal = FleetSimulator(3, seed=42, anomaly_rate=0.004)
    burst = FleetSimulator(3, seed=42, anomaly_rate=0.3)  # the same machines, faulty most of the time
    events = fleet_stream(model, [normal] * 3, 150.0, switch={2: (60.0, burst)})  # dev-002 breaks down at 60 s
    monitor, triggers = run_monitor(events)
    assert triggers == []
    [ev] = monitor.last_evaluations()
    assert ev.evidence["changed_devices"] == 1 and ev.evidence["mismatched_devices"] == 1
    # ...while the same burst on a one-device fleet is indistinguishable from drift:
    _, alone = run_monitor(fleet_stream(model, [burst, burst, burst], 150.0))
    assert alone


def test_flagged_rows_are_ignored_and_cohorts_are_separate():
    monitor = DriftMonitor(DriftSettings(enabled=True, cohort_by="site", window_s=10, interval_s=5), clock=lambda: 0.0)
    row = SampleRow(ts=1.7e9, seq=1, features=[1.0], score=5.0, anomaly=True, reason="flagged")
    for site in ("a", "b"):
        monitor.observe(SampleBatch(device="d", sensor="s", model="m", model_version="1", model_sha256=SHA,
                                    site=site, rows=[row, row.model_copy(update={"reason": "random"})]), received=1.0)
    monitor.evaluate(now=2.0)
    assert monitor.ignored_flagged == 2 and monitor.observed == 2
    assert sorted(monitor.stats()["evaluations"]) == ["m/a", "m/b"]
    assert all(e.status == "insufficient" for e in monitor.last_evaluations())


def test_the_loop_thread_imports_nothing_once_the_monitor_and_the_store_are_built(tmp_path):
    """river, scipy and pyarrow take seconds to import (7 s measured on a busy machine). Imported on the
    bridge's loop thread at the first batch, that stall became a backlog the drift monitor never caught
    up with; the monitor and the store import them when they are built instead."""
    import subprocess
    import sys

    code = f"""
import sys, time
from edgeloop.bridge.drift import DriftMonitor
from edgeloop.bridge.loopconfig import DriftSettings, SampleStoreSettings
from edgeloop.bridge.samples import SampleStore
from edgeloop.contract import SampleBatch, SampleRow
monitor = DriftMonitor(DriftSettings(enabled=True, window_s=5, interval_s=1, min_samples=5, min_device_samples=5,
                                     baseline_samples=5))
store = SampleStore(SampleStoreSettings(enabled=True, dir={str(tmp_path)!r}))
before = set(sys.modules)
rows = [SampleRow(ts=time.time(), seq=k, features=[0.1 * k, 1.0], score=0.1 * k, anomaly=False, reason="random")
        for k in range(20)]
batch = SampleBatch(device="d", sensor="vibration", model="m", model_version="1", model_sha256={SHA!r}, rows=rows)
for k in range(3):
    monitor.observe(batch, received=1000.0 + 3 * k)
    store.add(batch)
monitor.evaluate(now=1012.0)
store.flush()
print(sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("river", "scipy", "pyarrow", "pandas")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported on the loop thread: {out.stdout}"
