"""The edge never deadlocks against the broker's in-flight window (docs/reliability.md).

The edge holds the last readings of each stream unacknowledged (a future
overlapping window still needs their samples). Those count against the
broker's in-flight window: mosquitto's default ``max_inflight_messages`` (20)
for an MQTT 3.1.1 client, the Receive Maximum the edge announces for MQTT 5.
If what the edge holds fills that window, the broker sends nothing more and
nothing can release them: the edge stalls for good. These runs use mosquitto's
default config, so its window is the default 20.
"""

from __future__ import annotations

from integration.test_backpressure import wait_for
from lab import configs
from lab.faultrig import expected_windows, fleet_readings
from lab.mqtt import Watcher, close, connect, publish_all
from lab.servers import Mosquitto

from edgeloop.edge.app import EdgeApp
from edgeloop.edge.config import EdgeConfig


def run_fleet(mosquitto, node: str, devices: int, per_device: int, overrides: dict) -> tuple[int, int, dict]:  # noqa: ANN001
    """Publish the fleet's readings to a running edge; (windows seen, windows wanted, edge counters)."""
    cfg = EdgeConfig.model_validate(configs.edge_config(node, mosquitto.url, overrides))
    readings = fleet_readings(devices, per_device)
    want = expected_windows(readings)
    watcher = Watcher(mosquitto.port, ["results/#"])
    app = EdgeApp(cfg)
    app.start(connect_timeout_s=10)
    client = connect(mosquitto.port)
    try:
        assert app.link.subscribed.wait(5)
        publish_all(client, [(t, p) for t, p, _, _ in readings])
        windows = lambda: len({(r.device, r.seq) for r in watcher.results(node)} & want)  # noqa: E731
        stored = wait_for(windows, len(want), timeout=30)
        counters = app.counters()
    finally:
        app.stop()
        watcher.close()
        close(client)
    assert counters["readings_in"] == len(readings) or stored < len(want), counters
    return stored, len(want), counters


def test_mqtt311_edge_with_more_streams_than_half_the_broker_window_does_not_stall(mosquitto, unique_id):
    # 15 streams hold 2 readings each (window 128, 64-sample readings): 30 > mosquitto's 20 in flight.
    stored, want, counters = run_fleet(mosquitto, f"edge-{unique_id}", 15, 6, {"mqtt": {"protocol": "3.1.1"}})
    assert stored == want == 75, f"{want - stored} of {want} windows never came; edge counters {counters}"
    assert counters["readings_in"] == 90
    # What it held stayed below the broker's window, and what it let go early was counted.
    assert counters["input_held"] <= 10 and counters["input_released_early"] > 0, counters


def test_mqtt5_edge_with_a_queue_smaller_than_what_it_holds_does_not_stall(mosquitto, unique_id):
    # Receive Maximum used to be the queue size (2): the stream's 2 held readings filled it.
    stored, want, counters = run_fleet(mosquitto, f"edge-{unique_id}", 1, 10,
                                       {"mqtt": {"protocol": "5"}, "input": {"queue_size": 2}})
    assert stored == want == 9, f"{want - stored} of {want} windows never came; edge counters {counters}"
    # The announced Receive Maximum leaves room for what is held: nothing had to be let go early.
    assert counters["input_held"] == 2 and counters["input_released_early"] == 0, counters


def test_the_stall_net_frees_a_broker_window_exactly_as_large_as_what_the_edge_holds(tmp_path, unique_id):
    # The broker allows 2 in flight; the edge is told 4, so it holds up to 4 - 2 = 2: one stream's two
    # held readings fill the window. Only the stall net (oldest released after 5 s quiet) lets more in.
    with Mosquitto(tmp_path / "mosquitto", extra_conf="max_inflight_messages 2") as broker:
        stored, want, counters = run_fleet(broker, f"edge-{unique_id}", 1, 4,
                                           {"mqtt": {"protocol": "3.1.1"}, "input": {"broker_inflight": 4}})
    assert stored == want == 3, f"{want - stored} of {want} windows never came; edge counters {counters}"
    assert counters["input_released_early"] >= 1, counters  # by the stall net: nothing else releases early here
