"""The operator's fleet commands against the production broker (mutual TLS, ACL) and a real edge process.

``model add NAME FILE --version``, ``model promote --deploy``, ``model deploy`` and ``model retrain
--request`` reach the broker through ``-c`` alone: its whole ``mqtt:`` section (URL, TLS with a
client certificate, credentials), as ``bridge run`` does. The file is the bridge's with the
operator's certificate (identity ``edgeloop-operator``): the broker makes every client id its
identity, so a command under the bridge's certificate would log the running bridge off. The edge is the
real ``edgeloop edge run`` process with signed deployment on; it verifies what it is sent.

Also: a rollout that matches no node fails and says why; the registry's ``current`` follows what
the fleet accepted (a version the edge refuses leaves it where it was, and the audit log says so).
"""

from __future__ import annotations

import json
import re

import pytest
from certs import TestCA
from deploy_fixtures import BASE_VERSION, MODEL, bundled, make_keys, tiny_variant
from e2e.test_secure_loop import peer
from securebroker import OBSERVER, secure_broker
from lab import configs
from lab.procs import CliProcess, logs
from lab.servers import eventually

from edgeloop.cli import main
from edgeloop.contract import decode_status
from edgeloop.modelfile import write_model_files


#: The edge runtime on dev-a (its own identity, serving itself) and the operator running the commands.
FLEET = "edge dev-a dev-a\noperator edgeloop-operator\nbridge edgeloop-bridge deploy\n"


@pytest.fixture
def fleet(tmp_path):
    """(bridge.yaml, registry dir, edge process, statuses seen by an observer, observer link, pki) on a TLS broker."""
    ca = TestCA(tmp_path / "pki")
    edge_id, operator_id = ca.client("dev-a"), ca.client("edgeloop-operator")
    keys = make_keys(tmp_path)
    with secure_broker(tmp_path / "broker", ca.ca_file, ca.server(), fleet=FLEET) as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        tls = {"ca_file": str(ca.ca_file)}
        edge_yaml = configs.write_config(tmp_path / "edge.yaml", configs.edge_config(
            "dev-a", url, {"mqtt": {"tls": {**tls, "cert_file": str(edge_id.cert), "key_file": str(edge_id.key)}},
                           "status_interval_s": 1},
            configs.signed_deploy(keys.public_file, tmp_path / "edge-models", canary_windows=5)))
        registry = tmp_path / "registry"
        bridge_yaml = configs.write_config(tmp_path / "operator.yaml", {
            "mqtt": {"url": url, "client_id": "edgeloop-operator",
                     "tls": {**tls, "cert_file": str(operator_id.cert), "key_file": str(operator_id.key)}},
            "influx": {"api": "v1", "url": "http://127.0.0.1:9", "db": "edgeloop", "timeout_s": 1},
            "retrain": {"registry": str(registry), "signing_key_file": str(tmp_path / "keys" / "deploy.key")},
        })
        statuses: dict[str, bytes] = {}
        requests: list[bytes] = []

        def observe(msg) -> None:  # noqa: ANN001
            if msg.topic.startswith("status/"):
                statuses[msg.topic] = msg.payload
            else:
                requests.append(msg.payload)

        observer = peer(broker.port, ca, OBSERVER, [("status/#", 1), ("commands/#", 1)], on_message=observe)
        edge = CliProcess(["edge", "run", "-c", str(edge_yaml)], tmp_path / "edge.log").start()
        try:
            eventually(lambda: b'"online"' in statuses.get("status/dev-a", b""), timeout=60,
                       message=f"edge not online\n{logs(edge)}")
            yield bridge_yaml, registry, edge, statuses, requests, broker
        finally:
            edge.terminate()
            observer.stop()


def running(statuses: dict[str, bytes]) -> str | None:
    status = decode_status(statuses["status/dev-a"], 1 << 20)
    return status.models[MODEL].version if MODEL in status.models else None


