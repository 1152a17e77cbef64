"""``edgeloop devices simulate --format ...`` against a real broker: the topics and payloads the ingest examples
accept, shaped like the projects' documented samples (edgeloop.devices.payloads)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from lab.mqtt import Watcher
from lab.procs import run_cli
from lab.servers import eventually

from edgeloop.devices.payloads import dew_point

COUNT, DEVICES = 5, 3


def published(mosquitto, fmt: str, *extra: str) -> list:
    prefix = {"zigbee2mqtt": "zigbee2mqtt", "tasmota": "tele", "senml": "senml", "influx": "telegraf"}[fmt]
    with Watcher(mosquitto.port, [f"{prefix}/#"]) as watcher:
        run = run_cli("devices", "simulate", "--broker", mosquitto.url, "--format", fmt, "--devices", str(DEVICES),
                      "--count", str(COUNT), "--rate", "0", "--qos", "1", *extra)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["sent"] == COUNT * DEVICES
        eventually(lambda: len(watcher.messages()) >= COUNT * DEVICES, timeout=15, message="every message")
        return watcher.messages()


def test_zigbee2mqtt_devices_publish_their_exposes_on_their_friendly_name(mosquitto):
    msgs = published(mosquitto, "zigbee2mqtt")
    assert {m.topic for m in msgs} == {"zigbee2mqtt/living_room", "zigbee2mqtt/kitchen", "zigbee2mqtt/bedroom"}
    body = json.loads(msgs[0].payload)
    assert set(body) == {"temperature", "humidity", "pressure", "linkquality", "battery", "voltage"}
    assert 10 < body["temperature"] < 35 and 5 < body["humidity"] < 95 and 950 < body["pressure"] < 1050


def test_tasmota_devices_publish_bme280_telemetry(mosquitto):
    msgs = published(mosquitto, "tasmota")
    topics = {m.topic for m in msgs}
    assert len(topics) == DEVICES and all(t.startswith("tele/tasmota_") and t.endswith("/SENSOR") for t in topics)
    body = json.loads(msgs[0].payload)
    assert set(body) == {"Time", "BME280", "PressureUnit", "TempUnit"}
    assert body["PressureUnit"] == "hPa" and body["TempUnit"] == "C"
    dt.datetime.strptime(body["Time"], "%Y-%m-%dT%H:%M:%S")
    bme = body["BME280"]
    assert set(bme) == {"Temperature", "Humidity", "DewPoint", "Pressure"}
    assert bme["DewPoint"] == pytest.approx(dew_point(bme["Temperature"], bme["Humidity"]), abs=0.06)


def test_senml_packs_and_line_protocol(mosquitto):
    pack = json.loads(published(mosquitto, "senml")[0].payload)
    assert [r["n"] for r in pack] == ["temperature", "humidity", "pressure"]
    assert [r["u"] for r in pack] == ["Cel", "%RH", "hPa"]
    assert pack[0]["bn"].startswith("urn:dev:mac:") and isinstance(pack[0]["bt"], float)
    line = published(mosquitto, "influx", "--device-ids", "a-pi,b-pi,c-pi")[0]
    assert line.topic == "telegraf/a-pi/climate"
    measurement, fields, ts = line.payload.decode().split(" ")
    assert measurement.startswith("climate,host=a-pi,room=")
    assert [f.split("=")[0] for f in fields.split(",")] == ["temperature", "humidity", "pressure"]
    assert len(ts) == 19  # nanoseconds, as Telegraf writes them


def test_a_climate_format_refuses_flags_it_has_no_use_for(mosquitto):
    run = run_cli("devices", "simulate", "--broker", mosquitto.url, "--format", "tasmota", "--duration", "3")
    assert run.returncode != 0 and "--duration" in run.stderr
    run = run_cli("devices", "simulate", "--broker", mosquitto.url, "--format", "tasmota", "--rate", "0")
    assert run.returncode != 0 and "count" in run.stderr


def test_a_paced_run_keeps_readings_30_s_apart_on_the_ts_timeline(mosquitto):
    from edgeloop.devices.publisher import simulate_climate

    with Watcher(mosquitto.port, ["senml/#"]) as watcher:
        report = simulate_climate(mosquitto.url, "senml", n_devices=1, count=4, rate_hz=20.0, qos=1)
        eventually(lambda: len(watcher.messages()) >= 4, timeout=15, message="4 packs")
        times = [json.loads(m.payload)[0]["bt"] for m in watcher.messages()]
    assert report.total_sent == 4 and report.elapsed_s >= 3 / 20.0
    assert [round(b - a, 3) for a, b in zip(times, times[1:])] == [30.0, 30.0, 30.0]
    assert times[0] == pytest.approx(report.start_ts, abs=0.01)
