"""Prometheus ``/metrics`` endpoint shared by the edge and the bridge.

Why this shape: the hot paths already keep plain integer counters
(``EdgeApp.counters()``, ``Bridge.stats()``); a custom collector turns them
into metrics when Prometheus scrapes, so serving metrics adds no cost per
message and no locking to the loops. Only histograms (latency, batch size)
are fed where the event happens. Each process gets its own
``CollectorRegistry`` (never the global one), so tests and benchmarks can run
several components in one interpreter.

The endpoint is off unless ``metrics.enabled`` is set: a device opens no port
it was not asked to, and several replicas on one host do not fight over a
port. It binds 127.0.0.1 unless told otherwise (``metrics.bind: 0.0.0.0`` in a
container that Prometheus scrapes from outside).

prometheus-client (the reference Python client) does the exposition format
and the HTTP server; this module only adds settings and error translation.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeloop import __version__
from edgeloop.errors import ConfigError

log = logging.getLogger(__name__)

EDGE_METRICS_PORT = 9108
BRIDGE_METRICS_PORT = 9109


class MetricsSettings(BaseModel):
    """Prometheus ``/metrics`` over HTTP; off by default (no open port unless asked)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="serve Prometheus metrics on http://{bind}:{port}/metrics")
    bind: str = Field(default="127.0.0.1", description="address to listen on; 0.0.0.0 to be scraped from other hosts")
    port: Annotated[int, Field(ge=1, le=65535)] = EDGE_METRICS_PORT

    @field_validator("bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address such as 127.0.0.1, 0.0.0.0 or ::, got {value!r}") from None
        return value


class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    def __init__(self, registry: CollectorRegistry, settings: MetricsSettings, source: str) -> None:
        self.registry = registry
        try:
            self._httpd, self._thread = start_http_server(settings.port, settings.bind, registry)
        except OSError as exc:
            raise ConfigError(
                source, [f"metrics.port: cannot listen on {settings.bind}:{settings.port}: {exc.strerror or exc}"]
            ) from None
        self.host, self.port = self._httpd.server_address[:2]
        log.info("metrics on http://%s:%d/metrics", settings.bind, self.port)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def counters_as_metrics(
    prefix: str, counters: dict[str, int], known: dict[str, tuple[str, str, str]], skip: Iterable[str] = ()
) -> list:
    """Map a dict of plain counters onto metric families.

    ``known[name] = (metric name, "counter" | "gauge", help)``. A counter some
    later change adds is still exported, as ``{prefix}_{name}_total`` (or a
    gauge when it is a ``*_depth`` / ``*_bytes`` level), so the endpoint does
    not go stale when the app grows a counter.
    """
    out = []
    skipped = set(skip)
    for key, value in counters.items():
        if key in skipped or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key in known:
            metric, kind, doc = known[key]
        elif key.endswith(("_depth", "_bytes", "_pending")):
            metric, kind, doc = f"{prefix}_{key}", "gauge", f"{key} (level, read at scrape time)"
        else:
            metric, kind, doc = f"{prefix}_{key}", "counter", f"{key} (since start)"
        out.append(counter(metric, doc, value) if kind == "counter" else gauge(metric, doc, value))
    return out



class ComponentCollector(Collector):
    """A component's metrics, read from its ``snapshot()`` at scrape time.

    Why a snapshot callable: the collector depends on a small value the
    component hands it, never on the component (no import circle). Subclasses
    yield their own families from ``families(snapshot)``; this adds what every
    component reports: the link state (``snapshot.connected``) and build info.
    It registers itself with ``registry``: subclasses make their histograms first.
    """

    def __init__(self, snapshot: Callable[[], Any], node_id: str, component: str, prefix: str,
                 registry: CollectorRegistry) -> None:
        self.snapshot = snapshot
        self.node_id = node_id
        self.component = component
        self.prefix = prefix
        registry.register(self)

    def families(self, snapshot: Any) -> Iterable:
        raise NotImplementedError

    def collect(self):
        now = self.snapshot()
        yield from self.families(now)
        yield gauge(f"{self.prefix}_mqtt_connected", "1 while connected to the broker", int(now.connected))
        info = InfoMetricFamily("edgeloop", "edgeloop build and node")
        info.add_metric([], {"version": __version__, "component": self.component, "node": self.node_id})
        yield info
