"""Which worker process a reading goes to (runtime/workers.py): stable, per stream, Sparkplug per node."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeloop.edge.config import load_edge_config
from edgeloop.edge.workers import partition_key, worker_of
from edgeloop.errors import ConfigError
from edgeloop.signing import generate_keypair

LEVEL = st.text(st.characters(blacklist_characters="/+#\x00"), min_size=1, max_size=12)


def test_a_topic_is_its_own_key():
    assert partition_key("sensors/dev-1/vibration") == "sensors/dev-1/vibration"
    assert partition_key("zigbee2mqtt/living_room") == "zigbee2mqtt/living_room"


def test_every_message_of_one_sparkplug_edge_node_goes_to_one_worker():
    """A node's NBIRTH (aliases), NDATA and every device's DBIRTH/DDATA share its seq and alias state."""
    topics = ["spBv1.0/plant/NBIRTH/gw1", "spBv1.0/plant/NDATA/gw1", "spBv1.0/plant/DBIRTH/gw1/pump",
              "spBv1.0/plant/DDATA/gw1/pump", "spBv1.0/plant/DDATA/gw1/fan", "spBv1.0/plant/DDEATH/gw1/fan"]
    assert {partition_key(t) for t in topics} == {"plant/gw1"}
    for workers in (2, 3, 4, 7):
        assert len({worker_of(t, workers) for t in topics}) == 1
    assert partition_key("spBv1.0/plant/DDATA/gw2/pump") != partition_key("spBv1.0/plant/DDATA/gw1/pump")


@given(st.lists(LEVEL, min_size=1, max_size=6), st.integers(min_value=1, max_value=64))
def test_the_worker_is_in_range_and_the_same_every_time(levels, workers):
    topic = "/".join(levels)
    index = worker_of(topic, workers)
    assert 0 <= index < workers
    assert worker_of(topic, workers) == index  # crc32, not the per-process salted hash()


def test_streams_spread_over_the_workers():
    counts = [0, 0, 0, 0]
    for device in range(400):
        counts[worker_of(f"sensors/dev-{device:03d}/vibration", 4)] += 1
    assert min(counts) >= 60, counts


@pytest.mark.parametrize("text,fragment", [
    ("workers: 0\n", "workers"),
    ("workers: 65\n", "workers"),
])
def test_worker_count_is_bounded(tmp_path, text, fragment):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_edge_config(path)


def test_workers_refuse_what_runs_in_one_process_only(tmp_path):
    _private, key, _key_id = generate_keypair(tmp_path / "keys")
    path = tmp_path / "edge.yaml"
    path.write_text(f"workers: 2\ndeploy: {{enabled: true, public_key_file: {key}}}\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert "edge.yaml" in str(info.value) and "workers" in str(info.value) and "deploy.enabled" in str(info.value)
    path.write_text("workers: 2\n")
    assert load_edge_config(path).workers == 2


def test_workers_refuse_cameras(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("workers: 2\nvision: {cameras: [{camera: belt}]}\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert "workers" in str(info.value) and "vision" in str(info.value)
