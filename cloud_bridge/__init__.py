"""edgeloop cloud bridge: MQTT results and node status -> validated -> InfluxDB.

Public API (the modules themselves are implementation detail)::

    cfg = load_bridge_config("bridge.yaml", overrides={})   # ConfigError names file + field
    bridge = Bridge(cfg); bridge.start(); ...; bridge.stop()  # stop() drains
    run_bridge(cfg, stop_event) -> int                       # for the CLI

Imports only the core (``edgeloop.contract``, ``edgeloop.mqtt``, ...), never the edge
(never numpy or an interpreter); influxdb-client/urllib3 for the sinks.
"""

import importlib
from typing import Any

# Imported on first use (PEP 562): the bridge's command registration (edgeloop.bridge.cli) imports this
# package, and must not pull paho, urllib3 or influxdb-client in to list its commands.
_EXPORTS = {
    "Bridge": "app", "run_bridge": "app",
    "BridgeConfig": "config", "InfluxSettings": "config", "Measurements": "config", "load_bridge_config": "config",
    "InfluxSetupError": "errors", "Misconfigured": "errors", "PartialWrite": "errors", "SinkError": "errors",
    "Throttled": "errors", "TooLarge": "errors", "Unavailable": "errors",
    "LineEncoder": "schema", "result_line": "schema", "status_line": "schema",
    "InfluxV1Sink": "sinks", "InfluxV2Sink": "sinks", "make_sink": "sinks",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "Bridge",
    "BridgeConfig",
    "InfluxSettings",
    "InfluxSetupError",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "LineEncoder",
    "Measurements",
    "Misconfigured",
    "PartialWrite",
    "SinkError",
    "Throttled",
    "TooLarge",
    "Unavailable",
    "load_bridge_config",
    "make_sink",
    "result_line",
    "run_bridge",
    "status_line",
]
