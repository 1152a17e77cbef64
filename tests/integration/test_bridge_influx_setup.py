"""The bridge against an InfluxDB it cannot write to as configured, and against influxd's partial writes.

Real servers only: influxd 1.6.7 (with ``auth-enabled`` and a low ``max-values-per-tag`` where a
test needs them) and VictoriaMetrics with ``-httpAuth.*`` (a real 401 on the influxdb-client v2
path). What must hold (issues 11, 13, 14): the start is refused with one line naming the fix;
at run time nothing is acknowledged while the server refuses us, and the held data is written
once it takes it again; a partial write counts only what the server stored.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest
from lab.procs import REPO, CliProcess
from lab.servers import InfluxDB1, VictoriaMetrics, eventually

from edgeloop.bridge import Bridge, BridgeConfig, InfluxSetupError
from lab.configs import SYNTHETIC_RESULTS
from edgeloop.mqtt import MqttLink, MqttSettings, wait_for_all

SHA = "cd" * 32
NOW = time.time() - 600
ADMIN = ("admin", "admin-pw")


def result(device: str, seq: int) -> bytes:
    return json.dumps({"device": device, "sensor": "s", "model": "m1", "model_version": "1", "model_sha256": SHA,
                       "ts": NOW + seq, "seq": seq, "outputs": [0.5], "score": 0.1, "anomaly": False,
                       "label": "ok", "latency_ms": 1.0}).encode()


def publish(mosquitto, items: list[tuple[str, bytes]]) -> None:
    link = MqttLink(MqttSettings(url=mosquitto.url, max_inflight=1000), f"pub-{time.monotonic_ns()}")
    link.start(5)
    try:
        assert wait_for_all([link.publish(t, p, qos=1) for t, p in items], 15)
    finally:
        link.stop()


def results(device: str, seqs: range) -> list[tuple[str, bytes]]:
    return [(f"results/{device}/m1", result(device, seq)) for seq in seqs]


def config(mosquitto, uid: str, influx: dict) -> BridgeConfig:
    return BridgeConfig.model_validate({
        "mqtt": {"url": mosquitto.url, "client_id": f"bridge-{uid}", "reconnect_min_s": 0.2, "reconnect_max_s": 1},
        "influx": {"batch_size": 100, "flush_interval_ms": 50, "timeout_s": 2, "retry_max_s": 0.5, **influx},
        **SYNTHETIC_RESULTS,  # made-up results: no edge announces their version
    })


def stored(influxdb: InfluxDB1, db: str, device: str | None = None) -> list[int]:
    where = f" WHERE device='{device}'" if device else ""
    return sorted(row["seq"] for row in influxdb.points(f"SELECT seq FROM inference{where}", db))


def run_cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``edgeloop bridge run ...`` as a real process; it must exit by itself (a running bridge is a failure)."""
    try:
        return subprocess.run([sys.executable, "-m", "edgeloop.cli", "bridge", "run", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the bridge kept running instead of refusing to start: {exc.stderr!r}") from None


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """influxd with auth-enabled and an admin user."""
    with InfluxDB1(tmp_path_factory.mktemp("influxdb-auth"), admin=ADMIN) as server:
        yield server


def writer_user(influxdb: InfluxDB1, uid: str) -> tuple[str, str, str]:
    """A database and a user that may write to it (not an admin): (db, user, password)."""
    db, user, password = f"secure_{uid}", f"writer_{uid}", f"pw-{uid}"
    influxdb.create_database(db)
    influxdb.query(f"CREATE USER \"{user}\" WITH PASSWORD '{password}'")
    influxdb.query(f'GRANT WRITE ON "{db}" TO "{user}"')
    return db, user, password


# --------------------------------------------------------------------------- start-up: refuse with the fix


def test_v2_client_against_influxdb_1x_exits_2_naming_influx_api_v1(mosquitto, influxdb):
    done = run_cli(["--broker", mosquitto.url, "--influx-url", influxdb.url, "--influx-api", "v2"])
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert "InfluxDB 1.6.7" in message and "--influx-api v1" in message and "/api/v2/write" in message


def test_missing_database_exits_2_naming_create_database_and_the_flag(mosquitto, influxdb, unique_id):
    db = f"missing_{unique_id}"
    done = run_cli(["--broker", mosquitto.url, "--influx-url", influxdb.url, "--influx-api", "v1", "--influx-db", db])
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip().splitlines()[-1]
    assert f"CREATE DATABASE {db}" in message and "--influx-create-db" in message
    assert db not in [row["name"] for row in influxdb.points("SHOW DATABASES", "")]


def test_influx_create_db_creates_it_and_the_data_lands(mosquitto, influxdb, unique_id, tmp_path):
    db = f"created_{unique_id}"
    statuses: list[dict] = []
    watcher = MqttLink(MqttSettings(url=mosquitto.url), f"watch-{unique_id}",
                       on_message=lambda m: statuses.append(json.loads(m.payload)),
                       subscriptions=[("status/edgeloop-bridge", 1)])
    watcher.start(5)
    synthetic = tmp_path / "bridge.yaml"  # made-up results: no edge announces their version
    synthetic.write_text(json.dumps(SYNTHETIC_RESULTS))  # JSON is YAML
    bridge = CliProcess(["bridge", "run", "-c", str(synthetic), "--broker", mosquitto.url, "--influx-url",
                         influxdb.url, "--influx-api", "v1", "--influx-db", db, "--influx-create-db"],
                        tmp_path / "bridge.log").start()
    try:
        eventually(lambda: any(s["state"] == "online" for s in statuses), timeout=30,
                   message="bridge online (subscribed)")
        assert db in [row["name"] for row in influxdb.points("SHOW DATABASES", "")]
        publish(mosquitto, results(f"dev-{unique_id}", range(25)))
        eventually(lambda: stored(influxdb, db) == list(range(25)), timeout=30, message="all 25 results stored")
    finally:
        watcher.stop()
        assert bridge.terminate() == 0, bridge.log_tail()
    assert "created database" in bridge.log_tail(100_000)


def test_credentials_are_checked_at_start(mosquitto, secured, unique_id):
    db, user, password = writer_user(secured, unique_id)
    other = f"other_{unique_id}"
    secured.create_database(other)  # exists, but the user may not write to it
    cases = [
        ({"username": user, "password": "wrong"}, "HTTP 401", "check influx.username / influx.password"),
        ({}, "HTTP 401", "set influx.username and influx.password"),
        ({"username": user, "password": password, "db": other}, "HTTP 403", f"GRANT WRITE ON {other} TO {user}"),
    ]
    for influx, status, fix in cases:
        bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": secured.url, "db": db, **influx}))
        with pytest.raises(InfluxSetupError) as info:
            bridge.start(5)
        assert status in str(info.value) and fix in str(info.value) and "\n" not in str(info.value)
        assert "wrong" not in str(info.value) and password not in str(info.value)  # no secret in the message
    # The right credentials pass.
    bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": secured.url, "db": db,
                                                  "username": user, "password": password}))
    bridge.start(5)
    assert bridge.stop(timeout_s=5)


