"""The publisher against a real broker: everything reported as sent arrives and is valid."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from lab.mqtt import Watcher
from lab.servers import Mosquitto, eventually

from edgeloop.devices.publisher import simulate
from edgeloop.contract import SensorReading, parse_sensor_topic


@pytest.fixture
def subscriber(mosquitto: Mosquitto):
    with Watcher(mosquitto.port, ["sensors/#"]) as watcher:
        yield watcher


def _drain(watcher: Watcher, expected: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """Every message once ``expected`` arrived and anything sent before them has arrived too (``sync``)."""
    eventually(lambda: len(watcher.messages()) >= expected, timeout=timeout, message=f"{expected} messages")
    watcher.sync("sensors/sync")
    return [(m.topic, m.payload) for m in watcher.messages()]


@pytest.mark.parametrize("qos", [0, 1])
def test_paced_run_delivers_exactly_the_reported_count(mosquitto, subscriber, tmp_path, qos):
    truth = tmp_path / "truth.jsonl"
    report = simulate(
        mosquitto.url,
        n_devices=3,
        rate_hz=200.0,
        count=40,
        seed=4,
        anomaly_rate=0.05,
        drift_at_s=0.1,
        qos=qos,
        truth_path=truth,
        client_id=f"sim-q{qos}",
    )
    assert report.total_sent == 3 * 40 and report.failed == 0
    assert all(sum(sensors.values()) == 40 for sensors in report.sent.values())
    if qos:
        assert report.acknowledged is True
    # 40 readings per device at 200/s: the schedule spans 0.195 s and is never run ahead of (how far
    # behind a busy machine falls is not asserted)
    assert report.elapsed_s >= 0.15

    got = _drain(subscriber, report.total_sent)
    assert len(got) == report.total_sent
    readings = [(parse_sensor_topic(t), SensorReading.model_validate_json(p)) for t, p in got]
    faults = sorted(
        (dev, r.seq) for (dev, sensor), r in readings if sensor == "vibration" and r.label == "fault"
    )
    assert faults == sorted(report.faults) and faults

    lines = [json.loads(line) for line in truth.read_text().splitlines()]
    assert lines[0]["kind"] == "run" and lines[0]["devices"] == 3
    assert sum(1 for x in lines if x["kind"] == "fault") == report.fault_readings
    assert [x["ts"] for x in lines if x["kind"] == "drift"] == [report.drift_ts]
    # ts follow the schedule from the start of the run (ts = start + time_scale * simulated time), whatever
    # the wall clock did: 40 readings per device at 200/s span less than 0.2 s
    assert all(report.start_ts <= r.ts < report.start_ts + 40 / 200 for _, r in readings)


def test_flat_out_run_with_duration(mosquitto, subscriber):
    report = simulate(mosquitto.url, n_devices=2, rate_hz=0, duration_s=2.0, seed=1, qos=1)
    # 2 simulated seconds: 31-32 chunks and 2 temperature readings per device
    assert 2 * 33 <= report.total_sent <= 2 * 34
    got = _drain(subscriber, report.total_sent)
    assert len(got) == report.total_sent


@pytest.mark.parametrize("qos", [None, 1])
def test_the_cli_publishes_at_the_qos_asked_under_the_device_ids_given(mosquitto, qos):
    """``edgeloop devices simulate --qos 1 --device-ids ...`` as a process: every reading arrives at QoS 1
    (the broker acknowledged it; the report says so) under the ids given, e.g. certificate names."""
    ids = ["press-7", "lathe.2"]
    with Watcher(mosquitto.port, [("sensors/#", 1)]) as watcher:
        run = subprocess.run(
            [sys.executable, "-m", "edgeloop.cli", "devices", "simulate", "--broker", mosquitto.url,
             "--device-ids", ",".join(ids), "--count", "10", "--rate", "100", *(["--qos", str(qos)] if qos else [])],
            capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        got = _drain(watcher, 20)
    assert (report["sent"], report["devices"], report["qos"]) == (20, 2, qos or 0)
    assert report["acknowledged"] is (True if qos else None)
    assert len(got) == 20 and {parse_sensor_topic(t)[0] for t, _ in got} == set(ids)
    assert {m.qos for m in watcher.messages()} == {qos or 0}


@pytest.mark.parametrize(("args", "says"), [
    (["--device-ids", "dev-1,dev/2"], "--device-ids: id 'dev/2'"),
    (["--device-ids", "dev-1,dev-1"], "names a device twice"),
    (["--devices", "3", "--device-ids", "a,b"], "--devices 3 but --device-ids names 2"),
    (["--cert-dir", "/nonexistent"], "--cert-dir needs --device-ids"),
    (["--device-ids", "a", "--cert-dir", "/nonexistent"], "'tls' is set but 'url' is mqtt://"),
    (["--qos", "2"], "invalid choice: 2"),
])
def test_the_cli_refuses_bad_device_and_tls_flags_before_connecting(mosquitto, args, says):
    run = subprocess.run([sys.executable, "-m", "edgeloop.cli", "devices", "simulate", "--broker", mosquitto.url,
                          "--count", "1", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_the_cli_names_a_missing_certificate(tmp_path):
    run = subprocess.run([sys.executable, "-m", "edgeloop.cli", "devices", "simulate", "--broker", "mqtts://127.0.0.1:1",
                          "--device-ids", "dev-1", "--cert-dir", str(tmp_path), "--count", "1"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and f"{tmp_path}/dev-1.crt" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_the_cli_exits_1_when_the_broker_did_not_take_every_reading(mosquitto):
    """The broker dies mid-run: readings it never took (failed to send, or never acknowledged) fail the run."""
    with Watcher(mosquitto.port, [("sensors/#", 1)]) as watcher:
        sim = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "devices", "simulate", "--broker", mosquitto.url, "--devices", "1",
             "--duration", "4", "--rate", "20", "--qos", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not watcher.messages() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert watcher.messages(), "the simulator published nothing"
            mosquitto.kill()
            out, err = sim.communicate(timeout=120)
        finally:
            sim.kill()
    assert sim.returncode == 1, err
    report = json.loads(out)
    assert report["failed"] > 0 or report["acknowledged"] is False, report
