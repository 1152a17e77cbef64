"""The edge with ``workers: 2`` (runtime/workers.py) on real processes: every window of every stream,
once, with QoS 1 acks only after the results are on disk -- and when a worker process is killed the
edge stops by itself and its restart loses nothing.

Same rig as tests/integration/test_reliability.py: 3 devices streaming simulated vibration readings at
QoS 1 through mosquitto to the edge, results through a bridge into influxd, counted per window. A
stream split across workers would cut windows from half its readings: windows would be missing.
"""

from __future__ import annotations

from lab import faultrig as fk
from lab.procs import logs
from edgeloop.edge.workers import worker_of

DEVICES = 3
PER_DEVICE = 40
RATE = 60.0
WORKERS = {"workers": 2}


def rig(tmp_path, name: str, influx) -> fk.Rig:
    return fk.Rig(tmp_path / "rig", name, influx=influx, devices=DEVICES, per_device=PER_DEVICE, rate=RATE,
                  edge_over=WORKERS)


def assert_every_window_once(out: fk.Outcome, r: fk.Rig) -> None:
    tails = logs(r.edge, *r.bridges, chars=4000)
    assert out.sent == DEVICES * PER_DEVICE and out.expected == DEVICES * (PER_DEVICE - 1)
    missing = sorted(set(out.notes.get("missing", [])))[:20]
    assert (out.lost, out.duplicates) == (0, 0), (out.row(), missing, tails)
    assert set(out.notes["exit_codes"].values()) == {0}, (out.notes, tails)


def test_the_rig_streams_reach_both_workers(tmp_path):
    """Guards the tests below: with these topics a split would be possible at all."""
    topics = {topic for topic, *_ in fk.fleet_readings(DEVICES, 2)}
    assert {worker_of(topic, 2) for topic in topics} == {0, 1}, topics


def test_two_workers_keep_every_window_and_ack_after_disk(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"wk{unique_id}", influxdb) as r:
        assert len(fk.worker_pids(r.edge.pid)) == 2
        out = r.run(lambda rig: {})
        assert_every_window_once(out, r)
        stats = r.edge.final_stats()
        assert stats["workers"] == 2
        assert stats["readings_in"] == DEVICES * PER_DEVICE, stats
        assert stats["windows"] == DEVICES * (PER_DEVICE - 1), stats
        assert stats.get("sequence_gaps", 0) == 0 and stats.get("stream_restarts", 0) == 0, stats
        # Acknowledged only after the outbox append: every reading but the last of each stream
        # (held for the window it would share with the next), none released early.
        assert stats["input_released_early"] == 0, stats


def test_a_killed_worker_stops_the_edge_and_the_restart_loses_nothing(tmp_path, influxdb, unique_id):
    with rig(tmp_path, f"wkill{unique_id}", influxdb) as r:
        out = r.run(fk.kill_edge_worker(down_s=1.0))
        assert out.notes["workers"] == 2
        assert out.notes["edge_exit_after_worker_death"] == 1, r.edge.log_tail()
        assert "inference worker 0" in r.edge.log() and "died (signal 9)" in r.edge.log()
        assert_every_window_once(out, r)
