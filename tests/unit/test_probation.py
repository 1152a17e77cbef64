"""Probation rules, each seen failing and passing through the real wiring: the model manager receives a
signed deployment, the engine scores windows, the swapper shadow-runs the proven model and judges.

Candidates are the bundled model's bytes with other metadata (tests/unit/test_model_manager.py:
``variant``): identical scores, so each test changes exactly the one thing its rule is about.
"""

from __future__ import annotations

from collections import Counter

import pytest
from unit.test_model_manager import Node, variant, windows_of

from edgeloop.edge.config import DeploySettings
from edgeloop.edge.probation import DeviceFigures, ShadowRun, judge


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    from edgeloop.signing import SigningKey, generate_keypair

    private, public, _ = generate_keypair(tmp_path_factory.mktemp("keys"))
    return SigningKey.load(private), public


def deploy(node: Node, key, content_meta, **feed) -> None:
    """Deliver a candidate, then feed until its probation is over (or far past it)."""
    node.feed(20)
    node.deliver(key, *content_meta)
    node.feed(4)  # swapped in at the next service call
    assert node.state().state == "canary"
    node.feed(node.cfg.deploy.canary_windows + 8, **feed)


def rolled_back_for(node: Node, rule: str) -> str:
    state = node.state()
    assert state.state == "rolled_back" and state.reason == "unhealthy", state
    assert node.version == "1.0.0" and node.manager.counters[f"rollbacks_{rule}"] == 1
    assert f"{rule}: " in state.detail, state.detail
    return state.detail


def healthy(node: Node, version: str) -> None:
    state = node.state()
    assert state.state == "healthy", state
    assert node.version == version and node.manager.counters["rollbacks"] == 0


def test_latency_rule(tmp_path, key_pair):
    late = Node(tmp_path, key_pair[1], node_id="late")
    deploy(late, key_pair[0], variant("1.1.0"), age_s=2.0)  # results 2 s after their readings arrived
    detail = rolled_back_for(late, "latency")
    assert "mean latency" in detail and "> 1000 ms" in detail
    patient = Node(tmp_path, key_pair[1], node_id="patient", max_latency_ms=5000)
    deploy(patient, key_pair[0], variant("1.1.0"), age_s=2.0)
    healthy(patient, "1.1.0")


def broken_normalization(version: str):
    """Same model, normalization std scaled by 1e-22: features ~1e20, the model's score overflows to inf."""
    content, meta = variant(version)
    norm = meta.normalization.model_copy(update={"std": [v * 1e-22 for v in meta.normalization.std]})
    return content, meta.model_copy(update={"normalization": norm})


def test_invalid_output_rule(node, key_pair):
    deploy(node, key_pair[0], broken_normalization("1.1.0"))
    detail = rolled_back_for(node, "invalid_output")
    assert "invalid outputs on windows the proven model scored" in detail
    assert node.rejects.by_reason["invalid_output"] > 0 and "invalid_input" not in node.rejects.by_reason


def test_anomaly_rate_rule_absolute_floor(node, key_pair):
    deploy(node, key_pair[0], variant("2.0.0", threshold=0.0))  # every window an anomaly
    detail = rolled_back_for(node, "anomaly_rate")
    assert "anomaly rate 1.000" in detail and "proven model 0.000 on the same windows" in detail


def test_anomaly_rate_rule_is_relative_to_the_proven_model_on_the_same_windows(tmp_path, key_pair):
    """Real faults on every machine: the proven model flags ~60 % too, so a candidate flagging as much is
    healthy although its rate is far over the 0.2 floor; the bound is 3 x the proven model's rate."""
    faulty = Node(tmp_path, key_pair[1], node_id="faulty", devices=4, anomaly_rate=0.1, canary_windows=40)
    deploy(faulty, key_pair[0], variant("1.1.0"))
    healthy(faulty, "1.1.0")
    on_probation = [r for r in faulty.results if r.model_version == "1.1.0"][:40]
    assert sum(r.anomaly for r in on_probation) / len(on_probation) > 0.3  # far over the floor
    # The relative bound still catches a noisy candidate when the proven model's rate is low:
    noisy = Node(tmp_path, key_pair[1], node_id="noisy", max_anomaly_rate=0.0)
    deploy(noisy, key_pair[0], variant("2.0.0", threshold=0.15))
    detail = rolled_back_for(noisy, "anomaly_rate")
    assert "bound 0.000" in detail


