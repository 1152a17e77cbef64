"""The committed Grafana dashboards are exactly what docker/grafana/generate.py produces."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

GRAFANA = Path(__file__).resolve().parents[2] / "docker" / "grafana"
sys.path.insert(0, str(GRAFANA))
import generate

sys.path.remove(str(GRAFANA))


def test_committed_json_equals_generator_output():
    rendered = generate.render()
    committed = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert set(committed) == set(rendered)
    stale = [name for name, text in rendered.items() if committed[name] != text]
    assert not stale, f"stale {stale}: run .venv/bin/python docker/grafana/generate.py and commit the JSON"
    assert generate.main(["--check"]) == 0


def test_every_query_uses_the_provisioned_influxql_datasource_and_the_time_range():
    for name, text in generate.render().items():
        dashboard = json.loads(text)
        targets = [t for p in dashboard["panels"] for t in p.get("targets", [])]
        targets += [a["target"] for a in dashboard["annotations"]["list"]]
        assert len(targets) >= 7, name
        for target in targets:
            assert target["rawQuery"] is True
            assert "$timeFilter" in target["query"], (name, target["query"])
        for obj in [*dashboard["panels"], *dashboard["templating"]["list"], *dashboard["annotations"]["list"]]:
            if "datasource" in obj:
                assert obj["datasource"] == {"type": "influxdb", "uid": generate.DATASOURCE_UID}, name


def test_dashboards_have_the_promised_variables_and_annotations():
    dashboards = {name: json.loads(text) for name, text in generate.render().items()}
    variables = {name: [v["name"] for v in d["templating"]["list"]] for name, d in dashboards.items()}
    assert variables == {"fleet.json": ["site"], "device.json": ["site", "device"], "model.json": ["model"]}
    device_var = dashboards["device.json"]["templating"]["list"][1]
    assert re.search(r'SHOW TAG VALUES .* WITH KEY = "device" WHERE "site" =~ /\^\$site\$/', device_var["query"])
    kinds = {a["name"] for a in dashboards["model.json"]["annotations"]["list"]}
    assert {"deploy events", "rollback events", "drift events", "retrain events"} <= kinds
    assert len({d["uid"] for d in dashboards.values()}) == 3
