"""The README's "Ingest" promises, checked against the code: its example config and its error example."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from docblocks import fenced

from edgeloop.errors import ConfigError
from edgeloop.edge.config import EdgeConfig, load_edge_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_ingest_example_is_a_valid_config_with_the_documented_topics():
    (block,) = fenced(README, "yaml ingest-example")
    cfg = EdgeConfig(**yaml.safe_load(block))
    climate, power = cfg.pipelines
    assert climate.subscription == "zigbee2mqtt/+" and climate.source.codec == "json"
    assert [f.path for f in climate.input.fields] == ["temperature", "humidity", "pressure"]
    assert power.subscription == "plant/+/+/tele"
    assert power.template.match("plant/north/meter-1/tele".split("/")) == {"area": "north", "device": "meter-1"}
    assert power.input.fields[1].scale == 0.001


def test_the_readme_overlap_error_is_the_one_the_edge_gives(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("pipelines:\n  - sensor: vibration\n  - sensor: other\n"
                    "    input: {codec: edgeloop, topic: 'sensors/{device}/+'}\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    readme = README.read_text()
    start = readme.index("(`pipelines.1.input.topic:") + 2
    promised = readme[start:readme.index("`)", start)]
    assert promised in str(info.value)
