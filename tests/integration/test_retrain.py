"""Retraining from the sample store, through the real CLI (``edgeloop model retrain``: the closed loop's
retrain flow in a worker process), with int8 quantization.

The store holds field samples of a drifted simulated fleet (scored by the bundled model, as the
edge would have sent them); the registry holds the bundled model as the current version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import device_windows, fleet_stream

from edgeloop.bridge.loopconfig import RetrainSettings, SampleStoreSettings
from edgeloop.bridge.registry import Registry
from edgeloop.bridge.samples import SampleStore
from edgeloop.bridge.training.retrain import RetrainJob, conformal_threshold, new_version, retrain, robust_keep
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.edge.inference import TfliteModel
from lab.loopscenario import seed_registry
from lab.procs import run_cli


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> Path:
    """A sample store with ~1000 random rows of 3 drifted machines (with faults) and a seeded registry."""
    root = tmp_path_factory.mktemp("field")
    model = TfliteModel(BUNDLED_MODEL)
    sims = [FleetSimulator(3, seed=42, anomaly_rate=0.004, drift_at_s=0.0)] * 3
    store = SampleStore(SampleStoreSettings(enabled=True, dir=root / "samples"))
    now = time.time()
    for t, batch in fleet_stream(model, sims, 75.0):
        store.add(batch, received=now - 100 + t)
    store.flush()
    seed_registry(root / "registry")
    return root


def test_helpers():
    assert new_version("1.0.0-r20260101000000", ["1.0.0-r20270101000000"], now=1_798_761_600) == "1.0.0-r20270101000000-2"
    scores = np.arange(1, 201, dtype=float)
    assert conformal_threshold(scores, 0.995) == 200.0  # ceil(201 * 0.995) = 200
    assert conformal_threshold(scores, 0.5) == 101.0
    groups = np.array(["a"] * 50 + ["b"] * 50)
    values = np.concatenate([np.full(50, 0.1), np.full(50, 5.0)])
    values[3] = 50.0  # far out of line for device a, ordinary for b
    assert list(np.flatnonzero(~robust_keep(values, groups, 3.0))) == [3]


def test_too_few_samples_is_refused_before_training(field):
    settings = RetrainSettings(min_train_samples=50_000, max_train_samples=100_000)
    result = retrain(RetrainJob(model="vibration_ae", store_dir=field / "samples", registry_dir=field / "registry",
                                out_dir=field / "none", settings=settings))
    assert not result.passed and "need 50000" in result.reason and result.candidate is None


def test_cli_retrains_gates_and_registers_an_int8_model(field, tmp_path):
    config = tmp_path / "bridge.yaml"
    config.write_text(json.dumps({
        "samples": {"enabled": True, "dir": str(field / "samples")},
        "retrain": {"registry": str(field / "registry"), "min_train_samples": 500, "epochs": 30, "quantize": "int8"},
    }))
    proc = run_cli("model", "retrain", "vibration_ae", "-c", str(config), "--no-deploy", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert result["passed"] and result["gate"]["max_fpr"] is True and result["gate"]["recall"] is True
    assert result["metrics"]["parent_false_positive_rate_test"] > 0.3  # the drift the retrain fixes
    registry = Registry(field / "registry")
    version = result["version"]
    # The closed loop's flow (edgeloop.bridge.retrainflow) and its events, the trainer's output on stderr.
    assert "event retrain vibration_ae -: retrain requested (cli)" in proc.stderr
    assert f"event retrain vibration_ae {version}: candidate {version} from 1.0.0 (cli): gate passed" in proc.stderr
    assert f"registered vibration_ae {version} (not deployed: --no-deploy)" in proc.stdout
    assert registry.record("vibration_ae", version)["parent"] == "1.0.0"
    assert registry.current("vibration_ae") == "1.0.0"  # registered, not promoted (--no-deploy)
    path, meta = registry.get("vibration_ae", version)
    assert meta.training.parent == "1.0.0" and "int8" in meta.training.framework
    assert len(meta.reference.feature_quantiles) == 30

    # The candidate, run by the edge's interpreter on later windows of the same machines.
    candidate = tmp_path / "vibration_ae.tflite"
    candidate.write_bytes(path.read_bytes())
    candidate.with_suffix(".json").write_text(meta.model_dump_json(exclude_none=True))
    model = TfliteModel(candidate)
    sim = FleetSimulator(3, seed=42, anomaly_rate=0.004, drift_at_s=0.0)
    norm = model.normalization
    flagged, total = 0, 0
    for device in range(3):
        t, raw = device_windows(sim, device, 150.0)
        later = raw[t > 80.0]
        faults = sim.in_fault(device, t[t > 80.0])
        x = (later - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
        scores = model.run(x.astype(np.float32))[:, 0]
        flagged += int(np.sum(scores[~faults] > model.threshold))
        total += int(np.sum(~faults))
        if faults.any():
            assert np.mean(scores[faults] > model.threshold) > 0.5
    assert flagged / total < 0.03
