"""Topic templates: parsing, matching, overlap, and the config errors that name the field."""

from __future__ import annotations

import pytest

from edgeloop.errors import ConfigError
from edgeloop.edge.config import load_edge_config
from edgeloop.edge.ingest.topics import Router, TemplateError, TopicTemplate, filters_overlap


@pytest.mark.parametrize("text,topic,fields", [
    ("zigbee2mqtt/{device}", "zigbee2mqtt/living_room", {"device": "living_room"}),
    ("zigbee2mqtt/{device}", "zigbee2mqtt/a/b", None),
    ("zigbee2mqtt/{device}", "zigbee2mqtt", None),
    ("tele/{device}/SENSOR", "tele/tasmota_ABC123/SENSOR", {"device": "tasmota_ABC123"}),
    ("tele/{device}/SENSOR", "tele/tasmota_ABC123/STATE", None),
    ("plant/{area}/{line}/{device}/{sensor}", "plant/north/l3/press-7/temp",
     {"area": "north", "line": "l3", "device": "press-7", "sensor": "temp"}),
    ("a/+/{device}", "a/anything/d1", {"device": "d1"}),
    ("a/{device}/#", "a/d1", {"device": "d1"}),  # MQTT: a/# matches a as well
    ("a/{device}/#", "a/d1/x/y", {"device": "d1"}),
    ("a/{device}/#", "b/d1/x", None),
    ("{device}/x", "$SYS/x", None),  # wildcards never match $ topics
])
def test_match_binds_named_levels(text, topic, fields):
    assert TopicTemplate.parse(text).match(topic.split("/")) == fields


def test_named_levels_subscribe_as_plus():
    assert TopicTemplate.parse("plant/{area}/+/{device}/#").filter == "plant/+/+/+/#"


@pytest.mark.parametrize("text,why", [
    ("", "empty"),
    ("a//{device}", "empty"),
    ("a/{device}/", "empty"),
    ("a/#/{device}", "'#' must be the last level"),
    ("a/dev-{device}", "whole level"),
    ("a/{dev+ice}", "whole level"),
    ("a/{Device}", "whole level"),
    ("a/b+c/{device}", "whole levels"),
    ("a/{device}/{device}", "twice"),
    ("a/{model}/{device}", "reserved"),
    ("a/{node}/{device}", "reserved"),
    ("$SYS/{device}", "broker"),
    ("results/{device}/x", "edgeloop's own output"),
    ("/".join(f"{{t{i}}}" for i in range(9)) + "/{device}", "at most 8"),
])
def test_templates_that_cannot_work_are_refused(text, why):
    with pytest.raises(TemplateError, match=why):
        TopicTemplate.parse(text)


@pytest.mark.parametrize("a,b,overlap", [
    ("sensors/+/vibration", "sensors/+/climate", False),
    ("sensors/+/vibration", "sensors/+/+", True),
    ("zigbee2mqtt/+", "zigbee2mqtt/+/set", False),
    ("a/#", "a", True),
    ("a/#", "b/#", False),
    ("a/+/c", "a/b/+", True),
    ("a/b", "a/b/c", False),
    ("#", "x/y", True),
])
def test_filters_overlap(a, b, overlap):
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


def test_router_picks_the_matching_pipeline():
    router = Router([TopicTemplate.parse("sensors/{device}/vibration"), TopicTemplate.parse("zigbee2mqtt/{device}")])
    assert router.route("zigbee2mqtt/kitchen") == (1, {"device": "kitchen"})
    assert router.route("sensors/d/vibration") == (0, {"device": "d"})
    assert router.route("sensors/d/other") is None
    assert router.route("zigbee2mqtt/" + "x" * 300) is None


def write(tmp_path, text):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,fragments", [
    ("pipelines:\n  - sensor: c\n    input: {codec: json, topic: 'zigbee2mqtt/{name}'}\n",
     ["edge.yaml", "pipelines.0", "input.topic", "no {device} level"]),
    ("pipelines:\n  - sensor: c\n    input: {codec: json, topic: 'a/#/{device}'}\n",
     ["pipelines.0", "input.topic", "'#' must be the last level"]),
    ("pipelines:\n  - sensor: c\n    input: {codec: json}\n", ["pipelines.0", "input.topic: required for codec json"]),
    ("pipelines:\n  - sensor: c\n    input: {codec: yaml, topic: 'a/{device}'}\n", ["pipelines.0.input", "yaml"]),
    ("pipelines:\n  - sensor: c\n    input: {preset: nope}\n", ["pipelines.0.input", "unknown preset 'nope'", "zigbee2mqtt"]),
    ("pipelines:\n  - sensor: c\n    in_channels: 3\n    input: {codec: json, topic: 'z/{device}', fields: [a, b]}\n",
     ["pipelines.0", "input.fields: maps 2 channels, in_channels is 3"]),
    ("pipelines:\n  - sensor: c\n    topic: sensors/+/c\n    input: {codec: edgeloop}\n", ["pipelines.0", "input.topic"]),
    ("pipelines:\n  - sensor: vibration\n  - sensor: c\n    input: {codec: edgeloop, topic: 'sensors/{device}/+'}\n",
     ["pipelines.1.input.topic", "same topics as pipelines.0"]),
    ("pipelines:\n  - sensor: a\n    input: {preset: zigbee2mqtt}\n  - sensor: b\n    input: {preset: zigbee2mqtt, fields: [x, y, z]}\n",
     ["pipelines.1.input.topic", "'zigbee2mqtt/{device}'", "pipelines.0"]),
    ("pipelines:\n  - sensor: c\n    input: {codec: json, topic: 'z/{device}', timezone: Mars/Olympus}\n",
     ["pipelines.0.input.json.timezone", "unknown time zone"]),
])
def test_config_errors_name_the_field(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as info:
        load_edge_config(write(tmp_path, text))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_without_input_a_pipeline_takes_edgeloop_readings_on_sensors(tmp_path):
    cfg = load_edge_config(write(tmp_path, "pipelines:\n  - sensor: vibration\n  - sensor: temp\n    in_channels: 1\n"
                                           "    stages: []\n"))
    assert [p.subscription for p in cfg.pipelines] == ["sensors/+/vibration", "sensors/+/temp"]
    assert [p.source.codec for p in cfg.pipelines] == ["edgeloop", "edgeloop"]


def test_the_older_topic_key_still_narrows_the_subscription(tmp_path):
    cfg = load_edge_config(write(tmp_path, "pipelines:\n  - sensor: vibration\n    topic: sensors/dev-7/vibration\n"))
    assert cfg.pipelines[0].subscription == "sensors/dev-7/vibration"
    assert cfg.pipelines[0].template.text == "sensors/{device}/vibration"
