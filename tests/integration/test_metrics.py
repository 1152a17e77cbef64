"""Prometheus /metrics of the edge and the bridge, scraped over real HTTP while real traffic flows.

Edge: simulator readings -> mosquitto -> EdgeApp (metrics on) -> results; the scrape must show the
readings, results, rejects by reason, the histograms the engine feeds and the loaded model.
Bridge: results -> mosquitto -> Bridge (metrics on) -> influxd; the scrape must show written points,
the timed write requests and rejects by reason.
"""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

import edgeloop
from edgeloop.bridge.app import Bridge
from edgeloop.bridge.config import load_bridge_config
from edgeloop.devices.simulator import FleetSimulator
from edgeloop.edge.app import EdgeApp
from edgeloop.errors import ConfigError
from edgeloop.edge.config import load_edge_config
from lab.configs import SYNTHETIC_RESULTS
from lab.mqtt import close, connect, publish_all
from helpers import result_payload
from lab.servers import eventually, free_port, http

READINGS = 12  # per device: 11 windows each with the default window (size 128, hop 64, 64-sample chunks)
DEVICES = 2


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} from one real HTTP GET."""
    status, body = http("GET", url)
    assert status == 200, body[:200]
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_edge_metrics_scraped_over_http(mosquitto):
    port = free_port()
    cfg = load_edge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": "edge-metrics", "input": {"qos": 1},
        "metrics": {"enabled": True, "port": port},
    })
    app = EdgeApp(cfg)
    server = app.serve_metrics()
    assert server is not None and server.url == f"http://127.0.0.1:{port}/metrics"
    app.start()
    client = connect(mosquitto.port)
    try:
        sim = FleetSimulator(DEVICES, seed=5, sensors=("vibration",))
        readings = [(t, r.model_dump_json().encode()) for t, r in sim.readings(count=READINGS * DEVICES)]
        publish_all(client, readings + [("sensors/dev-bad/vibration", b"{not json")])
        expected = DEVICES * (READINGS - 1)
        eventually(lambda: app.counters()["results_out"] >= expected, timeout=20, message="edge results")
        samples = eventually(lambda: (s := scrape(server.url)) and
                             value(s, "edgeloop_edge_results_total") >= expected and s, timeout=10)
    finally:
        close(client)
        app.stop()
        server.close()

    assert value(samples, "edgeloop_edge_readings_total") == DEVICES * READINGS + 1
    assert value(samples, "edgeloop_edge_results_total") == expected
    assert value(samples, "edgeloop_edge_rejected_total", reason="malformed_json") == 1
    assert value(samples, "edgeloop_edge_dead_lettered_total") == 1
    assert value(samples, "edgeloop_edge_queue_depth") == 0
    assert value(samples, "edgeloop_edge_mqtt_connected") == 1
    batches = value(samples, "edgeloop_edge_batches_total")
    assert batches >= 1
    # Histograms fed by the engine's hook: one observation per interpreter call / per result.
    assert value(samples, "edgeloop_edge_inference_seconds_count", model="vibration_ae") == batches
    assert value(samples, "edgeloop_edge_batch_size_sum", model="vibration_ae") == expected
    assert value(samples, "edgeloop_edge_result_latency_seconds_count", model="vibration_ae") == expected
    assert value(samples, "edgeloop_edge_inference_seconds_sum", model="vibration_ae") > 0
    model = app.engine.models()["vibration_ae"]
    assert value(samples, "edgeloop_edge_model_info", model="vibration_ae", version=model.version,
                 sha256=model.sha256) == 1
    assert value(samples, "edgeloop_info", version=edgeloop.__version__,
                 component="edge", node="edge-metrics") == 1
    # close() really closed the port.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_bridge_metrics_scraped_over_http(mosquitto, influx_db, unique_id):
    influx, db = influx_db
    port = free_port()
    cfg = load_bridge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": f"bridge-{unique_id}",
        "influx": {"api": "v1", "url": influx.url, "db": db, "flush_interval_ms": 50},
        "metrics": {"enabled": True, "port": port},
        **SYNTHETIC_RESULTS,
    })
    bridge = Bridge(cfg)
    server = bridge.serve_metrics()
    bridge.start()
    client = connect(mosquitto.port)
    results = [(f"results/dev-{i}/m1", result_payload(f"dev-{i}", seq=i, sensor="vibration")) for i in range(5)]
    try:
        publish_all(client, results + [("results/dev-x/m1", b"[1,2")])
        eventually(lambda: bridge.stats()["points_written"] >= 5, timeout=10, message="points written")
        samples = eventually(lambda: (s := scrape(server.url)) and
                             value(s, "edgeloop_bridge_points_written_total") >= 5 and s, timeout=10)
    finally:
        close(client)
        bridge.stop()
        server.close()

    # 5 results; the bridge's own birth status may be written too.
    assert value(samples, "edgeloop_bridge_results_total") == 5
    assert value(samples, "edgeloop_bridge_rejected_total", reason="malformed_json") == 1
    assert value(samples, "edgeloop_bridge_queue_depth") == 0
    writes = value(samples, "edgeloop_bridge_write_seconds_count", outcome="ok")
    assert writes == value(samples, "edgeloop_bridge_batches_total") >= 1
    assert value(samples, "edgeloop_bridge_write_points_sum") == value(samples, "edgeloop_bridge_points_written_total")
    assert value(samples, "edgeloop_bridge_write_retries_total") == 0
    assert ("edgeloop_bridge_stored_lag_seconds", (("quantile", "0.5"),)) in samples
    assert len(influx.points('SELECT "score" FROM "inference"', db)) == 5


def test_bridge_metrics_show_a_held_batch_and_its_cause(mosquitto, influx_db, unique_id):
    influx, db = influx_db
    cfg = load_bridge_config(None, {
        "mqtt": {"url": mosquitto.url}, "node_id": f"bridge-{unique_id}",
        "influx": {"api": "v1", "url": influx.url, "db": db, "flush_interval_ms": 50, "retry_max_s": 0.5},
        "metrics": {"enabled": True, "port": free_port()},
        **SYNTHETIC_RESULTS,
    })
    bridge = Bridge(cfg)
    server = bridge.serve_metrics()
    bridge.start()
    client = connect(mosquitto.port)
    try:
        eventually(lambda: bridge.stats()["settled"] >= 1, timeout=10, message="birth status written")
        influx.query(f'DROP DATABASE "{db}"')
        publish_all(client, [("status/edge-held", b'{"node": "edge-held", "state": "online", "ts": 1790000000.0}')])
        held = eventually(lambda: (s := scrape(server.url)) and
                          s.get(("edgeloop_bridge_write_held", (("cause", "not_found"),))) == 1 and s, timeout=15)
        assert value(held, "edgeloop_bridge_held_points") == 1 and value(held, "edgeloop_bridge_held_seconds") > 0
        assert value(held, "edgeloop_bridge_write_errors_total", kind="not_found") >= 1
        influx.create_database(db)
        after = eventually(lambda: (s := scrape(server.url)) and value(s, "edgeloop_bridge_held_points") == 0 and s,
                           timeout=15)
        assert not any(name == "edgeloop_bridge_write_held" for name, _ in after)
    finally:
        close(client)
        bridge.stop()
        server.close()


def test_metrics_are_off_by_default_and_a_taken_port_is_a_config_error(mosquitto):
    cfg = load_edge_config(None, {"mqtt": {"url": mosquitto.url}})
    assert cfg.metrics.enabled is False and cfg.metrics.bind == "127.0.0.1"
    assert load_bridge_config(None, {}).metrics.enabled is False
    assert EdgeApp(cfg).serve_metrics() is None

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = load_edge_config(None, {"mqtt": {"url": mosquitto.url}, "metrics": {"enabled": True, "port": port}})
        with pytest.raises(ConfigError, match=rf"metrics.port: cannot listen on 127.0.0.1:{port}"):
            EdgeApp(busy).serve_metrics("edge.yaml")


def test_metrics_bind_must_be_an_ip_address():
    with pytest.raises(ConfigError, match="metrics.bind"):
        load_edge_config(None, {"metrics": {"bind": "localhost:9100"}})