def test_create_db_without_admin_rights_says_so(mosquitto, secured, unique_id):
    _, user, password = writer_user(secured, unique_id)
    bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": secured.url, "db": f"new_{unique_id}",
                                                  "username": user, "password": password,
                                                  "create_database": True}))
    with pytest.raises(InfluxSetupError) as info:
        bridge.start(5)
    assert "CREATE DATABASE" in str(info.value) and "admin" in str(info.value)


def test_v2_token_refused_by_victoria_metrics_stops_the_start(mosquitto, tmp_path, unique_id):
    with VictoriaMetrics(tmp_path / "vm", auth=("vmuser", "vmpass")) as vm:
        bridge = Bridge(config(mosquitto, unique_id, {"api": "v2", "url": vm.url, "bucket": "b", "org": "o",
                                                      "token": "not-the-password"}))
        with pytest.raises(InfluxSetupError) as info:
            bridge.start(5)
        assert "HTTP 401" in str(info.value) and "API token" in str(info.value)


def test_unreachable_database_at_start_is_not_fatal_and_the_broker_keeps_the_data(mosquitto, tmp_path, unique_id,
                                                                                  caplog):
    server = InfluxDB1(tmp_path / "later")  # port chosen, not started
    bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": server.url, "db": "later"}))
    with caplog.at_level("WARNING", logger="cloud_bridge"):
        bridge.start(5)
    assert any("not reachable at start" in r.getMessage() and "stay on the broker" in r.getMessage()
               for r in caplog.records)
    try:
        publish(mosquitto, results(f"dev-{unique_id}", range(10)))
        eventually(lambda: bridge.stats()["write_errors"].get("unavailable", 0) >= 2, timeout=15)
        assert bridge.stats()["settled"] == 0
        server.start()
        server.create_database("later")
        eventually(lambda: stored(server, "later") == list(range(10)), timeout=30, message="written once it is up")
    finally:
        bridge.stop(timeout_s=10)
        server.stop()


