"""The model path under attack and failure (issue 11), against real mosquitto and real ``edgeloop edge run``
processes: replayed manifests, a signed model that crashes the interpreter, one that never returns, an edge
killed with a model on probation. docs/security.md, "Model deployment", lists what each test shows.
"""

from __future__ import annotations

import json
import re

import pytest
from deploy_fixtures import (
    BASE_VERSION,
    MODEL,
    Stream,
    crashing_variant,
    deploy_state,
    edge_config,
    edge_process,
    hand_signed,
    looping_variant,
    make_keys,
    seeded_registry,
    start_edge,
    variant,
    watch_fleet,
)
from integration.test_deploy import retained_under
from lab.mqtt import Watcher, close, connect, publish_all
from lab.servers import eventually

from edgeloop.bridge.deployer import Deployer, DeployError
from edgeloop.cli import main
from edgeloop.modelfile import write_model_files
from edgeloop.deploy_contract import deploy_topic
from edgeloop.mqtt import MqttSettings

TRIAL_WAIT_S = 90  # a trial starts a Python child; on this shared box that alone can take seconds


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return make_keys(tmp_path_factory.mktemp("hardening-keys"))


@pytest.fixture
def rig(mosquitto, tmp_path, keys):
    """(registry, deployer, watcher, processes to stop); everything closed afterwards."""
    registry = seeded_registry(tmp_path / "registry")
    deployer = Deployer.connect(MqttSettings(url=mosquitto.url), registry, keys.signing, canary_timeout_s=60,
                                rollout_timeout_s=60, chunk_size=1024)
    watcher = watch_fleet(mosquitto.port)
    procs = []
    yield registry, deployer, watcher, procs
    for proc in procs:
        proc.terminate(30)
    deployer.close()
    watcher.close()


def _state(watcher, node, proc=None):
    """``node``'s last_deploy for MODEL; fails at once, with the log, if the process died."""
    if proc is not None and not proc.alive():
        raise AssertionError(f"{node} exited with {proc.returncode}:\n{proc.log_tail()}")
    return deploy_state(watcher, node)


def _running(watcher, node):
    status = watcher.status(node)
    return status.models[MODEL].version if status and MODEL in status.models else None


def _retained(port: int, topic: str) -> bytes:
    with Watcher(port, [topic]) as watch:
        return eventually(lambda: watch.on(topic) and watch.on(topic)[-1], timeout=10,
                          message=f"no retained message on {topic}")


def _republish_retained(port: int, messages: list[tuple[str, bytes]]) -> None:
    """What anyone allowed to write ``models/#`` can do with messages every device may read."""
    client = connect(port, client_id="replayer")
    try:
        publish_all(client, messages, retain=True)
    finally:
        close(client)


def test_a_replayed_old_manifest_is_refused_and_stays_refused_after_a_restart(rig, mosquitto, tmp_path, keys):
    registry, deployer, watcher, procs = rig
    edge = edge_process(tmp_path, mosquitto.url, "edge-replay", keys).start()
    procs.append(edge)
    watcher.wait_online("edge-replay", edge)
    registry.add(MODEL, *variant("1.1.0"), parent=BASE_VERSION)
    registry.add(MODEL, *variant("1.2.0", pad=32), parent="1.1.0")
    stream = Stream(mosquitto.port, devices=2)
    try:
        stream.run(per_s=100, limit=30000)  # stopped at the end; the limit only bounds it
        assert deployer.deploy(MODEL, "1.1.0").outcome == "deployed"
        eventually(lambda: (s := _state(watcher, "edge-replay", edge)) and s.state == "healthy", timeout=60,
                   message="1.1.0 never healthy")
        recorded = _retained(mosquitto.port, deploy_topic(MODEL))  # any device may read models/#: the
        assert json.loads(recorded)["version"] == "1.1.0"           # manifest and its chunks are recorded
        chunks = retained_under(mosquitto.port, f"models/{MODEL}/1.1.0/chunk/+")
        assert chunks and all(payload for _, payload in chunks)
        assert deployer.deploy(MODEL, "1.2.0").outcome == "deployed"
        eventually(lambda: (s := _state(watcher, "edge-replay", edge)) and s.version == "1.2.0"
                   and s.state == "healthy", timeout=60, message="1.2.0 never healthy")

        _republish_retained(mosquitto.port, [*chunks, (deploy_topic(MODEL), recorded)])
        state = eventually(lambda: (s := _state(watcher, "edge-replay", edge)) and s.state == "refused" and s,
                           timeout=30, message="the replayed manifest was not refused")
        assert (state.reason, state.version) == ("replayed", "1.1.0"), state
        assert "not above" in state.detail
        assert _running(watcher, "edge-replay") == "1.2.0"

        # The replay is still the retained manifest: a restarted edge gets it first thing, and refuses it again.
        assert edge.terminate(60) == 0
        edge.start()
        watcher.wait_online("edge-replay", edge, after=len(watcher.states("edge-replay")))
        eventually(lambda: (s := _state(watcher, "edge-replay", edge)) and s.state == "refused"
                   and s.reason == "replayed", timeout=30, message="replay not refused after the restart")
        assert _running(watcher, "edge-replay") == "1.2.0"
        last_run = edge.log().rsplit("===== start", 1)[-1]
        assert "receiving vibration_ae 1.1.0" not in last_run, last_run[-3000:]

        # An intended rollback is a new deployment of the old version: it has a new seq, so it installs.
        assert deployer.deploy(MODEL, "1.1.0").outcome == "deployed"
        eventually(lambda: (s := _state(watcher, "edge-replay", edge)) and s.version == "1.1.0"
                   and s.state == "healthy", timeout=60, message="the intended rollback never became healthy")
        assert _running(watcher, "edge-replay") == "1.1.0"
    finally:
        stream.close()


