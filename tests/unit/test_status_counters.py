"""node_status stores a fixed list of NodeStatus counters as integer fields (dashboards plot them)."""

from __future__ import annotations

from edgeloop.bridge.config import load_bridge_config
from edgeloop.bridge.schema import STATUS_COUNTERS, status_line
from edgeloop.contract import NodeStatus

CFG = load_bridge_config(None, {})


def test_known_counters_become_integer_fields_and_unknown_ones_are_not_stored():
    status = NodeStatus(node="edge-1", state="online", ts=1790000000.5,
                        counters={"outbox_depth": 7, "rejected": 2, "readings_in": 100, "made_up_by_a_peer": 5})
    line = status_line(status, CFG)
    fields = line.split(" ")[1].split(",")
    assert "outbox_depth=7i" in fields and "rejected=2i" in fields and "readings_in=100i" in fields
    assert not any(f.startswith("made_up_by_a_peer") for f in fields)
    assert line.endswith(" 1790000000500000000")


def test_no_counters_no_extra_fields():
    line = status_line(NodeStatus(node="edge-1", state="offline", ts=1790000000.0), CFG)
    assert line == 'node_status,node=edge-1 online=false,models="" 1790000000000000000'


def test_the_list_names_what_the_edge_reports():
    # The edge's counters() keys that dashboards use; outbox_* come from the disk outbox.
    assert {"readings_in", "results_out", "rejected", "dropped_queue_full", "queue_depth", "reconnects"} <= set(
        STATUS_COUNTERS
    )
