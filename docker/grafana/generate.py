"""Generate the provisioned Grafana dashboards (docker/grafana/dashboards/*.json) from code.

    .venv/bin/python docker/grafana/generate.py          # rewrite the JSON files
    .venv/bin/python docker/grafana/generate.py --check  # exit 1 if they differ from this code

Why code and why this library: dashboards are queries against the InfluxDB
schema of ``cloud_bridge/schema.py``, and hand-edited JSON drifts from it
silently. Here each query is written once, in plain InfluxQL, next to the
panel that shows it; tests/integration/test_dashboards.py runs every query of
the committed JSON against a real InfluxDB filled by the bridge, and
tests/unit/test_dashboards_generated.py checks the JSON is exactly what this
file produces. Panels, variables and layout come from grafana-foundation-sdk
(Grafana Labs' typed builders, pinned in the ``dev`` extra to the Grafana
11.6 schema the compose stack runs). The SDK has no InfluxDB query type, so
``InfluxQL`` below is that one small piece: Grafana's InfluxDB target in raw
InfluxQL mode.

Queries are InfluxQL, which InfluxDB 1.x, 2.x (v1-compatible ``/query`` with a
DBRP mapping) and 3.x answer. Variables use Grafana's regex form
(``"tag" =~ /^$var$/``) so single, multiple and "All" selections all work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common as common_b,
    dashboard as dash,
    histogram,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog import builder as cogbuilder, variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, dashboard as dm

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "dashboards"

#: The provisioned datasource (docker/grafana/provisioning/datasources/influxdb.yaml).
DATASOURCE_UID = "edgeloop-influxdb"
DS = dm.DataSourceRef(type_val="influxdb", uid=DATASOURCE_UID)

RESULTS = '"inference"'
STATUS = '"node_status"'
EVENTS = '"events"'
ANOMALOUS = '"anomaly" = true'
EDGES = "\"models\" != ''"  # status of edge nodes only: a bridge's status carries no models

#: Annotation colours per event kind (cloud_bridge/events.py writes the kinds).
EVENT_KINDS = {
    "deploy": "green",
    "rollback": "red",
    "refused": "orange",
    "drift": "yellow",
    "retrain": "blue",
}


# ----------------------------------------------------------------------------- InfluxQL query type


class InfluxQLTarget(cogvariants.Dataquery):
    """Grafana's InfluxDB query in raw InfluxQL mode (``rawQuery: true``)."""

    def __init__(self, ref_id: str, query: str, result_format: str = "time_series", alias: str | None = None) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "datasource": DS,
            "query": self.query,
            "rawQuery": True,
            "refId": self.ref_id,
            "resultFormat": self.result_format,
        }
        if self.alias:
            out["alias"] = self.alias
        return out


class InfluxQL(cogbuilder.Builder[InfluxQLTarget]):
    def __init__(self, query: str, ref_id: str = "A", *, table_format: bool = False, alias: str | None = None) -> None:
        self._internal = InfluxQLTarget(ref_id, " ".join(query.split()), "table" if table_format else "time_series", alias)

    def build(self) -> InfluxQLTarget:
        return self._internal


class InfluxAnnotationTarget:
    """The ``target`` of an InfluxDB annotation: an InfluxQL query and which columns are text and tags."""

    def __init__(self, query: str, text_column: str, tags_column: str) -> None:
        self.query = " ".join(query.split())
        self.text_column = text_column
        self.tags_column = tags_column

    def to_json(self) -> dict[str, object]:
        return {
            "fromAnnotations": True,
            "query": self.query,
            "rawQuery": True,
            "refId": "Anno",
            "resultFormat": "table",
            "tagsColumn": self.tags_column,
            "textColumn": self.text_column,
        }


class _Built(cogbuilder.Builder):
    def __init__(self, value: object) -> None:
        self._value = value

    def build(self) -> object:
        return self._value


# ----------------------------------------------------------------------------- building blocks


def where(*conditions: str) -> str:
    """``WHERE a AND b AND $timeFilter``: every query is bounded by the dashboard's time range."""
    return "WHERE " + " AND ".join([*conditions, "$timeFilter"])


def tag_match(tag: str, var: str) -> str:
    return f'"{tag}" =~ /^${var}$/'


def variable(name: str, label: str, query: str, *, include_all: bool = True) -> dash.QueryVariable:
    var = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
    )
    if include_all:
        var = var.include_all(True).all_value(".*").current(dm.VariableOption(selected=True, text="All", value="$__all"))
    return var


