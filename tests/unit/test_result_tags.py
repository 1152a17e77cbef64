"""A result's extra tags (bound by its input's topic template): contract bounds, InfluxDB tags, admission caps."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from edgeloop.bridge.admission import ResultGuard
from edgeloop.bridge.config import InfluxSettings, StoreSettings
from edgeloop.bridge.schema import result_line
from edgeloop.contract import InferenceResult, decode_results

SHA = "0123456789abcdef" * 4


def result(tags=None, device="dev-1", **over) -> InferenceResult:
    fields = {"device": device, "sensor": "climate", "model": "m1", "model_version": "1.0.0", "model_sha256": SHA,
              "ts": 1_795_740_561.25, "seq": 1, "outputs": [0.5], "score": 0.1, "anomaly": False,
              "label": "normal", "latency_ms": 1.0, "tags": tags}
    return InferenceResult(**{**fields, **over})


def test_tags_travel_in_the_json_and_back():
    r = result({"area": "north", "line": "l3"})
    assert decode_results(r.model_dump_json(exclude_none=True).encode(), 1 << 20)[0].tags == {"area": "north", "line": "l3"}
    assert "tags" not in result().model_dump_json(exclude_none=True)  # absent when there are none


@pytest.mark.parametrize("tags", [
    {f"t{i}": "x" for i in range(9)},  # more than 8
    {"area": "a b"},  # not a topic level
    {"a/b": "x"},
    {"area": "+"},
    {"device": "other"},  # the result's own fields
    {"node": "n"},
    {"model": "m"},
])
def test_tags_are_bounded_and_cannot_shadow_result_fields(tags):
    with pytest.raises(ValidationError):
        result(tags)


def test_tags_become_influxdb_tags_sorted_with_the_others():
    line = result_line(result({"line": "l3", "area": "north"}, ts=1_795_740_561.25), InfluxSettings(tags={"env": "prod"}))
    assert line.startswith("inference,area=north,device=dev-1,env=prod,line=l3,model=m1,model_version=1.0.0,"
                           "sensor=climate score=")
    assert line.endswith(" 1795740561250000000")


def test_a_static_tag_of_the_same_name_wins():
    line = result_line(result({"env": "lab"}), InfluxSettings(tags={"env": "prod"}))
    assert ",env=prod," in line and "env=lab" not in line


def test_same_stream_with_other_tag_values_gets_its_own_prefix():
    cfg = InfluxSettings()
    assert "area=a" in result_line(result({"area": "a"}), cfg)
    assert "area=b" in result_line(result({"area": "b"}), cfg)
    assert "area=" not in result_line(result(), cfg)


def test_admission_caps_distinct_tag_values_and_tag_name_sets_per_device():
    guard = ResultGuard(StoreSettings(known_versions="off", max_tag_values=3, tag_period_s=100), None)
    now = time.time()
    values = [guard.check(result({"area": f"a{i}"}, ts=now), now) for i in range(5)]
    assert values[:3] == [None] * 3 and [v[0] for v in values[3:]] == ["tag_cardinality"] * 2
    assert "tag 'area'" in values[3][1]
    names = [guard.check(result({f"k{i}": "x"}, device="dev-2", ts=now), now) for i in range(5)]
    assert names[:3] == [None] * 3 and [v[0] for v in names[3:]] == ["tag_cardinality"] * 2
    assert "the set of tag names" in names[3][1]
    assert guard.check(result({"area": "a0"}, ts=now), now) is None  # values it already uses