#: LiteRT reads uninitialised memory on the rewritten file: a trial child usually dies by SIGSEGV, but now
#: and then allocate_tensors raises instead (seen once in CI). Either way the trial refuses it
#: (load_failed) and the process that asked keeps running, which is what is under test.
CRASHED_OR_REFUSED = r"SIGSEGV|cannot allocate|failed to prepare"


def crashed_or_refused(text: str) -> bool:
    return re.search(CRASHED_OR_REFUSED, text) is not None


def test_a_signed_model_that_crashes_the_interpreter_is_refused_and_not_retried_after_a_restart(
        rig, mosquitto, tmp_path, keys, capsys):
    registry, deployer, watcher, procs = rig
    content, meta = crashing_variant("6.6.6")
    # The cloud side tries it in a child before it takes it in (`model add`) and before it signs it.
    files = write_model_files(tmp_path / "crashing", content, meta)
    assert main(["model", "add", str(files), "--registry", str(registry.root)]) == 1
    assert crashed_or_refused(capsys.readouterr().err) and "6.6.6" not in registry.versions(MODEL)
    registry.add(MODEL, content, meta, parent=BASE_VERSION)
    # An edge online first: a rollout that matches no node publishes nothing without trying the artifact.
    edge = edge_process(tmp_path, mosquitto.url, "edge-crash", keys).start()
    procs.append(edge)
    watcher.wait_online("edge-crash", edge)
    eventually(lambda: "edge-crash" in deployer.nodes(), timeout=15, message="the deployer never saw edge-crash")
    with pytest.raises(DeployError, match=CRASHED_OR_REFUSED):
        deployer.deploy(MODEL, "6.6.6")
    assert not _has_retained(mosquitto.port, deploy_topic(MODEL)), "nothing was published"
    hand_signed(deployer, content, meta)  # signed anyway (a signing host without the trial)
    state = eventually(lambda: (s := _state(watcher, "edge-crash", edge)) and s.state == "refused" and s,
                       timeout=TRIAL_WAIT_S, message="the crashing model was not refused")
    assert (state.reason, state.version) == ("load_failed", "6.6.6"), state
    assert crashed_or_refused(state.detail), state.detail
    assert edge.alive()

    stream = Stream(mosquitto.port, devices=1)
    try:
        stream.publish(6)
        eventually(lambda: len(watcher.results("edge-crash")) >= 5, timeout=20, message="the edge stopped serving")
    finally:
        stream.close()
    assert {r.model_version for r in watcher.results("edge-crash")} == {BASE_VERSION}

    # Restarted, it gets the same retained manifest: reported as refused again, not tried again.
    assert edge.terminate(60) == 0
    edge.start()
    watcher.wait_online("edge-crash", edge, after=len(watcher.states("edge-crash")))
    eventually(lambda: (s := _state(watcher, "edge-crash", edge)) and s.deploy_id == state.deploy_id
               and s.state == "refused" and s.reason == "load_failed", timeout=30,
               message="the refusal was not remembered across the restart")
    last_run = edge.log().rsplit("===== start", 1)[-1]
    assert "not tried again" in last_run and "receiving vibration_ae 6.6.6" not in last_run, last_run[-3000:]
    assert edge.alive() and _running(watcher, "edge-crash") == BASE_VERSION