def event_annotations(model_filter: str | None) -> list[dash.AnnotationQuery]:
    """One annotation per event kind from the ``events`` measurement (deployer, drift monitor, trainer)."""
    out = []
    for kind, colour in EVENT_KINDS.items():
        conditions = [f"\"kind\" = '{kind}'"] + ([model_filter] if model_filter else [])
        query = f'SELECT "message", "version", "model" FROM {EVENTS} {where(*conditions)}'
        out.append(
            dash.AnnotationQuery()
            .name(f"{kind} events")
            .datasource(DS)
            .enable(kind in ("deploy", "rollback", "drift", "retrain"))
            .icon_color(colour)
            .target(_Built(InfluxAnnotationTarget(query, text_column="message", tags_column="model,version")))
        )
    return out


def grid(w: int, h: int) -> dm.GridPos:
    return dm.GridPos(h=h, w=w)


def stat_panel(title: str, query: str, *, unit: str = "short", description: str = "", decimals: int | None = None,
               w: int = 4, h: int = 4) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(InfluxQL(query))
        .unit(unit)
        .grid_pos(grid(w, h))
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel.decimals(decimals) if decimals is not None else panel


def ts_panel(title: str, *queries: InfluxQL, unit: str = "short", description: str = "", w: int = 12, h: int = 8,
             bars: bool = False, soft_max: float | None = None) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(queries))
        .unit(unit)
        .grid_pos(grid(w, h))
        .legend(common_b.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM))
        .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING))
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if soft_max is not None:
        panel = panel.axis_soft_min(0).axis_soft_max(soft_max)
    return panel


def table_panel(title: str, query: str, *, description: str = "", w: int = 12, h: int = 8) -> table.Panel:
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(InfluxQL(query, table_format=True))
        .grid_pos(grid(w, h))
    )


def anomaly_rate(group_by: str, *conditions: str) -> str:
    """Share of windows flagged anomalous, 0..1, per ``group_by``.

    InfluxQL cannot average a boolean, so the union of two subqueries maps
    ``anomaly`` to 0/1 (``score * 0`` / ``score * 0 + 1``) and ``mean`` does the
    rest; a device without anomalies gets 0, not null.
    """
    inner = " ".join(["AND", *[f"{c} AND" for c in conditions]]) if conditions else "AND"
    return (
        f'SELECT mean("a") AS "anomaly rate" FROM '
        f'(SELECT "score" * 0 AS "a" FROM {RESULTS} WHERE "anomaly" = false {inner} $timeFilter), '
        f'(SELECT "score" * 0 + 1 AS "a" FROM {RESULTS} WHERE "anomaly" = true {inner} $timeFilter) '
        f"WHERE $timeFilter GROUP BY {group_by}"
    )


def new_dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["edgeloop"])
        .editable()
        .time("now-1h", "now")
        .refresh("30s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(dash.DashboardLink("edgeloop").type(dm.DashboardLinkType.DASHBOARDS).tags(["edgeloop"])
              .as_dropdown(True).include_vars(True).keep_time(True))
    )


# ----------------------------------------------------------------------------- dashboards


