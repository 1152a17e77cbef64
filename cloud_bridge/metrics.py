"""Prometheus metrics of the bridge (``metrics.enabled`` in bridge.yaml).

Counters are read from ``Bridge.stats()`` when Prometheus scrapes. The write
latency and batch-size histograms are fed by a thin wrapper around the sink
(``TimedSink``), so the writer and its retry policy stay untouched: every
attempt is timed, including the ones that fail and are retried, with the
outcome as a label.

    edgeloop_bridge_write_seconds{outcome}   one sink.write() call (one HTTP request)
    edgeloop_bridge_write_points              lines per write attempt

The full list with help texts is in docs/operations.md.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from edgeloop import __version__
from edgeloop.metrics import MetricsServer, counters_as_metrics, gauge, labelled_counter

from edgeloop.bridge.sinks import Sink, make_sink

if TYPE_CHECKING:
    from edgeloop.bridge.app import Bridge

PREFIX = "edgeloop_bridge"

KNOWN = {
    "received": (f"{PREFIX}_received", "counter", "MQTT messages received"),
    "queue_depth": (f"{PREFIX}_queue_depth", "gauge", "messages waiting for the writer"),
    "dropped_queue_full": (f"{PREFIX}_dropped_queue_full", "counter", "messages dropped because the queue stayed full"),
    "messages": (f"{PREFIX}_messages", "counter", "messages handled by the writer"),
    "results": (f"{PREFIX}_results", "counter", "inference results decoded"),
    "statuses": (f"{PREFIX}_statuses", "counter", "node status messages decoded"),
    "ignored_empty_status": (f"{PREFIX}_ignored_empty_status", "counter", "cleared retained statuses ignored"),
    "points_written": (f"{PREFIX}_points_written", "counter", "points the database accepted"),
    "points_refused": (f"{PREFIX}_points_refused", "counter", "points the database refused (partial write)"),
    "points_dropped": (f"{PREFIX}_points_dropped", "counter", "points dropped after a fatal write error"),
    "given_up_at_stop": (f"{PREFIX}_given_up_at_stop", "counter", "messages not written when the drain deadline passed"),
    "batches": (f"{PREFIX}_batches", "counter", "batches written"),
    "retries": (f"{PREFIX}_write_retries", "counter", "write attempts retried (throttled or unavailable)"),
    "dead_lettered": (f"{PREFIX}_dead_lettered", "counter", "rejects published on deadletter/bridge"),
    "settled": (f"{PREFIX}_settled", "counter", "messages done with (written, refused or given up)"),
    "mqtt_reconnects": (f"{PREFIX}_mqtt_reconnects", "counter", "MQTT reconnections after the first connect"),
}

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
POINTS_BUCKETS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000)


class TimedSink:
    """A Sink that times each write; everything else passes through."""

    def __init__(self, sink: Sink, seconds: Histogram, points: Histogram) -> None:
        self.sink = sink
        self._seconds = seconds
        self._points = points

    def write(self, lines: list[str]) -> None:
        self._points.observe(len(lines))
        started = time.perf_counter()
        outcome = "ok"
        try:
            self.sink.write(lines)
        except Exception as exc:
            outcome = type(exc).__name__.lower()
            raise
        finally:
            self._seconds.labels(outcome).observe(time.perf_counter() - started)

    def close(self) -> None:
        self.sink.close()

    def __getattr__(self, name: str):
        return getattr(self.sink, name)


class BridgeCollector(Collector):
    def __init__(self, bridge: Bridge, registry: CollectorRegistry) -> None:
        self.bridge = bridge
        self.write_seconds = Histogram(
            f"{PREFIX}_write_seconds", "one database write request, by outcome", ["outcome"],
            buckets=WRITE_BUCKETS, registry=registry,
        )
        self.write_points = Histogram(
            f"{PREFIX}_write_points", "lines per database write request", buckets=POINTS_BUCKETS, registry=registry
        )
        registry.register(self)

    def collect(self):
        stats = self.bridge.stats()
        yield from counters_as_metrics(PREFIX, stats, KNOWN)
        yield labelled_counter(f"{PREFIX}_write_errors", "failed write attempts, by kind", "kind", stats["write_errors"])
        yield labelled_counter(f"{PREFIX}_rejected", "messages rejected (and dead-lettered), by reason", "reason",
                               stats["rejected"])
        lag = GaugeMetricFamily(
            f"{PREFIX}_stored_lag_seconds", "device time -> stored, over the last results", labels=["quantile"]
        )
        for key, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
            if key in stats["stored_lag_ms"]:
                lag.add_metric([quantile], stats["stored_lag_ms"][key] / 1000.0)
        yield lag
        yield gauge(f"{PREFIX}_mqtt_connected", "1 while connected to the broker",
                    int(self.bridge._link.connected.is_set()))
        info = InfoMetricFamily("edgeloop", "edgeloop build and node")
        info.add_metric([], {"version": __version__, "component": "bridge", "node": self.bridge.cfg.node_id})
        yield info


def serve_bridge_metrics(bridge: Bridge, source: str = "bridge config") -> MetricsServer | None:
    """Start ``/metrics`` for ``bridge`` if its config enables it; call before ``bridge.start()``.

    Wraps the bridge's sink in a TimedSink (the sink seam of ``Bridge``), so write latency is measured.
    """
    settings = bridge.cfg.metrics
    if not settings.enabled:
        return None
    registry = CollectorRegistry(auto_describe=False)
    collector = BridgeCollector(bridge, registry)
    bridge._sink = TimedSink(bridge._sink or make_sink(bridge.cfg), collector.write_seconds, collector.write_points)
    return MetricsServer(registry, settings, source)
