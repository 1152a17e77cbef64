"""The edge model manager without a broker: messages go straight to its handler, the engine is driven by hand."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.startup import build_engine
from edgeloop.rejects import Rejects
from edgeloop.signing import SigningKey, generate_keypair
from edgeloop.edge.config import BUNDLED_MODEL, DeploySettings, EdgeConfig
from edgeloop.contract import InferenceResult
from edgeloop.deploy_contract import (
    ModelManifest,
    SelfTest,
    chunk_count,
    chunk_topic,
    deploy_topic,
    sign_manifest,
    split_chunks,
)
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.model_manager import ModelManager, run_selftest
from edgeloop.modelfile import load_model_files, sha256_bytes

BASE_CONTENT, BASE_META = load_model_files(BUNDLED_MODEL)
MODEL = BASE_META.name
CANARY_WINDOWS = 8


def variant(version: str, threshold: float | None = None):
    content = BASE_CONTENT + b"\0" * 8
    update = {"version": version, "sha256": sha256_bytes(content)}
    if threshold is not None:
        update["threshold"] = threshold
    return content, BASE_META.model_copy(update=update)


def selftest_for(content, meta) -> SelfTest:
    from edgeloop.bridge.training.selftest import make_selftest

    return make_selftest(content, meta, rows=4)


class Node:
    """An engine and its model manager, fed by hand."""

    def __init__(self, tmp: Path, key_file: Path, node_id: str = "n1", state_dir: Path | None = None,
                 devices: int = 2, anomaly_rate: float = 0.0, **deploy) -> None:
        self.cfg = EdgeConfig(
            node_id=node_id,
            deploy=DeploySettings(enabled=True, public_key_file=key_file,
                                  state_dir=state_dir if state_dir is not None else tmp / f"state-{node_id}",
                                  **{"canary_windows": CANARY_WINDOWS, **deploy}),
        )
        self.rejects = Rejects("edge", logging.getLogger("test"))
        self.engine = build_engine(self.cfg, self.rejects)
        self.manager = ModelManager(self.cfg, self.engine, self.rejects)
        self.manager.restore(self.engine)
        self.results: list[InferenceResult] = []
        sim = FleetSimulator(devices, seed=3, anomaly_rate=anomaly_rate, sensors=("vibration",))
        self._readings = sim.readings(count=10**6)
        self.fed = {}

    def publish(self, messages) -> None:
        self.results += [InferenceResult.model_validate_json(p) for t, p in messages if t.startswith("results/")]

    def feed(self, n: int, age_s: float = 0.0, tamper=None) -> None:
        """n readings, a flush after every 4, and the worker's between-batch call, like app._work.

        ``age_s``: the readings arrived that long ago (result latency); ``tamper(topic, reading)``
        may replace a reading before it is sent (None: send it unchanged)."""
        for i in range(n):
            topic, reading = next(self._readings)
            self.fed[topic] = self.fed.get(topic, 0) + 1
            reading = (tamper(topic, reading) if tamper else None) or reading
            self.engine.ingest(topic, reading.model_dump_json().encode(), time.monotonic() - age_s)
            if i % 4 == 3:
                self.publish(self.engine.flush())
                self.manager.service(self.engine, self.publish)
        self.publish(self.engine.flush())
        self.manager.service(self.engine, self.publish)

    def deliver(self, key: SigningKey, content: bytes, meta, targets=("*",), selftest=None, deploy_id="aa" * 8) -> None:
        manifest = ModelManifest(
            model=MODEL, version=meta.version, sha256=meta.sha256, size=len(content), chunk_size=1024,
            chunks=chunk_count(len(content), 1024), targets=list(targets), deploy_id=deploy_id, created=time.time(),
            metadata=meta, selftest=selftest or selftest_for(content, meta),
        )
        self.manager._handle(deploy_topic(MODEL), sign_manifest(manifest, key))
        for i, part in enumerate(split_chunks(content, 1024)):
            self.manager._handle(chunk_topic(MODEL, meta.version, i), part)

    @property
    def version(self) -> str:
        return self.engine.runners["vibration"].model.version

    def state(self):
        return self.manager.states().get(MODEL)


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    private, public, _ = generate_keypair(tmp_path_factory.mktemp("keys"))
    return SigningKey.load(private), public


@pytest.fixture
def node(tmp_path, key_pair):
    return Node(tmp_path, key_pair[1])


def windows_of(fed: dict) -> int:
    return sum(n - 1 for n in fed.values())


def test_a_healthy_deployment_is_swapped_in_judged_and_kept(node, key_pair, tmp_path):
    node.feed(20)
    content, meta = variant("1.1.0")
    node.deliver(key_pair[0], content, meta)
    assert node.state().state == "receiving" and node.version == "1.0.0"  # prepared, not yet swapped
    node.feed(4 + CANARY_WINDOWS)
    assert node.version == "1.1.0" and node.state().state == "healthy" and node.state().windows >= CANARY_WINDOWS
    assert len(node.results) == windows_of(node.fed), "no window lost or doubled across the swap"
    switch = [r.model_version for r in node.results].index("1.1.0")
    assert {r.model_version for r in node.results[switch:]} == {"1.1.0"}
    assert {r.model_sha256 for r in node.results[switch:]} == {meta.sha256}
    node.manager._drain_persist()
    kept = tmp_path / "state-n1" / MODEL
    assert (kept / "current" / f"{MODEL}.tflite").read_bytes() == content
    assert (kept / "previous" / f"{MODEL}.tflite").read_bytes() == BASE_CONTENT

    restarted = Node(tmp_path, key_pair[1])  # same state_dir: a restarted edge comes back on 1.1.0
    assert restarted.version == "1.1.0"
    (kept / "current" / f"{MODEL}.tflite").write_bytes(b"corrupt")
    assert Node(tmp_path, key_pair[1]).version == "1.0.0"  # falls back to the kept previous model


def test_an_unhealthy_model_is_rolled_back_without_losing_windows(node, key_pair):
    node.feed(20)
    node.deliver(key_pair[0], *variant("2.0.0", threshold=0.0))
    node.feed(4 + CANARY_WINDOWS)
    state = node.state()
    assert state.state == "rolled_back" and state.reason == "unhealthy" and "anomaly rate 1.000" in state.detail
    assert node.version == "1.0.0" and node.manager.counters["rollbacks"] == 1
    node.feed(8)
    assert len(node.results) == windows_of(node.fed)
    assert node.results[-1].model_version == "1.0.0"
    assert all(r.anomaly for r in node.results if r.model_version == "2.0.0")
    node.manager._drain_persist()
    assert not (node.cfg.deploy.state_dir / MODEL / "current").exists()


def test_a_new_deployment_during_probation_falls_back_to_the_last_proven_model(node, key_pair):
    node.feed(8)
    node.deliver(key_pair[0], *variant("2.0.0"), deploy_id="01" * 8)
    node.feed(4)  # swapped, still on probation
    assert node.version == "2.0.0" and node.state().state == "canary"
    content, meta = variant("3.0.0", threshold=0.0)
    node.deliver(key_pair[0], content + b"\0", meta.model_copy(update={"sha256": sha256_bytes(content + b"\0")}),
                 deploy_id="02" * 8)
    node.feed(4 + CANARY_WINDOWS)
    assert node.state().state == "rolled_back" and node.version == "1.0.0"


def test_manifests_for_other_nodes_and_the_running_version_are_ignored(node, key_pair):
    node.deliver(key_pair[0], *variant("1.1.0"), targets=["other-*"])
    assert node.state() is None and not node.manager._handoff and node.manager.counters["deploy_not_targeted"] == 1
    node.deliver(key_pair[0], BASE_CONTENT, BASE_META, deploy_id="cd" * 8)
    assert node.state() is None and node.manager.counters["deploy_already_running"] == 1
    assert not node.manager._handoff


def test_selftest_compares_within_tolerance():
    model = TfliteModel(BUNDLED_MODEL)
    good = selftest_for(BASE_CONTENT, BASE_META)

    def manifest(test: SelfTest) -> ModelManifest:
        return ModelManifest(model=MODEL, version="1.0.0", sha256=BASE_META.sha256, size=len(BASE_CONTENT),
                             chunk_size=1024, chunks=chunk_count(len(BASE_CONTENT), 1024), targets=["*"],
                             deploy_id="ab" * 8, created=1.7e9, metadata=BASE_META, selftest=test)

    assert run_selftest(model, manifest(good)) is None
    nudged = [[v + 5e-4 for v in row] for row in good.expected]
    assert run_selftest(model, manifest(SelfTest(inputs=good.inputs, expected=nudged))) is None
    off = [[v * 1.1 for v in row] for row in good.expected]
    assert "outside tolerance" in run_selftest(model, manifest(SelfTest(inputs=good.inputs, expected=off)))
    short = SelfTest(inputs=[row[:10] for row in good.inputs], expected=good.expected)
    assert "values" in run_selftest(model, manifest(short))
    wide = SelfTest(inputs=good.inputs, expected=[row * 2 for row in good.expected])
    assert "shape" in run_selftest(model, manifest(wide))


TOPICS = st.one_of(
    st.just(deploy_topic(MODEL)),
    st.just("models/other/deploy"),
    st.builds(lambda v, i: f"models/{MODEL}/{v}/chunk/{i}", st.sampled_from(["1.1.0", "x", "+"]),
              st.integers(-2, 10**7)),
    st.text(max_size=40).map(lambda t: "models/" + t),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(TOPICS, st.binary(max_size=300)), max_size=6))
def test_hostile_deploy_messages_never_crash_the_manager(node, messages):
    for topic, payload in messages:
        node.manager._handle(topic, payload)
    node.manager._expire()
    state = node.state()
    assert state is None or state.state in ("refused", "receiving")
    assert node.version == "1.0.0" and not node.manager._handoff
    assert node.manager.counters["deploy_internal_errors"] == 0


def test_refusals_are_reported_with_the_manifests_version(node, key_pair):
    other = SigningKey.generate()
    node.deliver(other, *variant("1.5.0"))
    state = node.state()
    assert (state.state, state.reason, state.version) == ("refused", "unknown_key", "1.5.0")
    assert node.rejects.by_reason["unknown_key"] == 1
    content, meta = variant("1.6.0")
    good = selftest_for(content, meta)
    node.deliver(key_pair[0], content, meta, selftest=SelfTest(inputs=good.inputs, expected=[[9.0]] * 4))
    assert (node.state().reason, node.state().version) == ("selftest_failed", "1.6.0")
    body = json.loads(node.state().model_dump_json())
    assert body["detail"]


def test_deploy_config_errors_name_the_field(tmp_path):
    from edgeloop.errors import ConfigError
    from edgeloop.edge.config import load_edge_config

    cfg = tmp_path / "edge.yaml"
    cfg.write_text("deploy: {enabled: true}\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(cfg)
    assert "edge.yaml" in str(info.value) and "deploy" in str(info.value) and "public_key_file" in str(info.value)
    (tmp_path / "bad.pub").write_text("not a key")
    cfg.write_text(f"deploy: {{enabled: true, public_key_file: {tmp_path / 'bad.pub'}}}\n")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_edge_config(cfg)
