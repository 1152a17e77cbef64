"""The retrain gate seen refusing, once per rule, with real (small, 5-epoch) training on field samples of
simulated machines -- and a poisoned candidate: one device floods the samples with noise.

Each case changes one thing so exactly one rule refuses; the refused candidate is never written out
nor registered. (Passing: tests/integration/test_retrain.py.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from deploy_fixtures import variant
from unit.test_drift import fleet_stream

from edgeloop.bridge.loopconfig import RetrainSettings, SampleStoreSettings
from edgeloop.bridge.registry import Registry
from edgeloop.bridge.samples import SampleStore
from edgeloop.bridge.training.retrain import RetrainJob, RetrainResult, retrain
from edgeloop.contract import SampleBatch, SampleRow
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.edge.inference import TfliteModel
from lab.loopscenario import seed_registry

MODEL = "vibration_ae"
FAST = {"min_train_samples": 200, "epochs": 5}


def fill_store(root: Path, anomaly_rate: float, noisy_rows: int = 0) -> Path:
    """Random-fraction samples of three drifted machines (+ ``noisy_rows`` from a fourth device, dev-099,
    whose rows are real rows with every feature scaled by a log-normal factor: a broken or hostile sensor)."""
    model = TfliteModel(BUNDLED_MODEL)
    sims = [FleetSimulator(3, seed=42, anomaly_rate=anomaly_rate, drift_at_s=0.0)] * 3
    store = SampleStore(SampleStoreSettings(enabled=True, dir=root / "samples"))
    now = time.time()
    events = fleet_stream(model, sims, 75.0)
    for t, batch in events:
        store.add(batch, received=now - 100 + t)
    rng = np.random.default_rng(1)
    clean = np.array([batch.rows[0].features for _, batch in events])
    template = events[0][1]
    for k in range(noisy_rows):
        features = clean[rng.integers(len(clean))] * np.exp(rng.normal(0.0, 1.0, clean.shape[1]))
        row = SampleRow(ts=1.7e9 + k * 0.05, seq=k, features=features.tolist(), score=1.0, anomaly=False,
                        reason="random")
        store.add(SampleBatch(device="dev-099", sensor="vibration", model=MODEL, model_version=template.model_version,
                              model_sha256=template.model_sha256, rows=[row]), received=now - 50 + k * 0.05)
    store.flush()
    return root / "samples"


@pytest.fixture(scope="module")
def drifted(tmp_path_factory) -> Path:
    return fill_store(tmp_path_factory.mktemp("drifted"), anomaly_rate=0.004)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> Path:
    """The drifted machines (with faults) and a device sending 600 noisy rows (a third of the samples)."""
    return fill_store(tmp_path_factory.mktemp("poisoned"), anomaly_rate=0.004, noisy_rows=600)


@pytest.fixture(scope="module")
def poisoned_quiet(tmp_path_factory) -> Path:
    """As ``poisoned`` but no machine had a fault: there are no known anomalies to measure recall on."""
    return fill_store(tmp_path_factory.mktemp("quiet"), anomaly_rate=0.0, noisy_rows=600)


def run(store: Path, tmp_path: Path, registry: Path | None = None, **settings) -> RetrainResult:
    if registry is None:
        registry = tmp_path / "registry"
        seed_registry(registry)
    result = retrain(RetrainJob(model=MODEL, store_dir=store, registry_dir=registry, out_dir=tmp_path / "out",
                                settings=RetrainSettings(**{**FAST, **settings})))
    assert not result.passed and result.candidate is None and not (tmp_path / "out").exists()
    assert Registry(registry).versions(MODEL) == [Registry(registry).current(MODEL)]  # nothing registered
    return result


def refused_by(result: RetrainResult) -> list[str]:
    assert result.reason.startswith("gate refused the candidate: "), result.reason
    return [rule for rule, verdict in result.gate.items() if verdict is False]


def test_max_fpr(drifted, tmp_path):
    """A threshold at the 60 % quantile flags ~40 % of normal windows; still fewer than the drifted parent."""
    result = run(drifted, tmp_path, threshold_quantile=0.6)
    assert refused_by(result) == ["max_fpr"], result.gate
    assert "> 2.000%" in result.reason and result.metrics["false_positive_rate_test"] > 0.2


def test_not_worse_than_parent(drifted, tmp_path):
    """The parent (threshold 1e9) flags nothing, so a candidate flagging 10 % is worse although max_fpr allows it."""
    registry = Registry(tmp_path / "registry", actor="test")
    registry.add(MODEL, *variant("1.0.0", threshold=1e9))
    registry.promote(MODEL, "1.0.0")
    result = run(drifted, tmp_path, registry=tmp_path / "registry", threshold_quantile=0.9, max_fpr=1.0)
    assert refused_by(result) == ["not_worse_than_parent"], result.gate
    assert "parent's 0.000%" in result.reason
    assert result.gate["recall"].startswith("skipped")  # nothing scores 5 x 1e9: no known anomalies


def test_recall(poisoned, tmp_path):
    """Trained on the noisy device's rows, the candidate misses the machines' real faults."""
    result = run(poisoned, tmp_path, max_threshold_ratio=1e6)
    assert refused_by(result) == ["recall"], result.gate
    assert result.metrics["known_anomalies"] >= 10 and result.metrics["recall_known_anomalies"] < 0.8


def test_a_poisoned_candidate_is_refused_without_known_anomalies(poisoned_quiet, tmp_path):
    """No fault happened, so recall cannot be measured; the typical device's threshold still shows the poison."""
    result = run(poisoned_quiet, tmp_path)
    assert refused_by(result) == ["typical_device"], result.gate
    assert result.gate["recall"].startswith("skipped")
    assert result.metrics["threshold"] > 10 * result.metrics["typical_device_threshold"]
    assert "a minority of devices set it" in result.reason
