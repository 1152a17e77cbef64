"""The whole loop over mutual TLS with the production broker config, and forgers on the same broker.

device dev-a --mTLS--> mosquitto (docker/mosquitto conf + generated ACL) --mTLS--> edge (identity
edge-a, serving dev-a) --> mosquitto --> bridge (identity edgeloop-bridge, encrypted key; its status
follower as edgeloop-bridge-status) --> InfluxDB. One certificate per process: the broker makes every
client id its identity. Edge and bridge are the real CLI processes started from config files that
point at certificates made in this test.

Meanwhile another device (dev-b), the edge serving it (edge-b) and a certificate the CA should
never have issued ("dev-b/evil") try to put results into the database under dev-a's name.
Afterwards the database holds exactly the windows of dev-a's real readings, the forgeries were
refused by the broker (ACL) or by the bridge (payload device != topic device), no connection took
over another's session, and no secret appears in either process's log.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from certs import TestCA
from helpers import result_payload
from securebroker import OBSERVER, TEST_FLEET, secure_broker
from lab.procs import CliProcess, logs, terminate_all
from lab.servers import eventually

from edgeloop.mqtt import MqttLink, MqttSettings, TlsSettings
from edgeloop.contract import DeadLetter
from edgeloop.edge.config import BUNDLED_MODEL
from edgeloop.edge.inference import TfliteModel

SECRET = "kP4-e2e-secret-never-logged"
#: Device time of the first reading: now, so the bridge's store.max_past_s window takes the results.
T0 = time.time()
READINGS = 6  # 64-sample readings, window 128 / hop 64 -> READINGS - 1 windows


def peer(port: int, ca: TestCA, cn: str, subscriptions=(), on_message=None) -> MqttLink:
    issued = ca.client(cn, file_stem=f"peer-{cn.replace('/', '_')}")
    settings = MqttSettings(url=f"mqtts://127.0.0.1:{port}",
                            tls=TlsSettings(ca_file=ca.ca_file, cert_file=issued.cert, key_file=issued.key))
    link = MqttLink(settings, f"test-{cn.replace('/', '_')}", subscriptions=list(subscriptions), on_message=on_message)
    link.start(wait_s=10)
    return link


def reading(seq: int) -> bytes:
    values = np.random.default_rng(seq).normal(0, 1, (64, 3)).round(4).tolist()
    return json.dumps({"ts": T0 + seq * 0.064, "seq": seq, "values": values, "rate_hz": 1000.0}).encode()


def forged_result(device: str, seq: int) -> bytes:
    return result_payload(device, "vibration_ae", 10_000 + seq, sensor="vibration", model_version="6.6.6",
                          ts=T0 + 60 + seq, outputs=[0.0], score=0.0, label="normal")


@pytest.mark.timeout(180)
def test_mutual_tls_loop_stores_only_genuine_results(tmp_path, influx_db):
    influx, db = influx_db
    ca = TestCA(tmp_path / "pki")
    edge_id, bridge_id = ca.client("edge-a"), ca.client("edgeloop-bridge", key_password=SECRET.encode())
    follower_id = ca.client("edgeloop-bridge-status")
    (tmp_path / "bridge-key-pw").write_text(SECRET)
    (tmp_path / "bridge-key-pw").chmod(0o600)
    (tmp_path / "mqtt-pw").write_text(SECRET + "-mqtt")
    (tmp_path / "mqtt-pw").chmod(0o600)

    with secure_broker(tmp_path / "broker", ca.ca_file, ca.server(), fleet=TEST_FLEET + "edge edge-b dev-b\n") \
            as broker:
        url = f"mqtts://127.0.0.1:{broker.port}"
        edge_cfg = tmp_path / "edge.yaml"
        edge_cfg.write_text(f"""\
node_id: edge-a
mqtt:
  url: {url}
  tls: {{ca_file: {ca.ca_file}, cert_file: {edge_id.cert}, key_file: {edge_id.key}}}
input: {{qos: 1}}
status_interval_s: 1
""")
        bridge_cfg = tmp_path / "bridge.yaml"
        bridge_cfg.write_text(f"""\
mqtt:
  url: {url}
  username: edgeloop-bridge
  password_file: {tmp_path / "mqtt-pw"}
  tls:
    ca_file: {ca.ca_file}
    cert_file: {bridge_id.cert}
    key_file: {bridge_id.key}
    key_password_file: {tmp_path / "bridge-key-pw"}
identities:
  status: {{cert_file: {follower_id.cert}, key_file: {follower_id.key}}}
influx:
  api: v1
  url: {influx.url}
  db: {db}
  username: writer
  password: ${{E2E_INFLUX_PASSWORD}}
  flush_interval_ms: 100
