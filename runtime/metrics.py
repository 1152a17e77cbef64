"""Prometheus metrics of the edge runtime (``metrics.enabled`` in edge.yaml).

Counters and levels are read from an ``EdgeSnapshot`` (the app's counters,
rejects by reason, loaded models, link state) when Prometheus scrapes; three
histograms are fed by the engine after each interpreter call through its
``on_batch`` hook (None, and so free, when metrics are off). The runtime
wires both (``EdgeApp.serve_metrics``): this module knows nothing of the app.

    edgeloop_edge_inference_seconds{model}     one interpreter call (a whole micro-batch)
    edgeloop_edge_batch_size{model}            windows per interpreter call
    edgeloop_edge_result_latency_seconds{model} reading received -> result ready, per result

The full list with help texts is in docs/operations.md (a test keeps it in step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily

from edgeloop.contract import ModelRef
from edgeloop.metrics import (
    ComponentCollector,
    MetricsServer,
    MetricsSettings,
    counter,
    counters_as_metrics,
    labelled_counter,
)

PREFIX = "edgeloop_edge"

#: counter key -> (metric name, type, help). Unknown keys are exported too (see counters_as_metrics).
KNOWN = {
    "readings_in": (f"{PREFIX}_readings", "counter", "sensor messages taken from the input queue"),
    "windows": (f"{PREFIX}_windows", "counter", "windows sent to a model"),
    "results_out": (f"{PREFIX}_results", "counter", "inference results produced for publishing"),
    "batches": (f"{PREFIX}_batches", "counter", "interpreter calls (micro-batches)"),
    "dropped_queue_full": (f"{PREFIX}_dropped_queue_full", "counter", "readings dropped because the input queue was full"),
    "queue_depth": (f"{PREFIX}_queue_depth", "gauge", "readings waiting in the input queue"),
    "reconnects": (f"{PREFIX}_mqtt_reconnects", "counter", "MQTT reconnections after the first connect"),
    "stream_restarts": (f"{PREFIX}_stream_restarts", "counter", "device streams that restarted at seq 0"),
    "stale_readings": (f"{PREFIX}_stale_readings", "counter", "repeated or older readings skipped (redelivery)"),
    "sequence_gaps": (f"{PREFIX}_sequence_gaps", "counter", "gaps in a stream's seq (lost readings)"),
    "streams_live": (f"{PREFIX}_streams_live", "gauge", "(device, sensor) streams with window state (max_streams per pipeline)"),
    "streams_expired": (f"{PREFIX}_streams_expired", "counter", "idle streams whose window state was forgotten (stream_idle_s)"),
    "invalid_outputs": (f"{PREFIX}_invalid_outputs", "counter", "model outputs that failed result validation"),
    # The disk outbox and at-least-once input (runtime/outbox.py, sender.py, inputacks.py).
    "outbox_depth": (f"{PREFIX}_outbox_depth", "gauge", "messages waiting in the disk outbox"),
    "outbox_bytes": (f"{PREFIX}_outbox_bytes", "gauge", "bytes of messages waiting in the disk outbox"),
    "outbox_inflight": (f"{PREFIX}_outbox_inflight", "gauge", "outbox messages published, waiting for the broker's ack"),
    "outbox_sent": (f"{PREFIX}_outbox_sent", "counter", "outbox messages published"),
    "outbox_acked": (f"{PREFIX}_outbox_acked", "counter", "outbox messages acknowledged by the broker and deleted"),
    "outbox_refused": (f"{PREFIX}_outbox_refused", "counter", "outbox messages the broker refused (dropped)"),
    "outbox_dropped_overflow": (f"{PREFIX}_outbox_dropped_overflow", "counter",
                                "oldest outbox messages dropped because the outbox was full"),
    "outbox_expired": (f"{PREFIX}_outbox_expired", "counter", "outbox messages deleted unsent because too old"),
    "outbox_replayed_at_start": (f"{PREFIX}_outbox_replayed_at_start", "counter",
                                 "messages found in the outbox at start and sent again"),
    "outbox_write_errors": (f"{PREFIX}_outbox_write_errors", "counter", "failed outbox appends (published directly)"),
    "input_held": (f"{PREFIX}_input_held", "gauge", "QoS 1 readings received but not yet acknowledged to the broker"),
    "input_released_early": (f"{PREFIX}_input_released_early", "counter",
                             "QoS 1 readings acknowledged before their result was durable (limits reached)"),
}
#: Kept in the dict for NodeStatus, exported with a reason label instead.
SKIP = ("rejected",)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


@dataclass(frozen=True)
class EdgeSnapshot:
    """What one scrape reports, read from the running edge."""

    counters: Mapping[str, int]
    rejected: Mapping[str, int]  # by reason
    dead_lettered: int
    models: Mapping[str, ModelRef]
    connected: bool


class EdgeCollector(ComponentCollector):
    """Reads an ``EdgeSnapshot`` at scrape time; owns the histograms the engine feeds."""

    def __init__(self, snapshot: Callable[[], EdgeSnapshot], node_id: str, registry: CollectorRegistry) -> None:
        per_model = partial(Histogram, labelnames=["model"], registry=registry)
        self.inference = per_model(f"{PREFIX}_inference_seconds", "interpreter call time per micro-batch",
                                   buckets=LATENCY_BUCKETS)
        self.batch_size = per_model(f"{PREFIX}_batch_size", "windows per interpreter call", buckets=BATCH_BUCKETS)
        self.latency = per_model(f"{PREFIX}_result_latency_seconds", "reading received -> result ready, per result",
                                 buckets=E2E_BUCKETS)
        super().__init__(snapshot, node_id, "edge", PREFIX, registry)

    def observe_batch(self, model: str, size: int, infer_s: float, latencies_s: list[float]) -> None:
        """The engine's ``on_batch`` hook (worker thread)."""
        self.inference.labels(model).observe(infer_s)
        self.batch_size.labels(model).observe(size)
        observe = self.latency.labels(model).observe
        for value in latencies_s:
            observe(value)

    def families(self, now: EdgeSnapshot):
        yield from counters_as_metrics(PREFIX, now.counters, KNOWN, SKIP)
        yield labelled_counter(f"{PREFIX}_rejected", "input rejected (and dead-lettered), by reason", "reason",
                               dict(now.rejected))
        yield counter(f"{PREFIX}_dead_lettered", "rejects published on deadletter/edge", now.dead_lettered)
        models = GaugeMetricFamily(f"{PREFIX}_model_info", "loaded models (value 1)", labels=["model", "version", "sha256"])
        for name, ref in sorted(now.models.items()):
            models.add_metric([name, ref.version, ref.sha256], 1)
        yield models


def serve_edge_metrics(settings: MetricsSettings, node_id: str, snapshot: Callable[[], EdgeSnapshot],
                       source: str = "edge config") -> tuple[MetricsServer, EdgeCollector] | None:
    """Start ``/metrics`` if ``settings`` enable it (None otherwise); the caller feeds ``observe_batch``."""
    if not settings.enabled:
        return None
    registry = CollectorRegistry(auto_describe=False)
    collector = EdgeCollector(snapshot, node_id, registry)
    return MetricsServer(registry, settings, source), collector
