"""Test-side name for the local server launchers (they live in the package for the demo and benchmarks)."""

from runtime.common.localservers import (  # noqa: F401
    InfluxDB1,
    Mosquitto,
    VictoriaMetrics,
    eventually,
    free_port,
    http,
)
