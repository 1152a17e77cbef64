"""Operations docs that cannot go stale: the config reference is generated, the metrics list is checked."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from edgeloop.bridge.app import Bridge
from edgeloop.bridge.config import load_bridge_config
from edgeloop.bridge.metrics import KNOWN as BRIDGE_KNOWN, BridgeCollector
from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import load_edge_config
from edgeloop.edge.metrics import KNOWN as EDGE_KNOWN, EdgeCollector

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS))
import gen_config_reference

sys.path.remove(str(DOCS))


def test_configuration_md_is_the_generators_output():
    committed = (DOCS / "configuration.md").read_text()
    assert committed == gen_config_reference.render(), "stale: run .venv/bin/python docs/gen_config_reference.py"


def test_configuration_md_names_every_leaf_key():
    text = (DOCS / "configuration.md").read_text()
    for key in ("metrics.port", "batching.max_batch", "pipelines[].model.num_threads", "influx.token",
                "mqtt.tls.ca_file", "input.queue_size", "status_interval_s"):
        assert f"`{key}`" in text, key
    # Machine-independent: no absolute paths, no host name.
    assert str(DOCS.parent) not in text


def exposition_names(collector_cls, component, known) -> set[str]:
    registry = CollectorRegistry()
    collector_cls(component.metrics_snapshot, component.cfg.node_id, registry)
    names = set()
    fixed = {name for name, _kind, _doc in known.values()}
    for family in registry.collect():
        if family.type == "info":
            names.add(f"{family.name}_info")
            continue
        # Families named in KNOWN, the histograms and the labelled families: not fallbacks for
        # counters someone added since (those are documented generically).
        if family.name in fixed or family.type == "histogram" or family.name.endswith(
                ("_rejected", "_dead_lettered", "_model_info", "_mqtt_connected", "_write_errors", "_stored_lag_seconds",
                 "_write_held")):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    for name, kind, _doc in known.values():
        names.add(name + ("_total" if kind == "counter" else ""))
    return names


def documented(section: str) -> set[str]:
    text = (DOCS / "operations.md").read_text()
    part = text.split(section, 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"^\| `(edgeloop_[a-z_]+)`", "|" + part, re.M))


def test_every_edge_metric_is_documented():
    app = EdgeApp(load_edge_config(None, {}))
    assert exposition_names(EdgeCollector, app, EDGE_KNOWN) == documented("Edge (`runtime/metrics.py`)")


def test_every_bridge_metric_is_documented():
    bridge = Bridge(load_bridge_config(None, {}))
    assert exposition_names(BridgeCollector, bridge, BRIDGE_KNOWN) == documented("Bridge (`cloud_bridge/metrics.py`)")