def _has_retained(port: int, topic: str) -> bool:
    import uuid

    marker = f"test/marker/{uuid.uuid4().hex}"
    with Watcher(port, [topic, marker]) as watch:
        publish_all(watch.client, [(marker, b"x")])
        eventually(lambda: watch.on(marker), timeout=10, message="marker never came back")
        return any(m.payload for m in watch.messages(topic))


def test_an_edge_killed_with_a_model_on_probation_does_not_install_it_again(rig, mosquitto, tmp_path, keys):
    registry, deployer, watcher, procs = rig
    edge = edge_process(tmp_path, mosquitto.url, "edge-kill", keys, canary_windows=1_000_000).start()
    procs.append(edge)
    watcher.wait_online("edge-kill", edge)
    registry.add(MODEL, *variant("1.5.0"), parent=BASE_VERSION)
    stream = Stream(mosquitto.port, devices=1)
    try:
        deployer.publish(MODEL, "1.5.0")
        stream.publish(4)
        eventually(lambda: (s := _state(watcher, "edge-kill", edge)) and s.state == "canary", timeout=TRIAL_WAIT_S,
                   message="1.5.0 never went on probation")
        edge.kill()  # a crash (or a power cut) while 1.5.0 is on probation
        edge.start()
        watcher.wait_online("edge-kill", edge, after=len(watcher.states("edge-kill")))
        state = eventually(lambda: (s := _state(watcher, "edge-kill", edge)) and s.state == "refused" and s,
                           timeout=30, message="the interrupted deployment was not refused")
        assert (state.reason, state.version) == ("interrupted", "1.5.0"), state
        stream.publish(4)
        eventually(lambda: any(r.model_version == BASE_VERSION for r in watcher.results("edge-kill")[-3:]),
                   timeout=20, message="the edge does not serve the proven model")
        assert _running(watcher, "edge-kill") == BASE_VERSION
        assert "receiving vibration_ae 1.5.0" not in edge.log().rsplit("===== start", 1)[-1]
    finally:
        stream.close()


def test_a_model_that_never_returns_times_out_in_the_trial_and_the_edge_keeps_serving(mosquitto, tmp_path, keys):
    registry = seeded_registry(tmp_path / "registry")
    deployer = Deployer.connect(MqttSettings(url=mosquitto.url), registry, keys.signing, chunk_size=1024,
                                trial_timeout_s=10)
    content, meta = looping_variant("7.7.7")
    registry.add(MODEL, content, meta, parent=BASE_VERSION)
    watcher = watch_fleet(mosquitto.port)
    edge = start_edge(edge_config(mosquitto.url, "edge-loop", keys, tmp_path, trial_timeout_s=10))
    try:
        # The edge online first: a rollout that matches no node publishes nothing without trying the artifact.
        eventually(lambda: watcher.status("edge-loop") and "edge-loop" in deployer.nodes(), timeout=15,
                   message="edge-loop not online")
        with pytest.raises(DeployError, match="timeout"):
            deployer.deploy(MODEL, "7.7.7")  # the cloud side's trial
        hand_signed(deployer, content, meta)
        state = eventually(lambda: (s := deploy_state(watcher, "edge-loop")) and s.state == "refused" and s,
                           timeout=TRIAL_WAIT_S, message="the looping model was not refused")
        assert (state.reason, state.version) == ("timeout", "7.7.7"), state
        stream = Stream(mosquitto.port, devices=1)
        try:
            stream.publish(6)
            eventually(lambda: len(watcher.results("edge-loop")) >= 5, timeout=20,
                       message="the manager thread or the worker is stuck")
        finally:
            stream.close()
        assert edge.engine.runners["vibration"].model.version == BASE_VERSION
    finally:
        edge.stop()
        deployer.close()
        watcher.close()
