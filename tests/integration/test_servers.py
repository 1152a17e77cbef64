"""The server fixtures work: each test talks to the real server the way product code will."""

from __future__ import annotations

import time

from lab.mqtt import Watcher, close, connect, publish_all
from lab.servers import InfluxDB1, Mosquitto, VictoriaMetrics, eventually, http


def test_mosquitto_delivers_published_message(mosquitto: Mosquitto, unique_id: str) -> None:
    topic = f"sensors/dev-{unique_id}/temp"
    with Watcher(mosquitto.port, [topic]) as sub:
        pub = connect(mosquitto.port, client_id=f"pub-{unique_id}")
        try:
            publish_all(pub, [(topic, b'{"v": 21.5}')], timeout=5)
            msg = eventually(lambda: sub.messages(topic) and sub.messages(topic)[0], timeout=5)
        finally:
            close(pub)
    assert (msg.topic, msg.payload, msg.qos) == (topic, b'{"v": 21.5}', 1)


def test_mosquitto_retained_message_survives_kill_with_persistence(tmp_path, unique_id: str) -> None:
    topic = f"status/dev-{unique_id}"
    with Mosquitto(tmp_path / "broker", persistence=True) as broker:
        pub = connect(broker.port, client_id=f"pub-{unique_id}")
        publish_all(pub, [(topic, b"online")], timeout=5, retain=True)
        close(pub)
        # Autosave runs in mosquitto's main loop after the change; wait until it reached the disk.
        eventually(lambda: broker.db_path.exists() and b"online" in broker.db_path.read_bytes(),
                   timeout=5, message="retained message never saved to mosquitto.db")
        port = broker.port
        broker.kill()
        assert not broker.running
        broker.restart()
        assert broker.port == port
        with Watcher(broker.port, [topic]) as sub:
            msg = eventually(lambda: sub.messages(topic) and sub.messages(topic)[0], timeout=5)
    assert (msg.topic, msg.payload, msg.retain) == (topic, b"online", True)


def test_influxdb_write_and_read_back(influx_db: tuple[InfluxDB1, str], unique_id: str) -> None:
    server, db = influx_db
    ts = time.time_ns()
    status, body = http("POST", f"{server.url}/write?db={db}&precision=ns",
                        f'results,device=dev-{unique_id},model=anom score=0.25,label="ok",seq=7i {ts}'.encode())
    assert status == 204, body
    rows = server.points("SELECT score, label, seq FROM results GROUP BY device", db)
    assert len(rows) == 1
    row = rows[0]
    assert (row["device"], row["score"], row["label"], row["seq"]) == (f"dev-{unique_id}", 0.25, "ok", 7)


def test_influxdb_databases_are_separate(influx_db: tuple[InfluxDB1, str], influxdb: InfluxDB1) -> None:
    server, db = influx_db
    server.write("m v=1", db)
    assert server.points("SELECT v FROM m", db)[0]["v"] == 1
    other = db + "_other"
    server.create_database(other)
    assert server.points("SELECT v FROM m", other) == []


def test_influxdb_query_errors_raise(influx_db: tuple[InfluxDB1, str]) -> None:
    server, db = influx_db
    try:
        server.query("SELEC nothing", db)
    except AssertionError as exc:
        assert "error parsing query" in str(exc)
    else:
        raise AssertionError("a bad InfluxQL statement did not raise")


def test_victoria_metrics_v2_write_and_export(victoria: VictoriaMetrics, unique_id: str) -> None:
    ts_ms = time.time_ns() // 1_000_000
    line = f"edge_{unique_id},device=dev-{unique_id} score=0.5,alarm=true,n=3i {ts_ms}"
    status, body = http("POST", f"{victoria.url}/api/v2/write?org=edgeloop&bucket=results&precision=ms",
                        line.encode())
    assert status == 204, body
    series = eventually(lambda: len(found := victoria.export(f'{{__name__=~"edge_{unique_id}_.*"}}')) == 3
                        and found, timeout=20, message="written series never became searchable")
    by_name = {s["metric"]["__name__"]: s for s in series}
    assert set(by_name) == {f"edge_{unique_id}_score", f"edge_{unique_id}_alarm", f"edge_{unique_id}_n"}
    assert by_name[f"edge_{unique_id}_score"]["metric"]["device"] == f"dev-{unique_id}"
    assert [by_name[f"edge_{unique_id}_{f}"]["values"] for f in ("score", "alarm", "n")] == [[0.5], [1], [3]]
    assert by_name[f"edge_{unique_id}_score"]["timestamps"] == [ts_ms]
