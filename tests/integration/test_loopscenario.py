"""The closed-loop scenario's fleet, against a real mosquitto: burst and regime change switched by events.

The e2e test starts the burst, ends it and changes the regime when the loop has
shown the previous phase; these switches must land at a reading boundary and
leave every other reading what the simulator makes.
"""

from __future__ import annotations

from lab.loopscenario import Burst, FleetPublisher
from lab.mqtt import Watcher
from lab.servers import eventually

from edgeloop.contract import SensorReading
from edgeloop.devices.simulator import FleetSimulator


def test_burst_and_drift_switched_by_calls_are_the_simulators_readings_from_that_reading_on(mosquitto):
    with Watcher(mosquitto.port, ["sensors/#"]) as watch:
        fleet = FleetPublisher(mosquitto.port, 2, 500.0, None, burst=Burst(device=1, anomaly_rate=0.5)).start()
        try:
            for switch in (fleet.start_burst, fleet.end_burst, fleet.start_drift, None):
                mark = fleet.published
                eventually(lambda: fleet.published >= mark + 300, timeout=30)
                if switch is not None:
                    switch()
        finally:
            fleet.close()
        eventually(lambda: len(watch.messages("sensors/")) >= 0.9 * fleet.published, timeout=30)

    onset_s = fleet.drift_at_s / fleet.time_scale  # simulated seconds
    kw = {"seed": 42, "time_scale": fleet.time_scale, "sensors": ("vibration",), "start_ts": fleet.start_wall,
          "drift_at_s": onset_s}
    expected = {}
    for sim, device in ((FleetSimulator(2, anomaly_rate=0.002, **kw), None),
                        (FleetSimulator(2, anomaly_rate=0.5, **kw), "dev-001")):
        for topic, reading in sim.readings(count=fleet.published):
            expected[(topic, reading.seq, device)] = reading.model_dump_json(exclude_none=True).encode()
    first, last = fleet.burst_seqs
    drifted = burst = 0
    for m in watch.messages("sensors/"):
        seq = SensorReading.model_validate_json(m.payload).seq
        in_burst = m.topic == "sensors/dev-001/vibration" and first <= seq <= last
        assert m.payload == expected[(m.topic, seq, "dev-001" if in_burst else None)], (m.topic, seq)
        burst += in_burst
        drifted += SensorReading.model_validate_json(m.payload).ts >= fleet.drift_wall
    assert burst > 100 and drifted > 200
    assert set(fleet.burst_faults) <= {("dev-001", s) for s in range(first, last + 1)}
