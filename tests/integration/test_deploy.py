"""Signed over-the-air deployment against a real mosquitto: swap, refusals, canary and rollback.

Edges run in-process (EdgeApp, the same object ``edgeloop edge run`` starts)
so the tests can count windows exactly; the deployer and the devices talk to
them only through the broker.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from deploy_fixtures import (
    BASE_VERSION,
    MODEL,
    Stream,
    deploy_state,
    edge_config,
    expected_windows,
    make_keys,
    seeded_registry,
    start_edge,
    tiny_variant,
    variant,
    watch_fleet,
)
from lab.mqtt import Watcher, publish_all
from lab.servers import eventually

from edgeloop.bridge.deployer import Deployer
from edgeloop.bridge.events import EventWriter
from edgeloop.mqtt import MqttSettings
from edgeloop.deploy_contract import SelfTest, canonical_bytes, deploy_topic, sign_manifest


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("deploy-keys"))


@pytest.fixture
def tiny_model():
    return tiny_variant()


class Lines:
    """An events sink that keeps the lines it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.lines += lines


@pytest.fixture
def setup(mosquitto, tmp_path, keys):
    """(registry, deployer, watcher, events); everything closed afterwards."""
    registry = seeded_registry(tmp_path / "registry")
    events = Lines()
    deployer = Deployer.connect(
        MqttSettings(url=mosquitto.url), registry, keys.signing, canary_timeout_s=30, rollout_timeout_s=30,
        chunk_size=1024, events=EventWriter(events),
    )
    watcher = watch_fleet(mosquitto.port)
    edges = []
    yield registry, deployer, watcher, events, edges
    for edge in edges:
        edge.stop()
    deployer.close()
    watcher.close()


def _online(deployer: Deployer, *nodes: str) -> None:
    eventually(lambda: set(nodes) <= set(deployer.nodes()), timeout=15, message=f"{nodes} not online")


def test_good_deploy_swaps_between_batches_without_losing_a_window(setup, mosquitto, tmp_path, keys):
    registry, deployer, watcher, events, edges = setup
    edges.append(start_edge(edge_config(mosquitto.url, "edge-a", keys, tmp_path)))
    _online(deployer, "edge-a")
    content, meta = variant("1.1.0")
    registry.add(MODEL, content, meta, parent=BASE_VERSION)

    stream = Stream(mosquitto.port, devices=2)
    try:
        stream.publish(20)
        stream.run(per_s=150, limit=4000)  # trials in child processes take seconds here
        eventually(lambda: len(watcher.results()) >= 20, timeout=15, message="no results before the deploy")
        report = deployer.deploy(MODEL, "1.1.0", targets="*")
        assert report.outcome == "deployed", report
        eventually(lambda: (s := deploy_state(watcher, "edge-a")) is not None and s.state == "healthy", timeout=30,
                   message="edge-a never reported 1.1.0 healthy")
        stream.stop()
        assert stream.published > 40
        windows = expected_windows(stream.readings)
        eventually(lambda: len(watcher.results()) >= windows, timeout=30,
                   message=f"fewer than {windows} results")
        assert edges[0].stop()  # drain: nothing more can arrive after this
    finally:
        stream.close()
    edges.clear()

    results = watcher.results("edge-a")
    keys_seen = Counter((r.device, r.seq, r.ts) for r in results)
    assert len(results) == windows and set(keys_seen.values()) == {1}, "every window exactly one result"
    by_device: dict[str, list] = {}
    for r in sorted(results, key=lambda r: (r.device, r.seq, r.ts)):
        by_device.setdefault(r.device, []).append(r)
    for device, rows in by_device.items():
        versions = [r.model_version for r in rows]
        switch = versions.index("1.1.0")
        assert set(versions[:switch]) == {BASE_VERSION} and set(versions[switch:]) == {"1.1.0"}, device
        assert {r.model_sha256 for r in rows[switch:]} == {meta.sha256}
        assert switch > 0
    assert registry.current(MODEL) == "1.1.0" and registry.previous(MODEL) == BASE_VERSION
    assert any(",kind=deploy," in line and 'version="1.1.0"' in line for line in events.lines)
    assert [e["action"] for e in registry.audit(MODEL)][-1] == "promote"
    kept = tmp_path / "state-edge-a" / MODEL
    assert json.loads((kept / "current" / f"{MODEL}.json").read_text())["version"] == "1.1.0"
    assert json.loads((kept / "previous" / f"{MODEL}.json").read_text())["version"] == BASE_VERSION