# --------------------------------------------------------------------------- run time: hold, never drop


def test_database_dropped_at_run_time_nothing_is_acked_and_the_broker_redelivers(mosquitto, influxdb, unique_id):
    db, device = f"dropped_{unique_id}", f"dev-{unique_id}"
    influxdb.create_database(db)
    cfg = config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db})
    first = Bridge(cfg)
    first.start(5)
    publish(mosquitto, results(device, range(10)))
    eventually(lambda: stored(influxdb, db) == list(range(10)), timeout=15)
    settled = eventually(lambda: first.stats()["settled"] >= 10 and first.stats()["settled"], timeout=10)
    influxdb.query(f'DROP DATABASE "{db}"')
    publish(mosquitto, results(device, range(10, 30)))
    eventually(lambda: first.stats()["held_cause"] == "not_found" and first.stats()["write_errors"]["not_found"] >= 3,
               timeout=15, message="the batch is held on 404")
    stats = first.stats()
    assert stats["settled"] == settled and stats["points_dropped"] == 0 and stats["held_points"] == 20
    assert first.stop(timeout_s=1) is False  # still refused: given up at stop, not acknowledged
    # The broker kept all 20 (persistent session): the next bridge with the same client id gets them.
    influxdb.create_database(db)
    second = Bridge(cfg)
    second.start(5)
    try:
        eventually(lambda: stored(influxdb, db) == list(range(10, 30)), timeout=30, message="redelivered and written")
        eventually(lambda: second.stats()["points_written"] == 20 + second.stats()["statuses"], timeout=10)
    finally:
        assert second.stop(timeout_s=10)


def test_database_recreated_while_held_the_same_bridge_writes_then_acks(mosquitto, influxdb, unique_id):
    db, device = f"recreated_{unique_id}", f"dev-{unique_id}"
    influxdb.create_database(db)
    bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db}))
    bridge.start(5)
    try:
        eventually(lambda: bridge.stats()["statuses"] == 1 and bridge.stats()["settled"] == 1, timeout=10)
        influxdb.query(f'DROP DATABASE "{db}"')
        publish(mosquitto, results(device, range(15)))
        eventually(lambda: bridge.stats()["held_cause"] == "not_found", timeout=15, message="held on 404")
        assert bridge.stats()["settled"] == 1
        influxdb.create_database(db)
        eventually(lambda: stored(influxdb, db) == list(range(15)), timeout=30, message="held batch written")
        stats = eventually(lambda: (s := bridge.stats())["settled"] == 16 and s, timeout=10)
        assert stats["held_cause"] == "" and stats["points_written"] == 1 + 15 and stats["points_dropped"] == 0
    finally:
        assert bridge.stop(timeout_s=10)


def test_credentials_revoked_at_run_time_are_held_then_written(mosquitto, secured, unique_id):
    db, user, password = writer_user(secured, unique_id)
    device = f"dev-{unique_id}"
    bridge = Bridge(config(mosquitto, unique_id, {"api": "v1", "url": secured.url, "db": db,
                                                  "username": user, "password": password}))
    bridge.start(5)
    try:
        publish(mosquitto, results(device, range(5)))
        eventually(lambda: stored(secured, db, device) == list(range(5)), timeout=15)
        settled = eventually(lambda: bridge.stats()["settled"] >= 5 and bridge.stats()["settled"], timeout=10)
        for revoke, restore, cause, seqs in [
            (f'REVOKE WRITE ON "{db}" FROM "{user}"', f'GRANT WRITE ON "{db}" TO "{user}"', "forbidden", range(5, 15)),
            (f"SET PASSWORD FOR \"{user}\" = 'changed'", f"SET PASSWORD FOR \"{user}\" = '{password}'",
             "unauthorized", range(15, 30)),
        ]:
            secured.query(revoke)
            publish(mosquitto, results(device, seqs))
            eventually(lambda: bridge.stats()["held_cause"] == cause, timeout=15, message=f"held on {cause}")
            assert bridge.stats()["settled"] == settled and stored(secured, db, device) == list(range(seqs.start))
            secured.query(restore)
            eventually(lambda: stored(secured, db, device) == list(range(seqs.stop)), timeout=30,
                       message=f"written after {cause} was fixed")
            settled += len(seqs)
            eventually(lambda: bridge.stats()["settled"] == settled and bridge.stats()["held_cause"] == "", timeout=10)
        assert bridge.stats()["points_dropped"] == 0
    finally:
        assert bridge.stop(timeout_s=10)


