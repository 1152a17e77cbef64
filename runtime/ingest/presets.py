"""Presets: one line (``input: {preset: zigbee2mqtt}``) for an ecosystem's topic and payload.

A preset is a partial ``input:`` section (topic template, codec and mapping); the
user's own keys beside ``preset`` override it. The exact topics and payloads each
accepts are in docs/ingest.md, with tests built from the projects' documentation.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Zigbee2MQTT publishes each device's state as one JSON object on zigbee2mqtt/<friendly name>;
    # no device time, no counter. Default mapping: a climate sensor (e.g. Aqara WSDCGQ11LM).
    "zigbee2mqtt": {
        "topic": "zigbee2mqtt/{device}",
        "codec": "json",
        "fields": ["temperature", "humidity", "pressure"],
    },
    # Tasmota's telemetry every TelePeriod on tele/<topic>/SENSOR, with "Time" in the device's
    # local time without zone; read in the edge host's zone (set `timezone:` if they differ).
    "tasmota": {
        "topic": "tele/{device}/SENSOR",
        "codec": "json",
        "fields": ["BME280.Temperature", "BME280.Humidity", "BME280.Pressure"],
        "timestamp": "Time",
        "timestamp_format": "iso8601",
        "timezone": "local",
    },
    # Home Assistant's mqtt_statestream: each entity's state, a bare value, on
    # <base_topic>/<domain>/<object_id>/state (base_topic homeassistant here).
    "homeassistant-statestream": {
        "topic": "homeassistant/{domain}/{device}/state",
        "codec": "json",
    },
}


def expand_preset(value: Any) -> Any:
    """``{preset: NAME, **keys}`` -> the preset's keys updated with ``keys``; anything else unchanged."""
    if not isinstance(value, dict) or "preset" not in value:
        return value
    name = value["preset"]
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r} (known: {', '.join(sorted(PRESETS))})")
    user = {k: v for k, v in value.items() if k != "preset"}
    return {**PRESETS[name], **user}