def _tampered(deployer, registry, keys):
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["*"])
    bad = bytearray(content)
    bad[len(bad) // 2] ^= 0x01
    deployer.publish_artifact(manifest, bytes(bad))
    deployer.publish_manifest(manifest)


def _tampered_undigested(deployer, registry, keys):
    """As from a deployer that predates chunk digests: only the artifact's sha256 can tell."""
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["*"])
    manifest = manifest.model_copy(update={"chunk_digests": None})
    bad = bytearray(content)
    bad[len(bad) // 2] ^= 0x01
    deployer.publish_artifact(manifest, bytes(bad))
    deployer.publish_manifest(manifest)


def _wrong_key(deployer, registry, keys):
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["*"])
    deployer.publish_artifact(manifest, content)
    deployer.publish_manifest(manifest, sign_manifest(manifest, keys.other))


def _tampered_manifest(deployer, registry, keys):
    """Signed by the trusted key for one canary node, then widened to the whole fleet in transit: the key id
    is right, the signature no longer matches the bytes."""
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["some-canary"])
    deployer.publish_artifact(manifest, content)
    signed = json.loads(sign_manifest(manifest, keys.signing))
    signed["targets"] = ["*"]
    deployer.publish_manifest(manifest, canonical_bytes(signed))


def _unsigned(deployer, registry, keys):
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["*"])
    deployer.publish_artifact(manifest, content)
    deployer.publish_manifest(manifest, canonical_bytes(manifest.unsigned_dict()))


def _truncated(deployer, registry, keys):
    manifest, content = deployer.manifest(MODEL, "1.2.0", ["*"])
    deployer.publish_artifact(manifest, content, chunks=list(range(manifest.chunks - 2)))
    deployer.publish_manifest(manifest)


def _bad_selftest(deployer, registry, keys):
    good = deployer.selftest_for(MODEL, "1.2.0")
    wrong = SelfTest(inputs=good.inputs, expected=[[v + 1.0 for v in row] for row in good.expected])
    deployer.publish(MODEL, "1.2.0", "*", selftest=wrong)


def _oversized(deployer, registry, keys):
    deployer.publish(MODEL, "1.2.0", "*")


def _spec_mismatch(deployer, registry, keys):
    deployer.publish(MODEL, "9.9.9", "*")


REFUSALS = [
    ("tampered artifact", _tampered, "incomplete", {"chunk_timeout_s": 1.0}),  # the tampered chunk is dropped
    ("tampered artifact, no chunk digests", _tampered_undigested, "hash_mismatch", {}),
    ("wrong key", _wrong_key, "unknown_key", {}),
    ("tampered manifest", _tampered_manifest, "bad_signature", {}),
    ("unsigned manifest", _unsigned, "unsigned", {}),
    ("truncated chunks", _truncated, "incomplete", {"chunk_timeout_s": 1.0}),
    ("bad self-test", _bad_selftest, "selftest_failed", {}),
    ("oversized artifact", _oversized, "too_large", {"max_artifact_bytes": 4096}),
    ("tensor spec mismatch", _spec_mismatch, "spec_mismatch", {}),
]


