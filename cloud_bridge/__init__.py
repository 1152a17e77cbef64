"""edgeloop cloud bridge: MQTT results and node status -> validated -> InfluxDB.

Public API (the modules themselves are implementation detail)::

    cfg = load_bridge_config("bridge.yaml", overrides={})   # ConfigError names file + field
    bridge = Bridge(cfg); bridge.start(); ...; bridge.stop()  # stop() drains
    run_bridge(cfg, stop_event) -> int                       # for the CLI

Imports only the core (``edgeloop.contract``, ``edgeloop.mqtt``, ...), never the edge
(never numpy or an interpreter); influxdb-client/urllib3 for the sinks.
"""

from edgeloop.bridge.app import Bridge, run_bridge
from edgeloop.bridge.config import BridgeConfig, InfluxSettings, Measurements, load_bridge_config
from edgeloop.bridge.errors import Fatal, PartialWrite, SinkError, Throttled, Unavailable
from edgeloop.bridge.schema import LineEncoder, result_line, status_line
from edgeloop.bridge.sinks import InfluxV1Sink, InfluxV2Sink, make_sink

__all__ = [
    "Bridge",
    "BridgeConfig",
    "Fatal",
    "InfluxSettings",
    "InfluxV1Sink",
    "InfluxV2Sink",
    "LineEncoder",
    "Measurements",
    "PartialWrite",
    "SinkError",
    "Throttled",
    "Unavailable",
    "load_bridge_config",
    "make_sink",
    "result_line",
    "run_bridge",
    "status_line",
]
