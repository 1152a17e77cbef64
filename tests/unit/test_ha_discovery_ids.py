"""Home Assistant discovery ids and limits (runtime/ha_discovery.py) without a broker."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from edgeloop.edge.ha_discovery import HaDiscovery, HomeAssistantSettings, object_id


def test_ids_keep_only_what_home_assistant_accepts_and_stay_unique():
    assert object_id("living_room", "climate_ae", "score") == "living_room_climate_ae_score"
    a, b = object_id("lathe.02", "m"), object_id("lathe:02", "m")
    assert a != b and all(re.fullmatch(r"[A-Za-z0-9_-]+", x) for x in (a, b))
    assert object_id("lathe_02", "m") not in (a, b)


def test_at_most_max_entities_pairs_are_announced_and_the_rest_counted():
    sent: list[str] = []
    ha = HaDiscovery(HomeAssistantSettings(enabled=True, max_entities=2), "edge-1", lambda t, p: sent.append(t))
    ha.seen([(f"results/dev-{i}/m", b"{}") for i in range(5)] + [("samples/dev-9/m", b"{}"), ("results/x", b"")])
    ha.seen([("results/dev-0/m", b"{}")])
    assert len(sent) == 4 and ha.skipped == 3 and ha.announced == {("dev-0", "m"), ("dev-1", "m")}


def test_batched_results_are_read_from_their_last_element():
    ha = HaDiscovery(HomeAssistantSettings(enabled=True), "n", lambda t, p: None, batch_results=True)
    (_, binary), (_, sensor) = ha.configs("d", "m")
    assert binary["value_template"] == "{{ 'ON' if value_json[-1].anomaly else 'OFF' }}"
    assert sensor["value_template"] == "{{ value_json[-1].score }}"


@pytest.mark.parametrize("prefix", ["", "home/+/x", "a/#", "a//b", "/a"])
def test_a_discovery_prefix_must_be_plain_topic_levels(prefix):
    with pytest.raises(ValidationError):
        HomeAssistantSettings(discovery_prefix=prefix)