@pytest.mark.parametrize("case, act, reason, deploy_cfg", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_deployments_keep_the_old_model_serving(case, act, reason, deploy_cfg, setup, mosquitto, tmp_path,
                                                         keys, tiny_model):
    registry, deployer, watcher, _events, edges = setup
    edges.append(start_edge(edge_config(mosquitto.url, "edge-r", keys, tmp_path, **deploy_cfg)))
    _online(deployer, "edge-r")
    content, meta = variant("1.2.0")
    registry.add(MODEL, content, meta, parent=BASE_VERSION)
    registry.add(MODEL, *tiny_model)

    act(deployer, registry, keys)
    state = eventually(
        lambda: (s := deploy_state(watcher, "edge-r")) is not None and s.state == "refused" and s,
        timeout=20, message=f"{case}: edge-r never reported a refusal",
    )
    assert state.reason == reason, state
    assert state.detail
    assert any(json.loads(d)["reason"] == reason for d in watcher.on("deadletter/")), "refusal dead-lettered"

    stream = Stream(mosquitto.port, devices=1)
    try:
        stream.publish(6)
        eventually(lambda: len(watcher.results("edge-r")) >= 5, timeout=15, message="old model stopped serving")
    finally:
        stream.close()
    assert {r.model_version for r in watcher.results("edge-r")} == {BASE_VERSION}
    assert watcher.status("edge-r").models[MODEL].version == BASE_VERSION
    assert edges[0].engine.runners["vibration"].model.version == BASE_VERSION


def test_canary_failure_rolls_back_on_the_canary_and_leaves_the_fleet_alone(setup, mosquitto, tmp_path, keys):
    registry, deployer, watcher, events, edges = setup
    for node in ("edge-c", "edge-f1", "edge-f2"):
        edges.append(start_edge(edge_config(mosquitto.url, node, keys, tmp_path)))
    _online(deployer, "edge-c", "edge-f1", "edge-f2")
    content, meta = variant("2.0.0", threshold=0.0)  # every window an anomaly
    registry.add(MODEL, content, meta, parent=BASE_VERSION)

    stream = Stream(mosquitto.port, devices=2)
    try:
        stream.publish(10)
        stream.run(per_s=150, limit=4000)
        report = deployer.deploy(MODEL, "2.0.0", targets="*", canary=["edge-c"])
        assert report.outcome == "canary_failed", report
        assert report.nodes["edge-c"] == "rolled_back:unhealthy"
        before = len(watcher.results("edge-c"))
        eventually(lambda: len(watcher.results("edge-c")) >= before + 10, timeout=15,
                   message="edge-c stopped producing results after the rollback")
    finally:
        stream.close()

    state = deploy_state(watcher, "edge-c")
    assert state.state == "rolled_back" and state.reason == "unhealthy" and "anomaly rate" in state.detail
    canary = sorted(watcher.results("edge-c"), key=lambda r: r.ts)
    versions = [r.model_version for r in canary]
    assert "2.0.0" in versions and versions[-1] == BASE_VERSION
    assert all(r.anomaly for r in canary if r.model_version == "2.0.0")
    for node in ("edge-f1", "edge-f2"):
        assert {r.model_version for r in watcher.results(node)} == {BASE_VERSION}, node
        assert deploy_state(watcher, node) is None, node
        assert watcher.status(node).models[MODEL].version == BASE_VERSION
    assert "2.0.0" in registry.refused(MODEL)
    assert registry.current(MODEL) == BASE_VERSION
    assert any(",kind=refused," in line and 'version="2.0.0"' in line for line in events.lines)
    assert any(",kind=rollback," in line and "edge-c rolled back" in line and "anomaly rate" in line
               for line in events.lines)
    # The retained manifest is back on the fleet's version, so a node that connects now stays on it.
    retained = watcher_retained(mosquitto.port, deploy_topic(MODEL))
    assert json.loads(retained)["version"] == BASE_VERSION


def watcher_retained(port: int, topic: str) -> bytes:
    with Watcher(port, [topic]) as watch:
        return eventually(lambda: watch.on(topic) and watch.on(topic)[0], timeout=10,
                          message=f"no retained message on {topic}")


def test_cli_generates_keys_and_deploys_and_rolls_back_the_fleet(mosquitto, influx_db, tmp_path, capsys):
    from deploy_fixtures import Keys, bundled

    from edgeloop.cli import main
    from edgeloop.signing import SigningKey, VerifyKey
    from edgeloop.modelfile import write_model_files

    assert main(["keys", "generate", "--out", str(tmp_path / "keys")]) == 0
    keys = Keys(SigningKey.load(tmp_path / "keys" / "deploy.key"), tmp_path / "keys" / "deploy.pub", None)
    assert "deploy.pub" in capsys.readouterr().out and VerifyKey.load(keys.public_file).key_id == keys.signing.key_id
    reg = ["--registry", str(tmp_path / "registry")]
    base = write_model_files(tmp_path / "base", *bundled())
    new = write_model_files(tmp_path / "new", *variant("1.1.0"))
    assert main(["model", "add", str(base), "--promote", *reg]) == 0
    assert main(["model", "add", str(new), "--parent", BASE_VERSION, *reg]) == 0

    edge = start_edge(edge_config(mosquitto.url, "edge-cli", keys, tmp_path))
    watcher = watch_fleet(mosquitto.port)
    deploy = ["--broker", mosquitto.url, "--key", str(tmp_path / "keys" / "deploy.key"), "--timeout", "20"]
    try:
        eventually(lambda: watcher.status("edge-cli"), timeout=10, message="edge-cli not online")
        capsys.readouterr()
        assert main(["model", "deploy", MODEL, "1.1.0", *reg, *deploy]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["outcome"] == "deployed" and report["nodes"]["edge-cli"] in ("healthy", "canary")
        eventually(lambda: edge.engine.runners["vibration"].model.version == "1.1.0", timeout=10,
                   message="edge-cli not on 1.1.0")
        assert main(["model", "list", MODEL, "--json", *reg]) == 0
        rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows["1.1.0"]["current"] and rows[BASE_VERSION]["previous"]

        influx, db = influx_db
        bridge_yaml = tmp_path / "bridge.yaml"  # registry and events target from the bridge's own config
        bridge_yaml.write_text(f"influx: {{api: v1, url: '{influx.url}', db: {db}}}\n"
                               f"retrain: {{registry: '{tmp_path / 'registry'}'}}\n")
        assert main(["model", "rollback", MODEL, "--reason", "test", "--deploy", "-c", str(bridge_yaml), *deploy]) == 0
        eventually(lambda: edge.engine.runners["vibration"].model.version == BASE_VERSION, timeout=10,
                   message="edge-cli not back on 1.0.0")
        capsys.readouterr()
        assert main(["model", "show", MODEL, *reg]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["version"] == BASE_VERSION and shown["current"]
        assert any(e["action"] == "rollback" for e in shown["audit"])
        rows = influx.points('SELECT "message", "version" FROM "events" GROUP BY "kind", "model"', db)
        kinds = {(r["kind"], r["version"]) for r in rows}
        assert ("rollback", BASE_VERSION) in kinds and ("deploy", BASE_VERSION) in kinds, rows
        assert all(r["model"] == MODEL for r in rows)
    finally:
        edge.stop()
        watcher.close()


def test_a_node_that_connects_later_installs_the_retained_deployment(setup, mosquitto, tmp_path, keys):
    registry, deployer, _watcher, _events, edges = setup
    edges.append(start_edge(edge_config(mosquitto.url, "edge-early", keys, tmp_path)))
    _online(deployer, "edge-early")
    registry.add(MODEL, *variant("1.3.0"), parent=BASE_VERSION)
    registry.add(MODEL, *variant("1.4.0", pad=32), parent="1.3.0")
    assert deployer.deploy(MODEL, "1.3.0").outcome == "deployed"
    assert deployer.deploy(MODEL, "1.4.0").outcome == "deployed"  # clears the retained chunks of 1.3.0

    late = start_edge(edge_config(mosquitto.url, "edge-late", keys, tmp_path))
    edges.append(late)
    eventually(lambda: late.engine.runners["vibration"].model.version == "1.4.0", timeout=15,
               message="edge-late did not install the retained deployment")
    chunks = retained_under(mosquitto.port, f"models/{MODEL}/+/chunk/+")
    assert {t.split("/")[2] for t, p in chunks if p} == {"1.4.0"}
    assert len(chunks) == -(-len(variant("1.4.0", pad=32)[0]) // 1024)


def retained_under(port: int, topic_filter: str) -> list[tuple[str, bytes]]:
    """Every retained message under a filter: a marker published after the SUBACK arrives after all of them."""
    import uuid

    marker = f"test/marker/{uuid.uuid4().hex}"
    with Watcher(port, [topic_filter, marker]) as watch:
        publish_all(watch.client, [(marker, b"x")])
        eventually(lambda: watch.on(marker), timeout=10, message="marker never came back")
        return [(m.topic, m.payload) for m in watch.messages() if m.topic != marker]


def test_a_silent_canary_fails_the_rollout(mosquitto, tmp_path, keys):
    from edgeloop.edge.config import EdgeConfig

    registry = seeded_registry(tmp_path / "registry")
    registry.add(MODEL, *variant("1.7.0"), parent=BASE_VERSION)
    deployer = Deployer.connect(MqttSettings(url=mosquitto.url), registry, keys.signing, canary_timeout_s=1.0)
    mute = start_edge(EdgeConfig(node_id="edge-mute", mqtt=MqttSettings(url=mosquitto.url)))  # deploy disabled
    try:
        _online(deployer, "edge-mute")
        report = deployer.deploy(MODEL, "1.7.0", canary=["edge-mute"])
    finally:
        mute.stop()
        deployer.close()
    assert report.outcome == "canary_failed" and report.nodes == {"edge-mute": "silent"}
    assert "silent" in registry.refused(MODEL)["1.7.0"] and registry.current(MODEL) == BASE_VERSION
    manifest = json.loads(watcher_retained(mosquitto.port, deploy_topic(MODEL)))
    assert (manifest["version"], manifest["targets"]) == (BASE_VERSION, ["*"])


def test_a_canary_already_running_the_version_passes_and_refused_versions_are_not_redeployed(setup, mosquitto,
                                                                                               tmp_path, keys):
    from edgeloop.bridge.deployer import DeployError

    registry, deployer, watcher, _events, edges = setup
    edges.append(start_edge(edge_config(mosquitto.url, "edge-same", keys, tmp_path)))
    _online(deployer, "edge-same")
    report = deployer.deploy(MODEL, BASE_VERSION, canary=["edge-same"])  # e.g. re-publishing what runs
    assert report.outcome == "deployed" and report.nodes["edge-same"] == "healthy", report
    registry.add(MODEL, *variant("3.0.0"), parent=BASE_VERSION)
    registry.mark_refused(MODEL, "3.0.0", "canary failed earlier")
    with pytest.raises(DeployError, match="refused"):
        deployer.deploy(MODEL, "3.0.0")
    assert watcher.status("edge-same").models[MODEL].version == BASE_VERSION


def test_a_promote_deploy_the_edge_rolls_back_leaves_the_registry_on_what_it_runs(mosquitto, tmp_path, keys, capsys):
    from edgeloop.cli import main

    registry = seeded_registry(tmp_path / "registry")
    registry.add(MODEL, *variant("2.1.0", threshold=0.0), parent=BASE_VERSION)  # every window an anomaly
    edge = start_edge(edge_config(mosquitto.url, "edge-p", keys, tmp_path))
    watcher = watch_fleet(mosquitto.port)
    stream = Stream(mosquitto.port, devices=2)
    try:
        eventually(lambda: watcher.status("edge-p"), timeout=15, message="edge-p not online")
        stream.publish(10)
        stream.run(per_s=150, limit=1500)
        capsys.readouterr()
        code = main(["model", "promote", MODEL, "2.1.0", "--deploy", "--wait-healthy", "--timeout", "60",
                     "--broker", mosquitto.url, "--key", str(keys.public_file.parent / "deploy.key"),
                     "--registry", str(tmp_path / "registry")])
    finally:
        stream.close()
        edge.stop()
        watcher.close()
    captured = capsys.readouterr()
    assert code == 1, captured
    report = json.loads(captured.out)
    assert report["outcome"] == "fleet_failed" and report["nodes"]["edge-p"] == "rolled_back:unhealthy", report
    assert report["current"] == BASE_VERSION and registry.current(MODEL) == BASE_VERSION
    assert "2.1.0" in registry.refused(MODEL) and "registry current stays 1.0.0" in captured.err
    assert {"action": "not_accepted", "version": "2.1.0", "current": BASE_VERSION}.items() <= \
        registry.audit(MODEL)[-1].items()
    assert edge.engine.runners["vibration"].model.version == BASE_VERSION
