"""Presets: what each expands to, that user keys override, and the documented payloads they accept."""

from __future__ import annotations

import json
import time
from datetime import datetime

import numpy as np
import pytest
from ingest_samples import (STATESTREAM_SENSOR, STATESTREAM_UNAVAILABLE, TASMOTA_BME280, TASMOTA_ENERGY,
                            Z2M_WSDCGQ01LM, Z2M_WSDCGQ11LM)

from edgeloop.errors import PayloadError
from edgeloop.edge.config import PipelineSettings
from edgeloop.edge.ingest.presets import PRESETS


def pipeline(channels: int, **input_keys) -> PipelineSettings:
    return PipelineSettings(sensor="climate", in_channels=channels, stages=[], input=input_keys)


def decode(p: PipelineSettings, topic: str, payload: bytes):
    fields = p.template.match(topic.split("/"))
    assert fields is not None, (p.template.text, topic)
    return p.source.build().decode(topic, fields, payload, time.time())


def test_zigbee2mqtt_takes_a_climate_sensor_by_friendly_name():
    p = pipeline(3, preset="zigbee2mqtt")
    assert p.subscription == "zigbee2mqtt/+"
    (r,) = decode(p, "zigbee2mqtt/living_room", json.dumps(Z2M_WSDCGQ11LM).encode()).readings
    assert r.device == "living_room" and r.ts is None and r.seq is None  # arrival time, arrival numbering
    np.testing.assert_allclose(r.samples, [[22.75, 55.43, 1000.6]], rtol=1e-6)


def test_zigbee2mqtt_fields_override_for_a_sensor_without_pressure():
    p = pipeline(2, preset="zigbee2mqtt", fields=["temperature", "humidity"])
    assert p.input.topic == "zigbee2mqtt/{device}"  # the rest of the preset stays
    np.testing.assert_allclose(decode(p, "zigbee2mqtt/0x00158d00036c1821", json.dumps(Z2M_WSDCGQ01LM).encode())
                               .readings[0].samples, [[27.34, 44.72]], rtol=1e-6)
    with pytest.raises(PayloadError, match="pressure"):
        decode(pipeline(3, preset="zigbee2mqtt"), "zigbee2mqtt/x", json.dumps(Z2M_WSDCGQ01LM).encode())


def test_zigbee2mqtt_bridge_and_set_topics_are_not_readings():
    p = pipeline(3, preset="zigbee2mqtt")
    for topic in ("zigbee2mqtt/bridge/state", "zigbee2mqtt/living_room/set", "zigbee2mqtt/living_room/availability"):
        assert p.template.match(topic.split("/")) is None


def test_tasmota_reads_the_bme280_and_its_local_time():
    p = pipeline(3, preset="tasmota")
    assert p.subscription == "tele/+/SENSOR"
    (r,) = decode(p, "tele/tasmota_ABC123/SENSOR", json.dumps(TASMOTA_BME280).encode()).readings
    np.testing.assert_allclose(r.samples, [[16.6, 63.9, 1001.8]], rtol=1e-6)
    assert r.device == "tasmota_ABC123"
    assert r.ts == datetime(2019, 5, 10, 12, 37, 1).astimezone().timestamp()  # the edge host's zone


def test_tasmota_energy_monitor_with_dotted_paths_and_a_zone():
    p = pipeline(3, preset="tasmota", fields=["ENERGY.Power", "ENERGY.Voltage", "ENERGY.Current"],
                 timezone="Europe/Berlin")
    (r,) = decode(p, "tele/plug-1/SENSOR", json.dumps(TASMOTA_ENERGY).encode()).readings
    np.testing.assert_allclose(r.samples, [[5, 233, 0.021]], rtol=1e-6)
    assert r.ts == datetime.fromisoformat("2022-01-11T21:57:38+01:00").timestamp()


def test_homeassistant_statestream_takes_quoted_sensor_states():
    p = pipeline(1, preset="homeassistant-statestream")
    assert p.subscription == "homeassistant/sensor/+/state"
    (r,) = decode(p, "homeassistant/sensor/outdoor_temperature/state", STATESTREAM_SENSOR).readings
    assert r.device == "outdoor_temperature" and r.samples.tolist() == [[21.5]]
    with pytest.raises(PayloadError) as info:
        decode(p, "homeassistant/sensor/outdoor_temperature/state", STATESTREAM_UNAVAILABLE)
    assert info.value.reason == "not_a_number"
    assert p.template.match("homeassistant/sensor/outdoor_temperature/last_updated".split("/")) is None
    assert p.template.match("homeassistant/light/master_bedroom_dimmer/state".split("/")) is None


def test_every_preset_is_a_valid_input_with_its_documented_topic():
    topics = {"zigbee2mqtt": "zigbee2mqtt/{device}", "tasmota": "tele/{device}/SENSOR",
              "homeassistant-statestream": "homeassistant/sensor/{device}/state"}
    assert set(PRESETS) == set(topics)
    for name, topic in topics.items():
        channels = len(PRESETS[name].get("fields", [None]))
        assert pipeline(channels, preset=name).template.text == topic
