"""What the bridge admits from one device (issue 11, items 4-6), as pure logic: known versions,
timestamp window, per-device tag budgets, sample budgets, drift robust to one device, training caps.

The same findings against real influxd and mosquitto with the shipped ACL:
tests/integration/test_hostile_device.py.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from deploy_fixtures import BASE_VERSION, MODEL, seeded_registry, variant
from edgeloop.bridge.admission import DeviceBudget, KnownVersions, ResultGuard, TagBudget
from edgeloop.bridge.app import Bridge
from edgeloop.bridge.config import BridgeConfig, StoreSettings
from edgeloop.bridge.drift import DriftMonitor
from edgeloop.bridge.loopconfig import DriftSettings
from edgeloop.bridge.training.retrain import cap_per_device, per_device_cap
from edgeloop.contract import InferenceResult, ModelRef, NodeStatus, SampleBatch, SampleRow

SHA = "cd" * 32


def status(node: str, **models: str) -> NodeStatus:
    return NodeStatus(node=node, state="online", ts=time.time(),
                      models={m: ModelRef(version=v, sha256=SHA) for m, v in models.items()})


def result(device: str = "dev-1", version: str = "1.0.0", ts: float | None = None, **over) -> InferenceResult:
    fields = {"device": device, "sensor": "vibration", "model": "m1", "model_version": version, "model_sha256": SHA,
              "ts": time.time() if ts is None else ts, "seq": 1, "outputs": [0.5], "score": 0.1, "anomaly": False,
              "label": "normal", "latency_ms": 1.0}
    return InferenceResult(**{**fields, **over})


# ------------------------------------------------------------------ known versions


def test_registry_versions_are_known_and_one_added_later_is_seen_at_once(tmp_path):
    registry = seeded_registry(tmp_path / "registry")
    known = KnownVersions(registry.root)
    assert known.is_known(MODEL, BASE_VERSION)
    assert not known.is_known(MODEL, "9.9.9") and not known.is_known("made-up", BASE_VERSION)
    content, meta = variant("2.0.0")
    registry.add(MODEL, content, meta)  # what the deployer does before any edge has the version
    assert known.is_known(MODEL, "2.0.0")
    assert known.width(MODEL, BASE_VERSION) == meta.input.item_shape[0]
    assert known.width(MODEL, "9.9.9") is None


def test_a_node_keeps_its_last_announced_versions_known_and_no_more():
    known = KnownVersions(None, per_model=2, models_per_node=2)
    for version in ("1", "2", "3"):
        known.announce(status("edge-1", m1=version))
    assert not known.is_known("m1", "1")  # fell out: the node announced two newer ones
    assert known.is_known("m1", "2") and known.is_known("m1", "3")
    known.announce(status("edge-2", m1="1"))
    assert known.is_known("m1", "1")
    known.announce(status("edge-3", a="1", b="1", c="1"))  # a third model: ignored and counted
    assert known.stats()["announced_models_ignored"] >= 1
    assert sum(known.is_known(m, "1") for m in "abc") == 2


def test_nodes_tracked_are_bounded_and_a_forgotten_node_releases_its_versions():
    known = KnownVersions(None, max_nodes=3)
    for i in range(10):
        known.announce(status(f"edge-{i}", m1=f"v{i}"))
    assert known.stats()["nodes"] == 3 and known.stats()["announced"] == 3
    assert not known.is_known("m1", "v0") and known.is_known("m1", "v9")


# ------------------------------------------------------------------ results


def test_timestamps_are_bounded_on_both_sides_of_arrival():
    guard = ResultGuard(StoreSettings(known_versions="off", max_past_s=3600, max_future_s=60), None)
    now = time.time()
    assert guard.check(result(ts=now - 3500), now) is None
    assert guard.check(result(ts=now + 50), now) is None
    for ts in (now - 3700, now + 120, 1.0, 4_102_444_799.0):
        assert guard.check(result(ts=ts), now)[0] == "timestamp_out_of_range"
    assert guard.refused["timestamp_out_of_range"] == 4


def test_unknown_versions_are_refused_and_announced_ones_admitted():
    known = KnownVersions(None)
    guard = ResultGuard(StoreSettings(), known)
    now = time.time()
    assert guard.check(result(version="evil-1"), now)[0] == "unknown_model_version"
    known.announce(status("edge-1", m1="1.0.0"))
    assert guard.check(result(version="1.0.0"), now) is None


def test_a_device_gets_a_bounded_number_of_values_per_tag_and_others_are_unaffected():
    guard = ResultGuard(StoreSettings(known_versions="off", max_tag_values=3, tag_period_s=100), None)
    now = time.time()
    verdicts = [guard.check(result(sensor=f"s{i}"), now) for i in range(5)]
    assert verdicts[:3] == [None] * 3 and all(v[0] == "tag_cardinality" for v in verdicts[3:])
    assert guard.check(result(sensor="s0"), now) is None  # a value it already uses
    assert guard.check(result(device="dev-2", sensor="s9"), now) is None
    assert guard.check(result(sensor="s7", ts=now + 1), now + 101) is None  # the old values slid out


def test_tag_budget_memory_is_bounded_by_devices():
    tags = TagBudget(max_values=2, period_s=10, max_devices=5)
    for i in range(50):
        assert tags.admit(f"dev-{i}", (("sensor", "a"),), 0.0) is None
    assert len(tags._devices) == 5


def bridge_with(sink_lines: list, **store) -> tuple[Bridge, list]:
    class Sink:
        def write(self, lines):
            sink_lines.extend(lines)

        def close(self):
            pass

    bridge = Bridge(BridgeConfig.model_validate({"store": store}), sink=Sink())
    letters: list = []
    bridge.rejects.publish = lambda topic, payload: letters.append(json.loads(payload))
    return bridge, letters


def test_the_bridge_stores_the_admitted_results_of_a_message_and_dead_letters_the_rest():
    from edgeloop.bridge.batching import Batch

    lines: list = []
    bridge, letters = bridge_with(lines)
    batch = Batch()
    now = time.time()
    bridge._handle("status/edge-1", status("edge-1", m1="1.0.0").model_dump_json().encode(), batch)
    good = [result(seq=i).model_dump(mode="json") for i in range(3)]
    bad = [result(version="evil").model_dump(mode="json"), result(ts=now + 86_400).model_dump(mode="json")]
    bridge._handle("results/dev-1/m1", json.dumps(good + bad).encode(), batch)
    assert len(batch.lines) == 1 + 3  # the status point and the three good results
    assert sorted(letter["reason"] for letter in letters) == ["timestamp_out_of_range", "unknown_model_version"]
    assert bridge.stats()["results_refused"] == {"unknown_model_version": 1, "timestamp_out_of_range": 1}
    future = status("edge-2", m1="2.0.0").model_copy(update={"ts": now + 86_400})
    bridge._handle("status/edge-2", future.model_dump_json().encode(), Batch())
    assert letters[-1]["reason"] == "timestamp_out_of_range"


# ------------------------------------------------------------------ samples and the loop


def test_the_sample_budget_counts_rows_and_bytes_and_refills():
    budget = DeviceBudget(rows=100, nbytes=10_000, period_s=100)
    assert budget.take("d", 100, 10, 0.0)
    assert not budget.take("d", 1, 10, 0.0)  # rows spent
    assert budget.take("other", 10, 10, 0.0)
    assert budget.take("d", 10, 10, 10.0)  # a tenth of the period refilled a tenth
    assert not budget.take("e", 1, 10_001, 0.0)  # one wide message is over the bytes alone


def samples(device: str, version: str, n: int, t: float, rng, anomaly: bool = False, shift: float = 0.0):
    rows = [SampleRow(ts=1e9 + t, seq=k, features=(rng.normal(size=4) + shift).tolist(), score=float(rng.random()),
                      anomaly=anomaly, reason="random") for k in range(n)]
    return SampleBatch(device=device, sensor="vibration", model="m1", model_version=version, model_sha256=SHA,
                       rows=rows)


def test_one_device_with_its_own_version_cannot_make_the_fleet_drift():
    """Issue 11 item 6: 10 steady devices on 1.0.0 and one device flooding rows of a version of its own,
    every one an anomaly. The fleet is judged by its devices, each once: no drift, 1.0.0 reported."""
    s = DriftSettings(enabled=True, window_s=10, interval_s=2, consecutive=2, min_samples=50, min_device_samples=10,
                      baseline_samples=20, cooldown_s=1000)
    monitor = DriftMonitor(s)
    rng = np.random.default_rng(0)
    triggers, t = [], 0.0
    for step in range(30):
        t = step * 2.0
        for d in range(10):
            monitor.observe(samples(f"dev-{d}", "1.0.0", 8, t, rng), received=t)
        monitor.observe(samples("evil", "evil-1", 200, t, rng, anomaly=True, shift=5.0 * (step > 10)), received=t)
        triggers += monitor.evaluate(now=t)
    assert triggers == []
    last = monitor.last_evaluations()[0]
    assert last.version == "1.0.0" and last.evidence["devices"] == 11
    assert last.evidence["mismatched_devices"] == 1 and last.status == "stable"


def test_a_device_making_up_versions_cannot_keep_another_devices_baseline_out():
    s = DriftSettings(enabled=True, window_s=10, interval_s=2, max_devices=50, baseline_samples=5)
    monitor = DriftMonitor(s)
    rng = np.random.default_rng(1)
    for i in range(500):
        monitor.observe(samples("evil", f"v{i}", 1, 0.0, rng), received=0.0)
    monitor.observe(samples("dev-1", "1.0.0", 5, 0.0, rng), received=0.0)
    cohort = next(iter(monitor._cohorts.values()))
    assert ("dev-1", "1.0.0") in cohort.baselines
    assert sum(1 for d, _ in cohort.baselines if d == "evil") <= 3 and len(cohort.baselines) <= 50


def test_cohorts_named_by_the_publisher_are_bounded():
    monitor = DriftMonitor(DriftSettings(enabled=True, cohort_by="site"))
    rng = np.random.default_rng(3)
    for i in range(1100):
        monitor.observe(samples("evil", "1.0.0", 1, 0.0, rng).model_copy(update={"site": f"site-{i}"}), received=0.0)
    assert len(monitor._cohorts) == 1024 and monitor.stats()["ignored_cohorts"] == 76


def test_drift_across_the_fleet_still_triggers():
    s = DriftSettings(enabled=True, window_s=10, interval_s=2, consecutive=2, min_samples=50, min_device_samples=10,
                      baseline_samples=20, cooldown_s=1000)
    monitor = DriftMonitor(s)
    rng = np.random.default_rng(2)
    triggers = []
    for step in range(30):
        t = step * 2.0
        for d in range(10):
            monitor.observe(samples(f"dev-{d}", "1.0.0", 8, t, rng, shift=3.0 * (step > 12)), received=t)
        triggers += monitor.evaluate(now=t)
    assert [tr.version for tr in triggers] == ["1.0.0"]


# ------------------------------------------------------------------ training set


@pytest.mark.parametrize(("counts", "share", "cap"), [
    ([1000] * 10 + [1_000_000], 0.25, 1000),  # the flood is cut to what an honest device gives
    ([5000, 200, 200, 200, 200, 200, 200], 0.25, 200),
    ([300, 300, 300], 0.25, 300),  # too few devices for the share: capped at the second largest
    ([500], 0.25, None),  # one device is the whole fleet
    ([1000] * 5 + [400] * 5, 0.1, 400),  # the share binds: 400 <= 0.1 * (5 * 400 + 5 * 400)
])
def test_per_device_cap(counts, share, cap):
    assert per_device_cap(np.array(counts), share) == cap


def test_cap_keeps_each_devices_most_recent_rows():
    devices = np.array(["evil"] * 6 + ["a", "b", "evil", "a", "b"])
    keep = cap_per_device(devices, 0.5)
    assert keep.tolist() == [False] * 5 + [True] * 6
