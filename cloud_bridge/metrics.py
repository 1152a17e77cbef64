"""Prometheus metrics of the bridge (``metrics.enabled`` in bridge.yaml).

Counters are read from a ``BridgeSnapshot`` (the bridge's stats and link
state) when Prometheus scrapes. The write latency and batch-size histograms
are fed by a thin wrapper around the sink (``TimedSink``), so the writer and
its retry policy stay untouched: every attempt is timed, including the ones
that fail and are retried, with the outcome as a label. The bridge wires
both (``Bridge.serve_metrics``): this module knows nothing of the app.

    edgeloop_bridge_write_seconds{outcome}   one sink.write() call (one HTTP request)
    edgeloop_bridge_write_points              lines per write attempt

The full list with help texts is in docs/operations.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily

from edgeloop.metrics import ComponentCollector, MetricsServer, MetricsSettings, counters_as_metrics, labelled_counter

from edgeloop.bridge.sinks import Sink

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
    "points_refused": (f"{PREFIX}_points_refused", "counter", "points the database refused (dead-lettered)"),
    "points_unconfirmed": (f"{PREFIX}_points_unconfirmed", "counter",
                           "points of a partial write the server did not say it stored (dead-lettered, counted lost)"),
    "points_dropped": (f"{PREFIX}_points_dropped", "counter",
                       "points of a sink error (dead-lettered) or of a batch given up at stop (redelivered)"),
    "probe_writes": (f"{PREFIX}_probe_writes", "counter", "extra requests spent finding the points a partial write refused"),
    "held_points": (f"{PREFIX}_held_points", "gauge",
                    "points held unacknowledged because the database refuses writes as configured"),
    "held_for_s": (f"{PREFIX}_held_seconds", "gauge", "how long the current batch has been held (0: none)"),
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


@dataclass(frozen=True)
class BridgeSnapshot:
    """What one scrape reports, read from the running bridge."""

    stats: Mapping[str, Any]  # Bridge.stats()
    connected: bool


class BridgeCollector(ComponentCollector):
    """Reads a ``BridgeSnapshot`` at scrape time; owns the write histograms its ``TimedSink`` feeds."""

    def __init__(self, snapshot: Callable[[], BridgeSnapshot], node_id: str, registry: CollectorRegistry) -> None:
        self.write_seconds = Histogram(f"{PREFIX}_write_seconds", "one database write request, by outcome",
                                       ["outcome"], buckets=WRITE_BUCKETS, registry=registry)
        self.write_points = Histogram(f"{PREFIX}_write_points", "lines per database write request",
                                      buckets=POINTS_BUCKETS, registry=registry)
        super().__init__(snapshot, node_id, "bridge", PREFIX, registry)

    def timed(self, sink: Sink) -> TimedSink:
        """``sink`` with every write timed into this collector's histograms."""
        return TimedSink(sink, self.write_seconds, self.write_points)

    def families(self, now: BridgeSnapshot):
        stats = now.stats
        yield from counters_as_metrics(PREFIX, stats, KNOWN)
        yield labelled_counter(f"{PREFIX}_write_errors", "failed write attempts, by kind", "kind", stats["write_errors"])
        held = GaugeMetricFamily(f"{PREFIX}_write_held",
                                 "1 while writes are held on a config, credential or database problem, by cause",
                                 labels=["cause"])
        if stats.get("held_cause"):
            held.add_metric([stats["held_cause"]], 1)
        yield held
        yield labelled_counter(f"{PREFIX}_rejected", "messages rejected (and dead-lettered), by reason", "reason",
                               stats["rejected"])
        lag = GaugeMetricFamily(
            f"{PREFIX}_stored_lag_seconds", "device time -> stored, over the last results", labels=["quantile"]
        )
        for key, quantile in (("p50", "0.5"), ("p99", "0.99"), ("max", "1")):
            if key in stats["stored_lag_ms"]:
                lag.add_metric([quantile], stats["stored_lag_ms"][key] / 1000.0)
        yield lag


def serve_bridge_metrics(settings: MetricsSettings, node_id: str, snapshot: Callable[[], BridgeSnapshot],
                         source: str = "bridge config") -> tuple[MetricsServer, BridgeCollector] | None:
    """Start ``/metrics`` if ``settings`` enable it (None otherwise); the caller times its sink with
    ``collector.timed``."""
    if not settings.enabled:
        return None
    registry = CollectorRegistry(auto_describe=False)
    collector = BridgeCollector(snapshot, node_id, registry)
    return MetricsServer(registry, settings, source), collector