@pytest.mark.timeout(300)
def test_a_second_version_deploys_over_tls_from_bridge_yaml_alone(fleet, tmp_path, capsys):
    bridge_yaml, registry, edge, statuses, _, broker = fleet
    c = ["-c", str(bridge_yaml)]
    base = write_model_files(tmp_path / "bundled", *bundled())
    assert main(["model", "add", MODEL, str(base), "--promote", *c]) == 0
    # The same file as a second version: only its metadata's version changes.
    assert main(["model", "add", MODEL, str(base), "--version", "1.1.0", *c]) == 0
    assert "parent 1.0.0" in capsys.readouterr().out

    assert main(["model", "promote", MODEL, "1.1.0", "--deploy", "--timeout", "60", *c]) == 0, logs(edge)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["outcome"] == "deployed" and report["nodes"] == {"dev-a": report["nodes"]["dev-a"]}
    assert report["nodes"]["dev-a"] in ("healthy", "canary") and report["current"] == "1.1.0"
    assert "deployed: 1 node(s) run it; registry current 1.1.0" in captured.err
    eventually(lambda: running(statuses) == "1.1.0", timeout=30, message="dev-a does not report 1.1.0")
    assert f"mqtt: of {bridge_yaml}, TLS with client certificate), client id edgeloop-operator-deploy-" in captured.err
    # The broker makes the client id the identity: the operator's, never the bridge's (that would log it off).
    connected = re.findall(r"New client connected from \S+ as (\S+)", broker.log_path.read_text())
    assert "edgeloop-operator" in connected and "edgeloop-bridge" not in connected, connected

    # A version the edge refuses: the registry's current stays what the edge runs, and says so.
    write_model_files(tmp_path / "tiny", *tiny_variant("9.9.9"))
    assert main(["model", "add", MODEL, str(tmp_path / "tiny" / f"{MODEL}.tflite"), *c]) == 0
    capsys.readouterr()
    assert main(["model", "promote", MODEL, "9.9.9", "--deploy", "--timeout", "60", *c]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["outcome"] == "fleet_failed" and report["nodes"]["dev-a"].startswith("refused:spec_mismatch")
    assert "registry current stays 1.1.0" in captured.err
    assert main(["model", "list", MODEL, "--json", *c]) == 0
    rows = {r["version"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["1.1.0"]["current"] and not rows["9.9.9"]["current"] and rows["9.9.9"]["refused"]
    audit = [json.loads(line) for line in (registry / "audit.jsonl").read_text().splitlines()]
    assert {"action": "not_accepted", "version": "9.9.9", "current": "1.1.0"}.items() <= audit[-1].items()
    assert running(statuses) == "1.1.0"

    # Targets that match no node: nothing is published, exit 1, and the message names the nodes there are.
    assert main(["model", "deploy", MODEL, BASE_VERSION, "--targets", "typo-*", *c]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["outcome"] == "no_nodes"
    assert "targets typo-* matched none of: dev-a" in captured.err
    assert main(["model", "deploy", MODEL, BASE_VERSION, "--targets", "typo-*", "--no-wait", *c]) == 1
    assert "nothing deployed: targets typo-* matched none of: dev-a" in capsys.readouterr().err
    assert main(["model", "list", MODEL, "--json", *c]) == 0
    assert [r["version"] for r in json.loads(capsys.readouterr().out) if r["current"]] == ["1.1.0"]
    assert running(statuses) == "1.1.0"


@pytest.mark.timeout(180)
def test_retrain_request_reaches_the_bridge_over_tls_from_bridge_yaml_alone(fleet, capsys):
    bridge_yaml, _, _, _, requests, _ = fleet
    assert main(["model", "retrain", MODEL, "--request", "-c", str(bridge_yaml)]) == 0
    eventually(lambda: requests, timeout=15, message="no retrain request on commands/#")
    assert json.loads(requests[0]) == {"model": MODEL}


def test_a_rollout_that_sees_no_node_status_fails_and_says_so(mosquitto, tmp_path, capsys):
    make_keys(tmp_path)  # writes tmp_path/keys/deploy.key
    reg = ["--registry", str(tmp_path / "registry")]
    assert main(["model", "add", str(write_model_files(tmp_path / "m", *bundled())), "--promote", *reg]) == 0
    capsys.readouterr()
    assert main(["model", "deploy", MODEL, "--broker", mosquitto.url, "--key", str(tmp_path / "keys" / "deploy.key"),
                 "--discover-s", "0.5", *reg]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["outcome"] == "no_nodes"
    assert f"no node status seen on {mosquitto.url}" in captured.err


@pytest.mark.parametrize("command", [["model", "deploy", MODEL], ["model", "promote", MODEL, BASE_VERSION, "--deploy"],
                                     ["model", "rollback", MODEL, "--deploy"], ["model", "retrain", MODEL, "--request"]],
                         ids=["deploy", "promote", "rollback", "retrain-request"])
def test_fleet_commands_without_broker_or_config_refuse(tmp_path, capsys, command):
    make_keys(tmp_path)  # writes tmp_path/keys/deploy.key
    reg = ["--registry", str(tmp_path / "registry")]
    assert main(["model", "add", str(write_model_files(tmp_path / "m", *bundled())), "--promote", *reg]) == 0
    assert main(["model", "add", MODEL, str(tmp_path / "m" / f"{MODEL}.tflite"), "--version", "1.1.0", "--promote",
                 *reg]) == 0
    capsys.readouterr()
    flags = [] if command[-1] == "--request" else [*reg, "--key", str(tmp_path / "keys" / "deploy.key")]
    assert main([*command, *flags]) == 2
    err = capsys.readouterr().err
    assert "talks to the fleet over MQTT: give -c bridge.yaml" in err and "--broker" in err, err
    # Nothing moved in the registry.
    assert main(["model", "list", MODEL, "--json", *reg]) == 0
    assert [r["version"] for r in json.loads(capsys.readouterr().out) if r["current"]] == ["1.1.0"]