def fleet_overview() -> dash.Dashboard:
    site = tag_match("site", "site")
    d = new_dashboard("edgeloop-fleet", "edgeloop / Fleet overview",
                      "Edge nodes, devices, results and anomalies across the fleet.")
    d = d.with_variable(variable("site", "Site", f'SHOW TAG VALUES FROM {RESULTS} WITH KEY = "site"'))
    for annotation in event_annotations(None):
        d = d.annotation(annotation)
    d = (
        d.with_row(dash.Row("Now"))
        .with_panel(stat_panel(
            "Edge nodes online",
            f'SELECT count("online") FROM (SELECT last("online") AS "online" FROM {STATUS} '
            f'{where(EDGES, site)} GROUP BY "node") WHERE "online" = true',
            description="Edge runtimes whose latest status/{node} in the range says online (birth, LWT offline).",
        ))
        .with_panel(stat_panel(
            "Devices reporting",
            f'SELECT count("last") FROM (SELECT last("score") FROM {RESULTS} {where(site)} GROUP BY "device")',
            description="Devices with at least one inference result in the time range.",
        ))
        .with_panel(stat_panel(
            "Results in range", f'SELECT count("score") FROM {RESULTS} {where(site)}',
            description="Inference results stored (one per window).",
        ))
        .with_panel(stat_panel(
            "Anomaly rate", anomaly_rate('"model"', site).replace(' GROUP BY "model"', ""), unit="percentunit",
            decimals=1, description="Share of windows flagged anomalous over the range.",
        ))
        .with_panel(stat_panel(
            "Model builds in use", f'SELECT count(distinct("model_sha256")) FROM {RESULTS} {where(site)}',
            description="Distinct model files (sha256) that produced results in the range.",
        ))
        .with_panel(stat_panel(
            "Input rejected (edge)",
            f'SELECT sum("rejected") FROM (SELECT max("rejected") AS "rejected" FROM {STATUS} '
            f'{where(EDGES, site)} GROUP BY "node")',
            description="Sum over nodes of each node's rejected-input counter (dead-lettered on deadletter/edge); "
                        "counters restart at 0 with the process.",
        ))
        .with_row(dash.Row("Throughput and anomalies"))
        .with_panel(ts_panel(
            "Results per second by device",
            InfluxQL(f'SELECT count("score") * 1000 / $__interval_ms FROM {RESULTS} {where(site)} '
                     'GROUP BY time($__interval), "device" fill(0)', alias="$tag_device"),
            unit="reqps",
        ))
        .with_panel(ts_panel(
            "Anomaly rate by device",
            InfluxQL(anomaly_rate('time($__interval), "device" fill(none)', site), alias="$tag_device"),
            unit="percentunit", soft_max=1,
        ))
        .with_row(dash.Row("Edge health"))
        .with_panel(ts_panel(
            "Outbox depth by node",
            InfluxQL(f'SELECT max("outbox_depth") FROM {STATUS} {where(EDGES, site)} '
                     'GROUP BY time($__interval), "node" fill(none)', alias="$tag_node"),
            description="Results waiting in the edge's disk outbox (grows while the broker is unreachable).",
            w=8,
        ))
        .with_panel(ts_panel(
            "Input queue depth by node",
            InfluxQL(f'SELECT max("queue_depth") FROM {STATUS} {where(EDGES, site)} '
                     'GROUP BY time($__interval), "node" fill(none)', alias="$tag_node"),
            w=8,
        ))
        .with_panel(ts_panel(
            "Rejected and dropped input (since start)",
            InfluxQL(f'SELECT max("rejected") AS "rejected", max("dropped_queue_full") AS "dropped (queue full)" '
                     f'FROM {STATUS} {where(EDGES, site)} GROUP BY time($__interval), "node" fill(none)',
                     alias="$tag_node $col"),
            description="Counters from each node's status; dead-letters carry the reason on deadletter/edge.",
            w=8,
        ))
        .with_row(dash.Row("Nodes and models"))
        .with_panel(table_panel(
            "Edge nodes",
            f'SELECT last("online") AS "online", last("models") AS "models", last("runtime_version") AS "runtime", '
            f'last("readings_in") AS "readings in", last("results_out") AS "results out", '
            f'last("outbox_depth") AS "outbox", last("reconnects") AS "reconnects" '
            f'FROM {STATUS} {where(EDGES, site)} GROUP BY "node", "site"',
            description="Latest status per node; models are name=version pairs.",
            w=14,
        ))
        .with_panel(table_panel(
            "Model versions deployed",
            f'SELECT count("score") AS "results", count(distinct("device")) AS "devices" FROM '
            f'(SELECT "score", "device" FROM {RESULTS} {where(site)}) GROUP BY "model", "model_version"',
            description="Results per model version in the range, and on how many devices.",
            w=10,
        ))
    )
    return d


def device_drilldown() -> dash.Dashboard:
    dev = tag_match("device", "device")
    d = new_dashboard("edgeloop-device", "edgeloop / Device drill-down",
                      "One device (or a few): scores, anomalies, latency, the windows that were flagged.")
    d = (
        d.with_variable(variable("site", "Site", f'SHOW TAG VALUES FROM {RESULTS} WITH KEY = "site"'))
        .with_variable(variable(
            "device", "Device",
            f'SHOW TAG VALUES FROM {RESULTS} WITH KEY = "device" WHERE {tag_match("site", "site")}',
        ))
    )
    for annotation in event_annotations(None):
        d = d.annotation(annotation)
    d = (
        d.with_panel(ts_panel(
            "Anomaly score",
            InfluxQL(f'SELECT mean("score") AS "mean", max("score") AS "max" FROM {RESULTS} {where(dev)} '
                     'GROUP BY time($__interval), "device" fill(none)', alias="$tag_device $col"),
            description="Reconstruction error of the model per window; above the model's threshold = anomaly.",
            w=16,
        ))
        .with_panel(ts_panel(
            "Anomaly rate",
            InfluxQL(anomaly_rate('time($__interval), "device" fill(none)', dev), alias="$tag_device"),
            unit="percentunit", soft_max=1, w=8,
        ))
        .with_panel(ts_panel(
            "Results per second",
            InfluxQL(f'SELECT count("score") * 1000 / $__interval_ms FROM {RESULTS} {where(dev)} '
                     'GROUP BY time($__interval), "device" fill(0)', alias="$tag_device"),
            unit="reqps", w=8,
        ))
        .with_panel(ts_panel(
            "Edge latency (reading received -> result)",
            InfluxQL(f'SELECT mean("latency_ms") AS "mean", max("latency_ms") AS "max" FROM {RESULTS} {where(dev)} '
                     'GROUP BY time($__interval), "device" fill(none)', alias="$tag_device $col"),
            unit="ms", w=8,
        ))
        .with_panel(table_panel(
            "Windows flagged anomalous (latest 100)",
            f'SELECT "score", "label", "seq", "model_version", "node" FROM {RESULTS} '
            f'{where(dev, ANOMALOUS)} ORDER BY time DESC LIMIT 100',
            w=14, h=10,
        ))
        .with_panel(table_panel(
            "Per device, model and version",
            f'SELECT count("score") AS "windows", mean("score") AS "mean score", max("score") AS "max score", '
            f'mean("latency_ms") AS "mean latency ms" FROM {RESULTS} {where(dev)} '
            'GROUP BY "device", "node", "model", "model_version"',
            w=10, h=10,
        ))
    )
    return d