def test_blind_rule(node, key_pair):
    """Threshold 1e9 never flags: the healthiest anomaly rate there is, and rolled back as blind."""
    deploy(node, key_pair[0], variant("2.0.0", threshold=1e9))
    detail = rolled_back_for(node, "blind")
    assert "further below its threshold" in detail and "anomaly_rate" not in detail
    assert not any(r.anomaly for r in node.results if r.model_version == "2.0.0")


def test_a_threshold_moved_within_the_blind_factor_is_healthy(node, key_pair):
    """A retrain moves the threshold; 10x higher is a judgement call, not blindness (factor 100)."""
    deploy(node, key_pair[0], variant("1.1.0", threshold=10 * variant("x")[1].threshold))
    healthy(node, "1.1.0")


def extreme(device: str):
    """A tamper that turns every reading of ``device`` into +-3e38 (finite in float32; squares to inf)."""
    def tamper(topic, reading):
        if f"/{device}/" not in topic:
            return None
        values = [[3e38 if (i + j) % 2 else -3e38 for j in range(len(row))] for i, row in enumerate(reading.values)]
        return reading.model_copy(update={"values": values})
    return tamper


def test_one_device_sending_extreme_values_does_not_roll_back_a_good_model(tmp_path, key_pair):
    node = Node(tmp_path, key_pair[1], node_id="extreme", devices=3)
    deploy(node, key_pair[0], variant("1.1.0"), tamper=extreme("dev-001"))
    healthy(node, "1.1.0")
    assert node.rejects.by_reason["invalid_input"] > 0 and "invalid_output" not in node.rejects.by_reason
    assert node.engine.counters["invalid_inputs"] == node.rejects.by_reason["invalid_input"]
    assert not any(r.device == "dev-001" for r in node.results if r.model_version == "1.1.0")
    scored = Counter(r.device for r in node.results if r.model_version == "1.1.0")
    assert scored["dev-000"] > 0 and scored["dev-002"] > 0


def test_one_device_sending_extreme_values_does_not_pass_a_blind_model(tmp_path, key_pair):
    node = Node(tmp_path, key_pair[1], node_id="cover", devices=3)
    deploy(node, key_pair[0], variant("2.0.0", threshold=1e9), tamper=extreme("dev-001"))
    rolled_back_for(node, "blind")


def test_shadow_run_scores_every_probation_window_and_stops_after(node, key_pair):
    deploy(node, key_pair[0], variant("1.1.0"))
    healthy(node, "1.1.0")
    shadowed = node.manager.counters["probation_shadow_windows"]
    assert node.cfg.deploy.canary_windows <= shadowed <= node.cfg.deploy.canary_windows + 4
    assert node.engine.runners["vibration"].shadow is None
    assert len(node.results) == windows_of(node.fed)


def figures(rates: list[tuple[float, float]], shift: float = 0.0, windows: int = 20) -> ShadowRun:
    """A shadow run's per-device figures: (candidate rate, proven rate) per device, one log-margin shift."""
    run = ShadowRun(candidate=None, proven=None, max_windows=0)
    run.devices = {f"d{i}": DeviceFigures(windows, round(c * windows), round(p * windows), [shift] * windows)
                   for i, (c, p) in enumerate(rates)}
    return run


@pytest.mark.parametrize("rates, rolled_back", [
    ([(1.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.05, 0.0)], False),  # one device cannot veto
    ([(1.0, 0.0), (1.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 0.0)], True),  # three of five can
    ([(0.0, 0.0), (1.0, 0.1), (1.0, 0.1), (1.0, 0.1)], True),  # one quiet device cannot pass a noisy model
])
def test_the_median_device_decides(rates, rolled_back):
    tally = Counter(windows=100, latency_s=1.0)
    problems = judge(DeploySettings(), tally, figures(rates))
    assert [rule for rule, _ in problems] == (["anomaly_rate"] if rolled_back else [])


def test_one_device_cannot_hide_a_blind_model():
    run = figures([(0.0, 0.0)] * 4, shift=-20.0)
    run.devices["d0"].shifts = [0.0] * 20  # one device's windows sit where the proven model's do
    assert [rule for rule, _ in judge(DeploySettings(), Counter(windows=80, latency_s=0.1), run)] == ["blind"]
    run.devices["d1"].shifts = [0.0] * 20
    run.devices["d2"].shifts = [0.0] * 20
    assert judge(DeploySettings(), Counter(windows=80, latency_s=0.1), run) == []


@pytest.fixture
def node(tmp_path, key_pair):
    return Node(tmp_path, key_pair[1])
