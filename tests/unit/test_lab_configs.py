"""The workshop's config builder (lab/configs.py): what every rig's edge.yaml / bridge.yaml is made from."""

from __future__ import annotations

from lab.configs import FAST_RECONNECT, bridge_config, edge_config, merge


def test_config_overrides_merge_deeply_in_order():
    cfg = edge_config("n1", "mqtt://b:1883", FAST_RECONNECT, {"mqtt": {"keepalive_s": 9}, "input": {"qos": 1}})
    assert cfg == {"node_id": "n1", "input": {"qos": 1},
                   "mqtt": {"url": "mqtt://b:1883", "keepalive_s": 9, "reconnect_min_s": 0.5, "reconnect_max_s": 2}}
    assert FAST_RECONNECT["mqtt"]["keepalive_s"] == 5  # presets are not modified
    cfg["mqtt"]["reconnect_max_s"] = 60
    assert FAST_RECONNECT["mqtt"]["reconnect_max_s"] == 2  # nor shared with what was built
    assert merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}


def test_the_configs_are_valid_for_the_product():
    from edgeloop.bridge.config import BridgeConfig
    from edgeloop.edge.config import EdgeConfig

    EdgeConfig.model_validate(edge_config("n1", "mqtt://127.0.0.1:1883", FAST_RECONNECT))
    BridgeConfig.model_validate(bridge_config("mqtt://127.0.0.1:1883", "http://127.0.0.1:8086", "db", FAST_RECONNECT))
