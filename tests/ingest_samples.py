"""Payloads as the projects document them, for the ingest tests (unit and integration).

Sources (captured with their exact shape; values varied per message by the tests):
- Zigbee2MQTT, "MQTT Topics and Messages" (zigbee2mqtt.io/guide/usage/mqtt_topics_and_messages.html):
  ``zigbee2mqtt/FRIENDLY_NAME`` carries the device state as a JSON object, e.g. the Xiaomi
  WSDCGQ01LM ``{"temperature": 27.34, "humidity": 44.72}``; a WSDCGQ11LM (with pressure) as
  logged by Zigbee2MQTT 1.6: ``{"temperature":22.75,"linkquality":97,"humidity":55.43,
  "pressure":1000.6,"battery":86,"voltage":2995}``.
- Tasmota telemetry on ``tele/<topic>/SENSOR`` every TelePeriod: a BME280
  ``{"Time":"2019-05-10T12:37:01","BME280":{"Temperature":16.6,"Humidity":63.9,"Pressure":1001.8},
  "PressureUnit":"hPa","TempUnit":"C"}`` and an energy monitor ``{"Time":"2022-01-11T21:57:38",
  "ENERGY":{"TotalStartTime":"2020-10-21T22:15:00","Total":3.705,...,"Power":5,...,"Voltage":233,
  "Current":0.021}}``; ``Time`` is the device's local time without zone.
- Home Assistant MQTT Statestream (home-assistant.io/integrations/mqtt_statestream): topic
  ``base_topic/domain/entity/state``; "All states and attributes are passed through JSON
  serialization before publishing", so a sensor's state 21.5 arrives as ``"21.5"`` (quoted).
"""

from __future__ import annotations

import json

Z2M_WSDCGQ01LM = {"temperature": 27.34, "humidity": 44.72}
Z2M_WSDCGQ11LM = {"temperature": 22.75, "linkquality": 97, "humidity": 55.43, "pressure": 1000.6, "battery": 86,
                  "voltage": 2995}
TASMOTA_BME280 = {"Time": "2019-05-10T12:37:01", "BME280": {"Temperature": 16.6, "Humidity": 63.9, "Pressure": 1001.8},
                  "PressureUnit": "hPa", "TempUnit": "C"}
TASMOTA_ENERGY = {"Time": "2022-01-11T21:57:38",
                  "ENERGY": {"TotalStartTime": "2020-10-21T22:15:00", "Total": 3.705, "Yesterday": 0.028, "Today": 0.026,
                             "Period": 1, "Power": 5, "ApparentPower": 5, "ReactivePower": 0, "Factor": 1.00,
                             "Voltage": 233, "Current": 0.021}}
STATESTREAM_SENSOR = b'"21.5"'
STATESTREAM_UNAVAILABLE = b'"unavailable"'


def z2m(i: int) -> bytes:
    """The WSDCGQ11LM message, its climate values moving a little per message."""
    return json.dumps({**Z2M_WSDCGQ11LM, "temperature": 22.75 + 0.05 * i, "humidity": 55.43 - 0.1 * i,
                       "pressure": 1000.6 + 0.01 * i}).encode()


def tasmota(i: int, time: str = "2026-11-30T05:00:00") -> bytes:
    """The BME280 telemetry, ``Time`` as given (the device's local time, no zone)."""
    values = {"Temperature": 16.6 + 0.1 * i, "Humidity": 63.9 - 0.1 * i, "Pressure": 1001.8 + 0.01 * i}
    return json.dumps({**TASMOTA_BME280, "Time": time, "BME280": values}).encode()


def statestream(i: int) -> bytes:
    return json.dumps(str(round(21.5 + 0.1 * i, 2))).encode()
