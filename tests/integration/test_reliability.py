"""Nothing lost, nothing doubled: real processes killed, a database stopped, a cable pulled.

Each test streams a known set of simulated vibration readings (3 devices) at
QoS 1 through mosquitto to an edge process, whose results go
through mosquitto to a bridge process and into influxd; one fault hits in the
middle of the stream. Afterwards the processes are stopped (SIGTERM) and the
database is counted: every window the readings imply must be there, once.
The same scenarios at a larger scale make the table in docs/reliability.md
(``make reliability``).
"""

from __future__ import annotations

import pytest

from lab import faultrig as fk
from lab.procs import logs

DEVICES = 3
PER_DEVICE = 40  # readings per device: 39 windows each
RATE = 60.0  # readings/s over the fleet: the stream lasts 2 s, the fault hits after ~0.7 s


def rig(tmp_path, name: str, influx=None, **kw) -> fk.Rig:
    return fk.Rig(tmp_path / "rig", name, influx=influx, devices=DEVICES, per_device=PER_DEVICE, rate=RATE, **kw)


def assert_nothing_lost(out: fk.Outcome, r: fk.Rig) -> None:
    tails = logs(r.edge, *r.bridges, chars=4000)
    assert out.sent == DEVICES * PER_DEVICE
    assert out.expected == DEVICES * (PER_DEVICE - 1)
    missing = sorted(set(out.notes.get("missing", [])))[:20]
    assert (out.lost, out.duplicates) == (0, 0), (out.row(), missing, tails)
    assert set(out.notes["exit_codes"].values()) == {0}, (out.notes, tails)  # every drain completed


def test_mosquitto_killed_and_restarted_mid_stream(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"broker{unique_id}", influxdb, persistence=True) as r:
        out = r.run(fk.kill_broker(down_s=1.0))
        assert_nothing_lost(out, r)
        assert r.edge.final_stats()["reconnects"] >= 1  # the edge did lose the broker


def test_bridge_killed_and_restarted_mid_stream(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"bridge{unique_id}", influxdb) as r:
        out = r.run(fk.kill_bridge(down_s=1.0))
        assert_nothing_lost(out, r)
        assert r.bridges[0].starts == 2


def test_influxdb_stopped_for_seconds_mid_stream(tmp_path, unique_id):
    with rig(tmp_path, f"influx{unique_id}") as r:  # its own influxd: this test stops it
        out = r.run(fk.stop_influx(down_s=5.0))
        assert_nothing_lost(out, r)
        stats = r.bridges[0].final_stats()
        assert stats["retries"] >= 1 and stats["write_errors"].get("unavailable", 0) >= 1
        assert stats["points_dropped"] == 0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_edge_killed_and_restarted_mid_stream(tmp_path, influxdb, unique_id, protocol):
    with rig(tmp_path, f"edge{unique_id}", influxdb, edge_over={"mqtt": {"protocol": protocol}}) as r:
        out = r.run(fk.kill_edge(down_s=1.0))
        assert_nothing_lost(out, r)
        # The readings the dead edge still held came again, and so did the windows they close:
        # the bridge wrote some windows twice, and InfluxDB still holds each once.
        assert r.bridges[0].final_stats()["results"] > out.expected


def test_edge_killed_with_results_only_on_its_disk(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"offline{unique_id}", influxdb, via_proxy=True) as r:
        out = r.run(fk.kill_edge_offline(down_s=1.5))
        assert_nothing_lost(out, r)
        assert r.edge.final_stats()["outbox_replayed_at_start"] > 0  # the new process sent the old one's outbox


def test_network_outage_longer_than_the_keepalive(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"net{unique_id}", influxdb, via_proxy=True) as r:
        out = r.run(fk.cut_network(down_s=12.0))  # keepalive 5 s: the broker gives up after 7.5 s
        assert_nothing_lost(out, r)
        assert out.notes["lwt_seen"]  # the broker noticed the silence and published the edge's will
        assert r.edge.final_stats()["reconnects"] >= 1


def test_shared_subscription_splits_the_load_and_survives_a_killed_replica(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"share{unique_id}", influxdb, bridges=2, share_group=f"g{unique_id}") as r:
        out = r.run(fk.kill_bridge(down_s=1.0, index=0))
        assert_nothing_lost(out, r)
        written = [b.final_stats()["points_written"] for b in r.bridges]
        assert all(n > 0 for n in written), written  # both replicas took a share
        assert r.bridges[0].starts == 2


# Decisive scenarios: the mechanism under test is the only thing between the data and its loss, so
# breaking it loses most of the windows of the outage, not a few (tests/mutants/*.toml, `make mutate`).


def test_bridge_killed_while_influxdb_is_down(tmp_path, unique_id):
    """Every result the bridge received while influxd was down is in its memory only -- and in the
    broker, because the bridge acknowledges a result after the write, not on receipt."""
    with rig(tmp_path, f"held{unique_id}") as r:  # its own influxd: this test stops it
        out = r.run(fk.kill_bridge_while_influx_down(down_s=1.5), timeout=45.0)
        assert_nothing_lost(out, r)
        assert r.bridges[0].starts == 2


def test_edge_killed_while_its_results_get_no_puback(tmp_path, influxdb, unique_id):
    """The edge's PUBLISHes are dropped on the way while its acks for the readings pass, so the broker
    forgets the readings; every result of that time was handed to paho (max_inflight is large), which
    dies with the process: only the outbox rows, deleted on PUBACK and not before, bring them back."""
    with rig(tmp_path, f"nopuback{unique_id}", influxdb, via_proxy="mqtt",
             edge_over={"mqtt": {"max_inflight": 65535}}) as r:
        out = r.run(fk.kill_edge_without_pubacks(down_s=1.5), timeout=45.0)
        assert_nothing_lost(out, r)
        assert out.notes["publishes_dropped"] >= 30, out.notes  # the outage did hold back results
        assert r.edge.final_stats()["outbox_replayed_at_start"] >= 30  # the new process sent the old one's rows