""")
        for path in (edge_cfg, bridge_cfg):
            path.chmod(0o644)  # world-readable is fine: no secret is written in them
        letters: list = []
        online: dict[str, bytes] = {}

        def observe(msg) -> None:  # noqa: ANN001
            if msg.topic.startswith("deadletter/"):
                letters.append(msg)
            else:
                online[msg.topic] = msg.payload

        observer = peer(broker.port, ca, OBSERVER, [("deadletter/#", 1), ("status/#", 1)], on_message=observe)
        env = {"EDGELOOP_STATE_DIR": str(tmp_path / "state"), "E2E_INFLUX_PASSWORD": SECRET + "-influx"}
        debug = ["--log-level", "DEBUG"]
        edge = CliProcess([*debug, "edge", "run", "-c", str(edge_cfg)], tmp_path / "edge.log", env=env).start()
        bridge = CliProcess([*debug, "bridge", "run", "-c", str(bridge_cfg)], tmp_path / "bridge.log", env=env).start()
        device = forger = forging_edge = evil = None
        try:
            # Both services are up when their retained "online" status is on the broker.
            eventually(lambda: all(b'"online"' in online.get(f"status/{n}", b"") for n in ("edge-a", "edgeloop-bridge")),
                       timeout=60, message="edge or bridge not online", alive=[edge, bridge])

            device = peer(broker.port, ca, "dev-a")
            forger = peer(broker.port, ca, "dev-b")
            forging_edge = peer(broker.port, ca, "edge-b")
            evil = peer(broker.port, ca, "dev-b/evil")
            infos = [device.publish("sensors/dev-a/vibration", reading(seq), qos=1) for seq in range(READINGS)]
            infos += [
                forger.publish("results/dev-a/vibration_ae", forged_result("dev-a", 1), qos=1),  # broker: denied
                forger.publish("results/dev-b/vibration_ae", forged_result("dev-a", 4), qos=1),  # broker: denied
                forger.publish("sensors/dev-a/vibration", reading(READINGS), qos=1),  # broker: denied
                forging_edge.publish("results/dev-a/vibration_ae", forged_result("dev-a", 5), qos=1),  # broker: denied
                # dev-b's edge may publish dev-b's results, not in dev-a's name: the bridge refuses the mismatch.
                forging_edge.publish("results/dev-b/vibration_ae", forged_result("dev-a", 2), qos=1),
                # A certificate in no fleet file (and with a "/" in its CN) may do nothing at all.
                evil.publish("results/dev-b/evil/vibration_ae", forged_result("dev-a", 3), qos=1),
            ]
            for info in infos:
                info.wait(10)

            def stored() -> list[dict]:
                return influx.points('SELECT * FROM "inference"', db)

            eventually(lambda: len(stored()) >= READINGS - 1, timeout=60, message="results not stored",
                       alive=[edge, bridge])
            eventually(lambda: [m for m in letters if m.topic == "deadletter/bridge"], timeout=30,
                       message="the bridge's dead letter for the mismatched result", alive=[edge, bridge])
        finally:
            codes = terminate_all(edge, bridge)
            for link in (observer, device, forger, forging_edge, evil):
                if link is not None:
                    link.stop()
        assert codes == [0, 0], logs(edge, bridge)

        rows = influx.points('SELECT * FROM "inference"', db)
        assert len(rows) == READINGS - 1
        assert {r["device"] for r in rows} == {"dev-a"} and {r["node"] for r in rows} == {"edge-a"}
        # Exactly the windows of dev-a's readings (each ends at the reading that completed it), all scored by
        # the edge's model: a forged row (seq >= 10000, version 6.6.6) in place of a genuine one fails either.
        assert sorted(r["seq"] for r in rows) == list(range(1, READINGS))
        assert {r["model_version"] for r in rows} == {TfliteModel(BUNDLED_MODEL).version}
        mismatch = [DeadLetter.model_validate_json(m.payload) for m in letters if m.topic == "deadletter/bridge"]
        assert [(d.reason, d.topic) for d in mismatch] == [("topic_mismatch", "results/dev-b/vibration_ae")]
    # dev-b's reading on sensors/dev-a/... would have made one more window: the broker refused it,
    # as it refused dev-b's result on results/dev-a/... (the count above holds exactly dev-a's windows).
        broker_log = broker.log_path.read_text()
    # Every process connected as its own identity, and none took over another's session.
    for identity in ("edge-a", "edgeloop-bridge", "edgeloop-bridge-status"):
        assert f" as {identity} (" in broker_log, identity
    assert "already connected" not in broker_log
    text = edge.log() + bridge.log()
    assert "edge edge-a starting" in text and "'rejected': {'topic_mismatch': 1}" in bridge.log()
    assert SECRET not in text