def test_v2_401_at_run_time_is_held_then_written_to_victoria_metrics(mosquitto, tmp_path, unique_id):
    device = f"dev-{unique_id}"

    def samples() -> list[float]:
        series = vm.export(f'{{__name__="inference_seq",device="{device}"}}')
        return sorted(v for s in series for v in s["values"])

    with VictoriaMetrics(tmp_path / "vm") as vm:
        bridge = Bridge(config(mosquitto, unique_id, {"api": "v2", "url": vm.url, "bucket": "b", "org": "o",
                                                      "token": "t"}))
        bridge.start(5)
        try:
            publish(mosquitto, results(device, range(5)))
            eventually(lambda: samples() == list(range(5)), timeout=20)
            settled = eventually(lambda: bridge.stats()["settled"] >= 5 and bridge.stats()["settled"], timeout=10)
            vm.auth = ("vmuser", "vmpass")
            vm.restart()  # from now on the token is refused: 401
            publish(mosquitto, results(device, range(5, 15)))
            eventually(lambda: bridge.stats()["held_cause"] == "unauthorized", timeout=20, message="held on 401")
            assert bridge.stats()["settled"] == settled
            vm.auth = None
            vm.restart()
            eventually(lambda: samples() == list(range(15)), timeout=30, message="held points written after 401")
            eventually(lambda: bridge.stats()["settled"] == settled + 10, timeout=10)
        finally:
            assert bridge.stop(timeout_s=10)


# --------------------------------------------------------------------------- partial writes: count what was stored


def test_partial_write_counts_only_what_influxd_stored(mosquitto, tmp_path, unique_id):
    """influxd 1.6.7 with max-values-per-tag=5: a request mixing points of 5 devices it knows with 10 of new
    devices answers ``dropped=10`` and silently loses several of the 20 good points too (when those belong
    to series that already exist). The bridge must end with every good point stored and counted, and
    exactly the 10 refused ones dead-lettered."""
    db = "limits"
    with InfluxDB1(tmp_path / "influxdb-limits", max_values_per_tag=5) as influxdb:
        influxdb.create_database(db)
        letters: list[dict] = []
        dlq = MqttLink(MqttSettings(url=mosquitto.url), f"dlq-{unique_id}",
                       on_message=lambda m: letters.append(json.loads(m.payload)),
                       subscriptions=[("deadletter/bridge", 1)])
        dlq.start(5)
        cfg = config(mosquitto, unique_id, {"api": "v1", "url": influxdb.url, "db": db, "batch_size": 30,
                                            "flush_interval_ms": 2000})
        bridge = Bridge(cfg)
        bridge.start(5)
        try:
            known = [f"known{i}-{unique_id}" for i in range(5)]
            publish(mosquitto, [item for i, device in enumerate(known) for item in results(device, range(100 + i, 101 + i))])
            eventually(lambda: bridge.stats()["points_written"] == 1 + 5, timeout=15, message="5 devices known")
            items = []
            for i in range(30):
                device = f"new{i // 3}-{unique_id}" if i % 3 == 2 else known[i % 5]
                items += results(device, range(i, i + 1))
            publish(mosquitto, items)
            eventually(lambda: bridge.stats()["settled"] == 1 + 5 + 30, timeout=30, message="every message settled")
            stats = bridge.stats()
            good = sorted(row["seq"] for row in influxdb.points("SELECT seq FROM inference WHERE seq < 100", db))
            assert good == [i for i in range(30) if i % 3 != 2]  # all 20 good points stored, no refused one
            assert stats["points_written"] == 1 + 5 + 20 and stats["points_refused"] == 10
            assert stats["points_unconfirmed"] == 0 and stats["write_errors"].get("partial", 0) >= 1
            eventually(lambda: len(letters) == 10, timeout=10, message="one dead-letter per refused point")
            lines = sorted(base64.b64decode(letter["payload_b64"]).decode() for letter in letters)
            assert all(line.startswith("inference,device=new") for line in lines)
            assert {letter["reason"] for letter in letters} == {"partial_write"}
            assert all("max-values-per-tag" in letter["detail"] for letter in letters)
        finally:
            assert bridge.stop(timeout_s=10)
            dlq.stop()
