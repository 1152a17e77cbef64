"""Every query of the committed Grafana dashboards, run against a real InfluxDB 1.x filled by the real loop.

simulated devices -> mosquitto -> EdgeApp (bundled model) -> mosquitto -> Bridge -> influxd, plus loop
events written with the deployer's own line encoder (edgeloop.bridge.events). While everything is still
running (so nodes are online, as when someone looks at the dashboards), each panel, variable and
annotation query is taken from docker/grafana/dashboards/*.json, its template variables and time range
are substituted the way Grafana's InfluxDB datasource does, and it is run through InfluxDB's /query.
A query that errors, or that returns no value, fails the test: the dashboards cannot drift from the
schema of cloud_bridge/schema.py.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from edgeloop.bridge.app import Bridge
from edgeloop.bridge.config import load_bridge_config
from edgeloop.bridge.events import event_line
from edgeloop.devices.publisher import simulate
from edgeloop.edge.app import EdgeApp
from edgeloop.mqtt import MqttLink, MqttSettings
from edgeloop.edge.config import load_edge_config
from edgeloop.contract import ModelRef, NodeStatus, status_topic
from lab.servers import eventually

DASHBOARDS = Path(__file__).resolve().parents[2] / "docker" / "grafana" / "dashboards"
DEVICES = 3
READINGS = 40  # per device, both sensors: ~20 vibration readings -> ~19 windows per device
SITE = "plant-1"
INTERVAL_MS = 1000

# ----------------------------------------------------------------------------- Grafana's interpolation


def escape_regex(value: str) -> str:
    """Grafana's escapeRegex (packages/grafana-data/src/text/string.ts)."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def format_variable(var: dict, selected: list[str] | str) -> str:
    """What the InfluxDB datasource's interpolateQueryExpr puts in place of ``$var``."""
    if selected == "$__all":
        return var["allValue"] if var.get("allValue") else format_variable(var, var["_options"])
    values = [selected] if isinstance(selected, str) else selected
    if not var.get("multi") and not var.get("includeAll"):
        return values[0]
    escaped = [escape_regex(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(query: str, variables: dict[str, dict], selection: dict[str, object], t_from: int, t_to: int) -> str:
    time_filter = f"time >= {t_from}ms and time <= {t_to}ms"
    out = (
        query.replace("$timeFilter", time_filter)
        .replace("$__timeFilter", time_filter)
        .replace("$__interval_ms", str(INTERVAL_MS))
        .replace("$__interval", f"{INTERVAL_MS}ms")
        .replace("$__from", str(t_from))
        .replace("$__to", str(t_to))
    )
    for name in sorted(variables, key=len, reverse=True):
        value = format_variable(variables[name], selection[name])
        out = re.sub(r"\$\{" + name + r"\}|\$" + name + r"(?![A-Za-z0-9_])", lambda _m, v=value: v, out)
    leftover = re.findall(r"\$\{?[A-Za-z_][A-Za-z0-9_]*", out)
    assert not leftover, f"unsubstituted variables {leftover} in {out}"
    return out


# ----------------------------------------------------------------------------- dashboard JSON


def load_dashboards() -> dict[str, dict]:
    found = {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}
    assert set(found) == {"fleet.json", "device.json", "model.json"}, found.keys()
    return found


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target.get("rawQuery") is True, (panel["title"], target)
            out.append((f"panel {panel['title']!r} {target['refId']}", target["query"]))
    return out


def annotation_queries(dashboard: dict) -> list[tuple[str, dict]]:
    return [(f"annotation {a['name']!r}", a["target"]) for a in dashboard["annotations"]["list"]
            if a["datasource"]["type"] == "influxdb"]


def has_values(response: dict) -> bool:
    """At least one row with a non-null value besides the time column."""
    for result in response.get("results", []):
        for series in result.get("series", []):
            columns = series["columns"]
            for row in series.get("values", []):
                if any(v is not None for c, v in zip(columns, row) if c != "time"):
                    return True
    return False


def run(influx, db: str, query: str) -> dict:
    return influx.query(query, db)  # raises on an HTTP error or an "error" in any statement


# ----------------------------------------------------------------------------- the loop, filled once


@pytest.fixture(scope="module")
def filled(tmp_path_factory, influxdb):
    from lab.servers import Mosquitto

    db = "dashboards"
    influxdb.create_database(db)
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    t_from = int(time.time() * 1000) - 60_000
    bridge = Bridge(load_bridge_config(None, {
        "mqtt": {"url": broker.url},
        "influx": {"api": "v1", "url": influxdb.url, "db": db, "flush_interval_ms": 100},
    }))
    bridge.start()
    edge = EdgeApp(load_edge_config(None, {
        "mqtt": {"url": broker.url}, "node_id": "edge-a", "site": SITE, "status_interval_s": 1,
        "input": {"qos": 1},
    }))
    edge.start()
    other = MqttLink(MqttSettings(url=broker.url), client_id="test-second-node")
    try:
        report = simulate(broker.url, n_devices=DEVICES, rate_hz=0, count=READINGS, seed=4, anomaly_rate=0.05, qos=1)
        vibration = report.sent_by_sensor()["vibration"]
        # Bad input: counted by the edge (``rejected`` in its status) and dead-lettered.
        publisher = MqttLink(MqttSettings(url=broker.url), client_id="test-bad-input")
        publisher.start()
        for info in [publisher.publish(f"sensors/dev-00{i}/vibration", b"{broken", qos=1) for i in range(2)]:
            assert info.wait(10)
        publisher.stop()
        # A second edge node, as one with the disk outbox reports it: outbox counters in its status.
        other.start()
        sha = edge.engine.models()["vibration_ae"].sha256
        other.publish(status_topic("edge-b"), NodeStatus(
            node="edge-b", state="online", ts=time.time(), site="plant-2", runtime_version="0.1.0",
            models={"vibration_ae": ModelRef(version="1.0.0", sha256=sha)},
            counters={"readings_in": 10, "results_out": 9, "rejected": 0, "queue_depth": 0, "reconnects": 2,
                      "dropped_queue_full": 0, "outbox_depth": 42, "outbox_dropped_overflow": 0},
        ).model_dump_json().encode(), qos=1).wait(10)
        # Loop events, encoded by the same code the deployer and the drift monitor use.
        lines = [
            event_line("vibration_ae", kind, f"{kind} of vibration_ae", version, ts=time.time() - 30 + i)
            for i, (kind, version) in enumerate(
                [("drift", "1.0.0"), ("retrain", "1.1.0"), ("deploy", "1.1.0"), ("refused", "1.2.0"),
                 ("rollback", "1.0.0")])
        ]
        influxdb.write("\n".join(lines), db)

        windows = vibration - DEVICES  # (size 128, hop 64) over 64-sample chunks: one window per reading after the first
        eventually(lambda: len(influxdb.points('SELECT "score" FROM "inference"', db)) >= windows, timeout=30,
                   message="results stored")
        eventually(lambda: influxdb.points(
            'SELECT last("rejected") AS "r" FROM "node_status" WHERE "node" = \'edge-a\'', db)[0]["r"] >= 2,
            timeout=15, message="a status with the rejects stored")
        eventually(lambda: influxdb.points('SELECT last("outbox_depth") AS "o" FROM "node_status"', db),
                   timeout=15, message="edge-b status stored")
        yield influxdb, db, t_from, int(time.time() * 1000) + 600_000
    finally:
        other.stop()
        edge.stop()
        bridge.stop()
        broker.stop()


# ----------------------------------------------------------------------------- the test


def resolve_variables(influx, db: str, dashboard: dict, t_from: int, t_to: int) -> dict[str, dict]:
    """Run each variable's query in order (later ones may use earlier ones, selected as All)."""
    variables: dict[str, dict] = {}
    for var in dashboard["templating"]["list"]:
        assert var["type"] == "query" and var["datasource"]["type"] == "influxdb"
        query = interpolate(var["query"], variables, {n: "$__all" for n in variables}, t_from, t_to)
        rows = [row for result in run(influx, db, query)["results"] for s in result.get("series", [])
                for row in s["values"]]
        values = sorted({row[1] for row in rows})
        assert values, f"variable ${var['name']} ({query}) has no values"
        variables[var["name"]] = {**var, "_options": values}
    return variables


def test_every_dashboard_query_returns_data_from_the_real_loop(filled):
    influx, db, t_from, t_to = filled
    checked = 0
    for name, dashboard in load_dashboards().items():
        variables = resolve_variables(influx, db, dashboard, t_from, t_to)
        if "site" in variables:
            assert variables["site"]["_options"] == [SITE]
        if "device" in variables:
            assert variables["device"]["_options"] == [f"dev-{i:03d}" for i in range(DEVICES)]
        if "model" in variables:
            assert variables["model"]["_options"] == ["vibration_ae"]
        queries = panel_queries(dashboard) + [(what, t["query"]) for what, t in annotation_queries(dashboard)]
        assert queries
        all_selected = {n: "$__all" for n in variables}
        first_value = {n: v["_options"][:1] for n, v in variables.items()}
        for what, query in queries:
            text = interpolate(query, variables, all_selected, t_from, t_to)
            try:
                response = run(influx, db, text)
            except AssertionError as exc:
                pytest.fail(f"{name} {what}: query failed: {exc}")
            assert has_values(response), f"{name} {what} returned nothing:\n{text}\n{response}"
            # One concrete value per variable (Grafana's regex-escaped form) must be valid InfluxQL too.
            run(influx, db, interpolate(query, variables, first_value, t_from, t_to))
            checked += 1
    assert checked >= 25


def test_annotations_carry_text_and_tags_columns(filled):
    influx, db, t_from, t_to = filled
    kinds = set()
    for dashboard in load_dashboards().values():
        variables = resolve_variables(influx, db, dashboard, t_from, t_to)
        for what, target in annotation_queries(dashboard):
            text = interpolate(target["query"], variables, {n: "$__all" for n in variables}, t_from, t_to)
            series = run(influx, db, text)["results"][0]["series"]
            columns = series[0]["columns"]
            assert target["textColumn"] in columns, what
            assert set(target["tagsColumn"].split(",")) <= set(columns), what
            kinds.add(re.search(r"\"kind\" = '(\w+)'", target["query"]).group(1))
    assert kinds == {"deploy", "rollback", "refused", "drift", "retrain"}


def test_fleet_counts_match_what_the_loop_did(filled):
    """Spot-check values, not only presence: two edge nodes online, three devices, the rejects."""
    influx, db, t_from, t_to = filled
    fleet = load_dashboards()["fleet.json"]
    variables = resolve_variables(influx, db, fleet, t_from, t_to)
    by_title = {p["title"]: p["targets"][0]["query"] for p in fleet["panels"] if p.get("targets")}

    def scalar(title: str) -> float:
        text = interpolate(by_title[title], variables, {n: "$__all" for n in variables}, t_from, t_to)
        return run(influx, db, text)["results"][0]["series"][0]["values"][0][1]

    assert scalar("Edge nodes online") == 2  # edge-a (the real runtime) and edge-b; not the bridge
    assert scalar("Devices reporting") == DEVICES
    assert scalar("Input rejected (edge)") == 2
    assert 0 <= scalar("Anomaly rate") <= 1
    assert scalar("Model builds in use") == 1
