"""Publisher arguments are checked before any connection opens (no broker needed here)."""

from __future__ import annotations

import pytest

from edgeloop.devices.publisher import SimulationReport, simulate

# Nothing listens on port 9 (discard) on loopback: reaching the broker would fail differently.
NO_BROKER = "mqtt://127.0.0.1:9"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"qos": 3}, "qos value must be 0, 1, or 2: 3"),
        ({"rate_hz": -1.0}, "rate_hz must be within"),
        ({"rate_hz": 1e9}, "rate_hz must be within"),
        ({"count": -5}, "count must be >= 0"),
        ({"duration_s": -1.0}, "duration_s must be >= 0"),
        ({"anomaly_rate": 2.0}, "anomaly_rate must be within 0..1"),
        ({"n_devices": 0}, "n_devices must be"),
        ({"broker_url": "http://127.0.0.1:1883"}, "scheme must be mqtt"),
    ],
)
def test_bad_arguments_fail_before_connecting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        simulate(**{"broker_url": NO_BROKER, "count": 1, **kwargs})


def test_report_summary_is_plain_data():
    report = SimulationReport(n_devices=2, seed=1, rate_hz=10.0, time_scale=1.6625, start_ts=1.7e9, qos=0)
    report.sent = {
        "dev-000": {"vibration": 5, "temperature": 1},
        "dev-001": {"vibration": 4, "temperature": 0},
    }
    report.faults = [("dev-000", 3)]
    report.elapsed_s = 1.0
    summary = report.summary()
    assert summary["sent"] == 10
    assert summary["sent_by_sensor"] == {"vibration": 9, "temperature": 1}
    assert summary["vibration_fault_readings"] == 1
    assert summary["requested_rate_per_s"] == 20.0
