"""The bridge against real servers: mosquitto in, influxd 1.6.7 (v1) or VictoriaMetrics (v2) out."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest
import helpers
from lab.configs import SYNTHETIC_RESULTS
from lab.servers import eventually, http

from edgeloop.bridge import Bridge, BridgeConfig, run_bridge
from edgeloop.mqtt import MqttLink, MqttSettings, wait_for_all

SHA = "0123456789abcdef" * 4
NOW = time.time() - 600  # VictoriaMetrics keeps a retention window; stay inside it


def result(uid: str, seq: int, device: str | None = None, model: str = "m1", **over) -> dict:
    fault = seq % 3 == 0
    fields = {
        "sensor": "accel", "model_version": "1.2.0", "model_sha256": SHA, "ts": round(NOW + seq * 0.01, 6),
        "outputs": [1, seq * 0.5],  # an integral output must still be stored as a float
        "score": seq / 10, "anomaly": fault, "label": "fault" if fault else "normal", "latency_ms": 0.25,
        "node": f"edge-{uid}", "site": "plant-a",
    }
    return helpers.result(device or f"dev-{uid}", model, seq, **{**fields, **over})


def bridge_config(mosquitto, uid: str, influx: dict, **over) -> BridgeConfig:
    return BridgeConfig.model_validate(
        {
            "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{uid}"},
            "influx": {"batch_size": 500, "flush_interval_ms": 100, "tags": {"env": "test"}, **influx},
            **SYNTHETIC_RESULTS,
            **over,
        }
    )


class Client:
    """A real MQTT client for the test side: publish at QoS 1, or collect a subscription."""

    def __init__(self, mosquitto, name: str, subscribe: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.link = MqttLink(
            MqttSettings(url=mosquitto.url, max_inflight=1000),
            name,
            on_message=lambda msg: self.received.append((msg.topic, msg.payload)),
            subscriptions=[(subscribe, 1)] if subscribe else [],
        )
        self.link.start(5)

    def publish_all(self, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
        infos = [self.link.publish(topic, payload, qos=1, retain=retain) for topic, payload in messages]
        assert wait_for_all(infos, 30), "broker did not acknowledge every publish"

    def close(self) -> None:
        self.link.stop()


@pytest.fixture
def clients(mosquitto, unique_id):
    made: list[Client] = []

    def make(name: str, subscribe: str | None = None) -> Client:
        made.append(Client(mosquitto, f"{name}-{unique_id}", subscribe))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def running():
    """Bridges started by a test; stopped (drained) at the end even if the test fails."""
    bridges: list[Bridge] = []

    def start(cfg: BridgeConfig) -> Bridge:
        bridge = Bridge(cfg)
        bridge.start(5)
        bridges.append(bridge)
        return bridge

    yield start
    for bridge in bridges:
        bridge.stop(timeout_s=10)


def influx_rows(influxdb, q: str, db: str) -> list[dict]:
    """Rows with ``time`` as integer ns (``epoch=ns``)."""
    params = urllib.parse.urlencode({"q": q, "db": db, "epoch": "ns"})
    status, body = http("POST", f"{influxdb.url}/query?{params}")
    assert status == 200, body
    rows = []
    for res in json.loads(body)["results"]:
        assert "error" not in res, res
        for series in res.get("series", []):
            for values in series["values"]:
                rows.append({**series.get("tags", {}), **dict(zip(series["columns"], values))})
    return rows


def count(influxdb, db: str, measurement: str = "inference") -> int:
    rows = influx_rows(influxdb, f'SELECT count("seq") FROM "{measurement}"', db)
    return rows[0]["count"] if rows else 0


def results_messages(uid: str, n: int, per_message: int = 1, **over) -> list[tuple[str, bytes]]:
    topic = f"results/dev-{uid}/m1"
    if per_message == 1:
        return [(topic, json.dumps(result(uid, seq, **over)).encode()) for seq in range(n)]
    return [
        (topic, json.dumps([result(uid, seq, **over) for seq in range(i, min(n, i + per_message))]).encode())
        for i in range(0, n, per_message)
    ]


# --------------------------------------------------------------------------- v1 -> influxd


def test_v1_results_are_stored_once_with_the_documented_schema(mosquitto, influx_db, unique_id, clients, running):
    influxdb, db = influx_db
    bridge = running(bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db}))
    n = 300
    clients("pub").publish_all(results_messages(unique_id, 200) + results_messages(unique_id, n, per_message=25)[8:])
    eventually(lambda: count(influxdb, db) == n, timeout=15, message=f"{n} points in influxd")

    fields = {r["fieldKey"]: r["fieldType"] for r in influx_rows(influxdb, "SHOW FIELD KEYS FROM inference", db)}
    assert fields == {
        "score": "float", "anomaly": "boolean", "label": "string", "latency_ms": "float",
        "seq": "integer", "model_sha256": "string", "out_0": "float", "out_1": "float",
    }
    tags = {r["tagKey"] for r in influx_rows(influxdb, "SHOW TAG KEYS FROM inference", db)}
    assert tags == {"device", "sensor", "model", "model_version", "node", "site", "env"}

    rows = {r["seq"]: r for r in influx_rows(influxdb, "SELECT * FROM inference", db)}
    assert sorted(rows) == list(range(n))
    for seq in (0, 1, 199, 200, 299):
        want, got = result(unique_id, seq), rows[seq]
        assert got["time"] == round(want["ts"] * 1e6) * 1000
        assert (got["device"], got["sensor"], got["model"], got["model_version"]) == (
            want["device"], "accel", "m1", "1.2.0")
        assert (got["node"], got["site"], got["env"]) == (want["node"], "plant-a", "test")
        assert (got["score"], got["anomaly"], got["label"]) == (want["score"], want["anomaly"], want["label"])
        assert (got["latency_ms"], got["model_sha256"], got["out_0"], got["out_1"]) == (0.25, SHA, 1, seq * 0.5)

    # Redelivery (QoS 1 duplicates, an edge outbox replay) overwrites instead of adding.
    clients("again").publish_all(results_messages(unique_id, n))
    # (+ statuses: the bridge subscribes to status/+ and so also stores its own birth message)
    eventually(lambda: (st := bridge.stats())["points_written"] == 2 * n + st["statuses"], timeout=15,
               message="redelivered points written")
    assert count(influxdb, db) == n
    stats = bridge.stats()
    assert stats["rejected"] == {} and stats["write_errors"] == {} and stats["points_dropped"] == 0


def test_v1_node_status(mosquitto, influx_db, unique_id, clients, running):
    influxdb, db = influx_db
    running(bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db}))
    node = f"edge-{unique_id}"
    online = {"node": node, "state": "online", "ts": NOW, "site": "plant-a", "runtime_version": "0.1.0",
              "models": {"vib": {"version": "2", "sha256": SHA}, "temp": {"version": "1.0", "sha256": SHA}}}
    offline = {"node": node, "state": "offline", "ts": NOW + 5}
    clients("pub").publish_all([(f"status/{node}", json.dumps(s).encode()) for s in (online, offline)], retain=True)
    rows = eventually(lambda: (r := influx_rows(influxdb, f"SELECT * FROM node_status WHERE node = '{node}'", db))
                      and len(r) == 2 and r)
    assert [(r["node"], r["online"], r["models"], r["runtime_version"]) for r in rows] == [
        (node, True, "temp=1.0,vib=2", "0.1.0"),
        (node, False, "", None),
    ]
    assert rows[0]["site"] == "plant-a" and rows[0]["time"] == round(NOW * 1e6) * 1000
    # Clearing the retained status (empty payload) is not an error.
    clients("clear").publish_all([(f"status/{node}", b"")], retain=True)


def test_awkward_but_valid_strings_survive_influxd_exactly(mosquitto, influx_db, unique_id, clients, running):
    influxdb, db = influx_db
    bridge = running(bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db}))
    odd = ['say "hi"', "back\\slash", "trailing\\", 'q\\"', "a b,c=d", "é€😀", "tab\there", "nul\x00", "\u200b"]
    versions = ["1.0 rc,1=x", "é", "v=2", "a b"]
    messages = [
        (f"results/dev-{unique_id}/m1",
         json.dumps(result(unique_id, i, label=label, model_version=versions[i % len(versions)])).encode())
        for i, label in enumerate(odd)
    ]
    clients("pub").publish_all(messages)
    eventually(lambda: count(influxdb, db) == len(odd), timeout=15, message="awkward points stored")
    rows = {r["seq"]: r for r in influx_rows(influxdb, "SELECT * FROM inference", db)}
    assert [rows[i]["label"] for i in range(len(odd))] == odd
    assert [rows[i]["model_version"] for i in range(len(odd))] == [versions[i % len(versions)] for i in range(len(odd))]
    assert bridge.stats()["write_errors"] == {}


def test_junk_is_rejected_counted_dead_lettered_and_good_messages_are_stored(
    mosquitto, influx_db, unique_id, clients, running
):
    influxdb, db = influx_db
    cfg = bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db},
                        subscribe=["results/#", "status/#"], max_payload_bytes=4096)
    bridge = running(cfg)
    letters = clients("dlq", subscribe="deadletter/bridge")
    dev, topic = f"dev-{unique_id}", f"results/dev-{unique_id}/m1"
    junk = [
        (topic, b'{"device": "x", oops', "malformed_json"),
        (topic, json.dumps(result(unique_id, 0, score=float("nan"))).encode(), "non_finite"),  # NaN literal
        (topic, json.dumps({**result(unique_id, 0), "seq": "seven"}).encode(), "invalid_schema"),
        (topic, json.dumps(result(unique_id, 0, anomaly="yes")).encode(), "invalid_schema"),
        (topic, json.dumps(result(unique_id, 0, device=f"other-{unique_id}")).encode(), "topic_mismatch"),
        (f"status/edge-{unique_id}", json.dumps({"node": "someone-else", "state": "online", "ts": NOW}).encode(),
         "topic_mismatch"),
        (topic, json.dumps([result(unique_id, 0, outputs=[0.0] * 400)] * 5).encode(), "oversized"),
        (f"results/{dev}", json.dumps(result(unique_id, 0)).encode(), "bad_topic"),
        (f"results/{dev}/m1/x", json.dumps(result(unique_id, 0)).encode(), "bad_topic"),
        (topic, json.dumps(result(unique_id, 0, label="line\nbreak")).encode(), "unencodable"),
        (topic, b"\x00\xff\xfe garbage", "malformed_json"),
    ]
    messages = []
    for seq, (jtopic, payload, _) in enumerate(junk):
        messages.append((topic, json.dumps(result(unique_id, seq)).encode()))
        messages.append((jtopic, payload))
    messages.append((topic, json.dumps(result(unique_id, len(junk))).encode()))
    clients("pub").publish_all(messages)

    good = len(junk) + 1
    eventually(lambda: count(influxdb, db) == good, timeout=15, message="good messages stored")
    eventually(lambda: len(letters.received) == len(junk), timeout=10, message="one dead-letter per junk message")
    expected: dict[str, int] = {}
    for *_, reason in junk:
        expected[reason] = expected.get(reason, 0) + 1
    assert bridge.stats()["rejected"] == expected
    dead = [json.loads(payload) for _, payload in letters.received]
    assert sorted(d["reason"] for d in dead) == sorted(r for *_, r in junk)
    assert all(d["component"] == "bridge" and d["detail"] for d in dead)
    by_topic = {d["topic"] for d in dead}
    assert f"results/{dev}" in by_topic and f"results/{dev}/m1/x" in by_topic
    assert sorted(r["seq"] for r in influx_rows(influxdb, "SELECT seq FROM inference", db)) == list(range(good))


def test_type_conflict_is_a_partial_write_and_the_good_points_are_kept(
    mosquitto, influx_db, unique_id, clients, running
):
    influxdb, db = influx_db
    # Someone stored out_1 as an integer before: from now on a float out_1 conflicts in this shard.
    influxdb.write(f"inference,device=legacy out_1=7i {round(NOW * 1e9)}", db)
    bridge = running(bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db}))
    letters = clients("dlq", subscribe="deadletter/bridge")
    # The bridge's own birth status goes out in a batch of its own first.
    eventually(lambda: bridge.stats()["batches"] == 1, timeout=10, message="bridge birth status written")
    ok = [result(unique_id, seq, outputs=[0.5]) for seq in range(6)]
    conflicting = [result(unique_id, seq, outputs=[0.5, 1.5]) for seq in range(6, 10)]
    clients("pub").publish_all([(f"results/dev-{unique_id}/m1", json.dumps(ok + conflicting).encode())])
    eventually(lambda: bridge.stats()["results"] == 10 and bridge.stats()["points_refused"] == 4, timeout=15,
               message="the batch written")
    stats = bridge.stats()
    assert stats["write_errors"] == {"partial": 1} and stats["points_refused"] == 4 and stats["retries"] == 0
    assert sorted(r["seq"] for r in influx_rows(influxdb, f"SELECT seq FROM inference WHERE device='dev-{unique_id}'", db)) == list(range(6))
    # One dead-letter per refused point, its payload the line itself (ready to be written again).
    eventually(lambda: len(letters.received) == 4, timeout=10, message="one dead-letter per refused point")
    dead = [json.loads(payload) for _, payload in letters.received]
    assert all(d["reason"] == "partial_write" and "field type conflict" in d["detail"] for d in dead)
    lines = sorted(__import__("base64").b64decode(d["payload_b64"]).decode() for d in dead)
    assert [int(line.split("seq=")[1].split("i")[0]) for line in lines] == [6, 7, 8, 9]
    assert stats["points_written"] == 1 + 6 and stats["probe_writes"] > 0


def test_stop_drains_everything_already_received(mosquitto, influx_db, unique_id, clients):
    influxdb, db = influx_db
    cfg = bridge_config(mosquitto, unique_id,
                        {"api": "v1", "url": influxdb.url, "db": db, "batch_size": 100_000, "flush_interval_ms": 600_000})
    bridge = Bridge(cfg)
    bridge.start(5)
    n = 500
    clients("pub").publish_all(results_messages(unique_id, n))
    eventually(lambda: bridge.stats()["results"] == n, timeout=15, message="all results received")
    assert count(influxdb, db) == 0  # held in the pending batch: interval and size are far away
    assert bridge.stop(timeout_s=10) is True
    assert count(influxdb, db) == n
    assert bridge.stats()["batches"] == 1


# --------------------------------------------------------------------------- v2 -> VictoriaMetrics


def test_v2_results_reach_victoria_metrics_through_influxdb_client(mosquitto, victoria, unique_id, clients, running):
    influx = {"api": "v2", "url": victoria.url, "bucket": "edgeloop", "org": "dummy-org", "token": "dummy-token"}
    bridge = running(bridge_config(mosquitto, unique_id, influx))
    n = 200
    clients("pub").publish_all(results_messages(unique_id, n, per_message=20))

    def samples(metric: str) -> dict[int, float]:
        out = {}
        for series in victoria.export(f'{{__name__="{metric}", device="dev-{unique_id}"}}'):
            out.update(zip(series["timestamps"], series["values"]))
        return out

    scores = eventually(lambda: (s := samples("inference_score")) and len(s) == n and s, timeout=20,
                        message=f"{n} inference_score samples in VictoriaMetrics")
    for seq in (0, 7, n - 1):
        want = result(unique_id, seq)
        assert scores[int(want["ts"] * 1000)] == want["score"]  # VM keeps milliseconds
    anomaly = samples("inference_anomaly")
    assert sorted(set(anomaly.values())) == [0.0, 1.0]  # booleans become 1/0
    assert set(samples("inference_label").values()) == {0.0}  # strings are not numbers: 0
    assert len(samples("inference_seq")) == n and len(samples("inference_out_0")) == n
    labels = victoria.export(f'{{__name__="inference_score", device="dev-{unique_id}"}}')[0]["metric"]
    assert labels == {"__name__": "inference_score", "device": f"dev-{unique_id}", "sensor": "accel", "model": "m1",
                      "model_version": "1.2.0", "node": f"edge-{unique_id}", "site": "plant-a", "env": "test"}
    assert bridge.stats()["write_errors"] == {}



def test_run_bridge_returns_0_after_the_stop_event_and_a_complete_drain(mosquitto, influx_db, unique_id, clients):
    influxdb, db = influx_db
    node = f"edge-{unique_id}"
    status = {"node": node, "state": "online", "ts": NOW}
    clients("pub").publish_all([(f"status/{node}", json.dumps(status).encode())], retain=True)
    cfg = bridge_config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db, "flush_interval_ms": 600_000})
    stop = threading.Event()
    stop.set()  # stop at once: the retained status arrives before the UNSUBACK, so the drain must write it
    assert run_bridge(cfg, stop) == 0
    assert [r["node"] for r in influx_rows(influxdb, "SELECT * FROM node_status WHERE node =~ /^edge-/", db)] == [node]


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_gzip_bodies_are_accepted(api, influx_db, victoria, unique_id):
    from edgeloop.bridge import make_sink

    influxdb, db = influx_db
    url = influxdb.url if api == "v1" else victoria.url
    sink = make_sink(BridgeConfig.model_validate(
        {"influx": {"api": api, "url": url, "db": db, "token": "dummy", "gzip": True}}))
    ts = round(NOW * 1e6) * 1000
    try:
        sink.write([f"gz_{unique_id},device=d x=1.5 {ts}", f"gz_{unique_id},device=d x=2.5 {ts + 1000000}"])
    finally:
        sink.close()
    if api == "v1":
        assert [r["x"] for r in influxdb.points(f"SELECT x FROM gz_{unique_id}", db)] == [1.5, 2.5]
    else:
        series = eventually(lambda: victoria.export(f'{{__name__="gz_{unique_id}_x"}}'), timeout=10)
        assert series[0]["values"] == [1.5, 2.5]