def model_view() -> dash.Dashboard:
    mod = tag_match("model", "model")
    d = new_dashboard("edgeloop-model", "edgeloop / Models",
                      "Score distribution, versions in the field, and the loop's drift, retrain and deploy events.")
    d = d.with_variable(variable("model", "Model", f'SHOW TAG VALUES FROM {RESULTS} WITH KEY = "model"'))
    for annotation in event_annotations(mod):
        d = d.annotation(annotation)
    d = (
        d.with_panel(ts_panel(
            "Score percentiles",
            InfluxQL(f'SELECT percentile("score", 50) AS "p50", percentile("score", 95) AS "p95", '
                     f'percentile("score", 99) AS "p99" FROM {RESULTS} {where(mod)} '
                     'GROUP BY time($__interval), "model" fill(none)', alias="$tag_model $col"),
            description="A drifting score distribution is what the drift monitor looks for; annotations mark "
                        "drift, retrain and deploy events.",
            w=16,
        ))
        .with_panel(
            histogram.Panel()
            .title("Score distribution (latest 20000 windows)")
            .datasource(DS)
            .with_target(InfluxQL(f'SELECT "score" FROM {RESULTS} {where(mod)} ORDER BY time DESC LIMIT 20000'))
            .grid_pos(grid(8, 8))
        )
        .with_panel(ts_panel(
            "Results by model version",
            InfluxQL(f'SELECT count("score") FROM {RESULTS} {where(mod)} '
                     'GROUP BY time($__interval), "model", "model_version" fill(none)',
                     alias="$tag_model $tag_model_version"),
            bars=True, w=12,
        ))
        .with_panel(ts_panel(
            "Anomaly rate by model version",
            InfluxQL(anomaly_rate('time($__interval), "model", "model_version" fill(none)', mod),
                     alias="$tag_model $tag_model_version"),
            unit="percentunit", soft_max=1, w=12,
        ))
        .with_panel(
            statetimeline.Panel()
            .title("Models reported by each node")
            .description("The models=versions each edge node reports in its status, over time.")
            .datasource(DS)
            .with_target(InfluxQL(f'SELECT last("models") FROM {STATUS} {where(EDGES)} '
                                  'GROUP BY time($__interval), "node" fill(previous)', alias="$tag_node"))
            .grid_pos(grid(12, 8))
        )
        .with_panel(
            bargauge.Panel()
            .title("Results per model version (range)")
            .datasource(DS)
            .with_target(InfluxQL(f'SELECT count("score") FROM {RESULTS} {where(mod)} GROUP BY "model", "model_version"',
                                  alias="$tag_model $tag_model_version"))
            .grid_pos(grid(12, 8))
            .orientation(common.VizOrientation.HORIZONTAL)
        )
        .with_panel(table_panel(
            "Loop events (latest 100)",
            f'SELECT "kind", "model", "version", "message" FROM {EVENTS} {where(mod)} ORDER BY time DESC LIMIT 100',
            description="Written by the deployer and the drift monitor (cloud_bridge/events.py).",
            w=24,
        ))
    )
    return d


DASHBOARDS = {
    "fleet.json": fleet_overview,
    "device.json": device_drilldown,
    "model.json": model_view,
}


def render() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {
        name: json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a file differs")
    args = parser.parse_args(argv)
    stale = []
    OUT_DIR.mkdir(exist_ok=True)
    for name, text in render().items():
        path = OUT_DIR / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"stale dashboards: {', '.join(stale)}; run: python docker/grafana/generate.py", file=sys.stderr)
        return 1
    print(("wrote " if stale else "up to date: ") + ", ".join(stale or DASHBOARDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
