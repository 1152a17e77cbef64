"""Climate readings as the devices people already have publish them (topic, payload bytes).

Why: the ingest examples (examples/ingest/) and their end-to-end tests need
traffic shaped like a real fleet's, not edgeloop's own contract. The shapes
follow the projects' documentation:

  zigbee2mqtt  ``zigbee2mqtt/<friendly_name>``
               ``{"temperature":21.53,"humidity":45.12,"pressure":1013.2,"linkquality":120,"battery":97,"voltage":3005}``
               (a Zigbee2MQTT device's exposes as published; no timestamp: the edge uses arrival time)
  tasmota      ``tele/<topic>/SENSOR`` (Tasmota's default topic ``tasmota_XXXXXX``, the MAC's last 6 hex digits)
               ``{"Time":"2026-11-30T10:00:00","BME280":{"Temperature":21.5,"Humidity":45.1,"DewPoint":9.1,
               "Pressure":1013.2},"PressureUnit":"hPa","TempUnit":"C"}`` (TelePeriod telemetry; ``Time`` is the
               device's local time without zone, here UTC; one decimal, Tasmota's default TempRes/HumRes/PressRes)
  senml        ``senml/<name>``: an RFC 8428 pack, base name ``urn:dev:mac:<eui64>:``, base time, one record per
               quantity: ``[{"bn":"urn:dev:mac:0024befffe804ff1:","bt":1.7e9,"n":"temperature","u":"Cel","v":21.53},
               {"n":"humidity","u":"%RH","v":45.12},{"n":"pressure","u":"hPa","v":1013.2}]``
  influx       ``telegraf/<host>/climate`` (Telegraf's MQTT output topic ``telegraf/{{ .Hostname }}/{{ .PluginName }}``)
               ``climate,host=<host>,room=<room> temperature=21.53,humidity=45.12,pressure=1013.2 <ns>``

Sparkplug B is not here: its messages in tests come from a third-party
Sparkplug library (issue 10), not from edgeloop's own encoder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math

FORMATS = ("zigbee2mqtt", "tasmota", "senml", "influx")


def _hexid(name: str, n: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:n]


def device_names(fmt: str, rooms: list[str]) -> list[str]:
    """What each format's devices are called: Zigbee2MQTT friendly names and Telegraf hosts are given by
    people (``living_room``), Tasmota's default topic is ``tasmota_`` + 6 hex digits of the MAC."""
    if fmt == "tasmota":
        return [f"tasmota_{_hexid(r, 6).upper()}" for r in rooms]
    if fmt == "influx":
        return [f"{r.replace('_', '-')}-pi" for r in rooms]
    return list(rooms)


def topic_for(fmt: str, name: str) -> str:
    return {"zigbee2mqtt": f"zigbee2mqtt/{name}", "tasmota": f"tele/{name}/SENSOR",
            "senml": f"senml/{name}", "influx": f"telegraf/{name}/climate"}[fmt]


def dew_point(temp_c: float, humidity: float) -> float:
    """Magnus formula (what Tasmota reports as DewPoint)."""
    a, b = 17.62, 243.12
    g = math.log(max(humidity, 0.1) / 100.0) + a * temp_c / (b + temp_c)
    return b * g / (a - g)


def climate_message(fmt: str, name: str, room: str, seq: int, ts: float,
                    values: tuple[float, float, float]) -> tuple[str, bytes]:
    """One reading (temperature C, humidity %RH, pressure hPa) of device ``name`` in format ``fmt``."""
    temp, hum, press = values
    if fmt == "zigbee2mqtt":
        body: object = {"temperature": temp, "humidity": hum, "pressure": press,
                        "linkquality": 90 + (seq * 7 + len(name)) % 80, "battery": 97 - seq // 500 % 50,
                        "voltage": 3005 - seq // 500 % 200}
    elif fmt == "tasmota":
        t1, h1 = round(temp, 1), round(hum, 1)
        body = {"Time": dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                "BME280": {"Temperature": t1, "Humidity": h1, "DewPoint": round(dew_point(t1, h1), 1),
                           "Pressure": round(press, 1)},
                "PressureUnit": "hPa", "TempUnit": "C"}
    elif fmt == "senml":
        body = [{"bn": f"urn:dev:mac:{_hexid(name, 16)}:", "bt": round(ts, 3), "n": "temperature", "u": "Cel",
                 "v": temp},
                {"n": "humidity", "u": "%RH", "v": hum},
                {"n": "pressure", "u": "hPa", "v": press}]
    elif fmt == "influx":
        line = (f"climate,host={name},room={room} temperature={temp!r},humidity={hum!r},pressure={press!r} "
                f"{round(ts * 1e9)}")
        return topic_for(fmt, name), line.encode()
    else:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return topic_for(fmt, name), json.dumps(body, separators=(",", ":")).encode()
