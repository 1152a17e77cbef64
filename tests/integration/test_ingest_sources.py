"""Devices as they already are: Zigbee2MQTT, Tasmota and Home Assistant statestream into a real edge.

Real mosquitto, a real ``edgeloop edge run`` process with one pipeline per preset, and the
payloads the projects document (tests/ingest_samples.py). Results come out on
``results/{device}/{model}`` under each device's own name; a state that is not a number is
dead-lettered with its reason. The bundled vibration model scores 8-message windows (its
features do not depend on the window length); what the scores mean is not the point here.
"""

from __future__ import annotations

import json

from ingest_samples import STATESTREAM_UNAVAILABLE, statestream, tasmota, z2m
from lab import configs
from lab.mqtt import Watcher, close, connect, publish_all
from lab.procs import CliProcess, logs
from lab.servers import eventually

from edgeloop.contract import parse_result_topic

WINDOWED = [
    {"type": "select", "channels": [0, 1, 2]},
    {"type": "window", "size": 8, "hop": 8},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]
MESSAGES = 16  # two windows per device


def test_zigbee2mqtt_tasmota_and_statestream_devices_get_results_under_their_own_names(mosquitto, tmp_path, unique_id):
    node = f"edge-{unique_id}"
    z2m_device, tasmota_device, ha_device = f"living_room_{unique_id}", f"tasmota_{unique_id}", f"outdoor_{unique_id}"
    one_channel = [{"type": "select", "channels": [0, 0, 0]}, *WINDOWED[1:]]  # the model takes 3 channels
    cfg = configs.edge_config(node, mosquitto.url, {
        "input": {"qos": 1}, "sampling": {"enabled": False}, "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "pipelines": [
            {"sensor": "climate", "input": {"preset": "zigbee2mqtt"}, "stages": WINDOWED},
            {"sensor": "bme280", "input": {"preset": "tasmota", "timezone": "UTC"}, "stages": WINDOWED},
            {"sensor": "temperature", "in_channels": 1, "input": {"preset": "homeassistant-statestream"},
             "stages": one_channel},
        ],
    })
    edge = CliProcess(["edge", "run", "-c", str(configs.write_config(tmp_path / "edge.yaml", cfg))],
                      tmp_path / "edge.log").start()
    watcher = Watcher(mosquitto.port, ["results/#", "deadletter/edge", "status/#"])
    client = connect(mosquitto.port)
    try:
        watcher.wait_online(node, edge)
        messages = []
        for i in range(MESSAGES):
            messages += [(f"zigbee2mqtt/{z2m_device}", z2m(i)),
                         (f"tele/{tasmota_device}/SENSOR", tasmota(i, f"2026-11-30T05:00:{i:02d}")),
                         (f"homeassistant/sensor/{ha_device}/state", statestream(i))]
        messages += [(f"homeassistant/sensor/{ha_device}/state", STATESTREAM_UNAVAILABLE),
                     (f"zigbee2mqtt/{z2m_device}/availability", b'{"state":"online"}')]  # not subscribed
        publish_all(client, messages, qos=1)

        eventually(lambda: len(watcher.results(node)) >= 6, timeout=60,
                   message=f"results: {len(watcher.results(node))}\n{logs(edge)}")
        by_device = {}
        for r in watcher.results(node):
            by_device.setdefault(r.device, []).append(r)
        assert {d: sorted((r.sensor, r.seq) for r in rs) for d, rs in by_device.items()} == {
            z2m_device: [("climate", 7), ("climate", 15)],
            tasmota_device: [("bme280", 7), ("bme280", 15)],
            ha_device: [("temperature", 7), ("temperature", 15)],
        }
        # Tasmota's Time (read in UTC here) is the window's time: second 7 and second 15.
        assert sorted(r.ts for r in by_device[tasmota_device]) == [1_796_014_807.0, 1_796_014_815.0]
        topics = {m.topic for m in watcher.messages("results/")}
        assert {parse_result_topic(t) for t in topics} == {(d, "vibration_ae") for d in by_device}
        eventually(lambda: watcher.on("deadletter/edge"), timeout=30)
        letters = [json.loads(p) for p in watcher.on("deadletter/edge")]
        assert [(d["reason"], d["topic"]) for d in letters] == [("not_a_number", f"homeassistant/sensor/{ha_device}/state")]
    finally:
        close(client)
        watcher.close()
        assert edge.terminate() == 0, logs(edge)
