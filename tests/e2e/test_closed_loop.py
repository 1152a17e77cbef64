"""The closed loop end to end, with real processes and servers.

Three edge processes (``edgeloop edge run``, one per simulated machine, signed
deployment and sampling on), the bridge with its closed loop (sample store,
drift monitor, retrain worker process, deployer), mosquitto and influxd. The
fleet runs 10x faster than real time:

1. normal operation until the monitor compares every machine with its own
   baseline; then one machine (dev-002) breaks down: its burst of faults is
   flagged and the monitor sees that device change for ``consecutive``
   evaluations in a row, but it is one device of three, so nothing is
   retrained -- not while the burst lasts, not until it has left the window;
2. every machine changes regime: the anomaly rate climbs, the drift is
   detected, a model is retrained on the field samples, gated, signed and
   deployed; every edge runs the new version;
3. the anomaly rate on the new model is back near the pre-drift level, and
   faults injected after the redeploy are still flagged.

Each phase starts when the loop has shown the previous one (events, not
wall-clock phases: a busy machine makes every step slower, not different).
Speed is not asserted here (benchmarks/closed_loop.py measures it).
"""

from __future__ import annotations

import time

import pytest

from lab.procs import logs, terminate_all
from lab.servers import eventually

from edgeloop.bridge.app import Bridge
from edgeloop.signing import generate_keypair
from lab.loopscenario import (
    MODEL,
    Burst,
    FleetPublisher,
    FleetWatch,
    edge_process,
    figures,
    loop_bridge_config,
    seed_registry,
)

DEVICES = 3
RATE_HZ = 156.25  # readings per second per device: 10x real time
BURST = Burst(device=2, anomaly_rate=0.3)
DRIFT = {"window_s": 5, "interval_s": 1, "consecutive": 3, "min_samples": 60, "min_device_samples": 20,
         "baseline_samples": 40, "cooldown_s": 600}
# The gate's test split is small here (a few hundred windows); the outcome that matters is asserted
# below on thousands of windows scored by the deployed model.
RETRAIN = {"targets": ["edge-*"], "min_train_samples": 1500, "wait_for_samples_s": 60, "epochs": 30, "max_fpr": 0.04,
           "canary_timeout_s": 60, "rollout_timeout_s": 60, "timeout_s": 180}


# Each phase waits for its event, so a busy machine makes the run longer, not different (the retrain
# worker's TensorFlow import and training: 30 s idle, 65 s with one core taken): the cap is the phases'.
@pytest.mark.timeout(600)
def test_drift_is_detected_retrained_deployed_and_the_anomaly_rate_returns(mosquitto, influx_db, tmp_path):
    server, db = influx_db
    private, public, _ = generate_keypair(tmp_path / "keys")
    base = seed_registry(tmp_path / "registry")
    edges, publisher, watch, bridge = [], None, None, None
    try:
        watch = FleetWatch(mosquitto.port)
        for i in range(DEVICES):
            node = f"edge-{i}"
            edges.append(edge_process(tmp_path, node, f"sensors/dev-{i:03d}/vibration", mosquitto.url, public,
                                      fraction=0.3, seed=i))
        bridge = Bridge(loop_bridge_config(mosquitto.url, server.url, db, tmp_path, private, DRIFT, RETRAIN))
        bridge.start(10)  # returns subscribed: samples published from now on reach the loop
        loop, monitor = bridge.loop, bridge.loop.monitor
        # Online (retained, published after the edge's SUBSCRIBE on the same connection): subscribed.
        eventually(lambda: all(watch.node_version(f"edge-{i}") == base for i in range(DEVICES)), timeout=60,
                   message="edges not online with the bundled model")

        publisher = FleetPublisher(mosquitto.port, DEVICES, RATE_HZ, None, burst=BURST)
        publisher.start()

        def until(condition, timeout: float, what: str):  # noqa: ANN001, ANN202
            """eventually(), failing with the loop's state at the deadline (not at the call)."""
            try:
                return eventually(condition, timeout=timeout)
            except AssertionError as exc:
                evaluations = [e.__dict__ for e in monitor.last_evaluations()]
                raise AssertionError(f"{what}: loop {loop.stats()} evaluations {evaluations} history "
                                     f"{list(monitor.history)[-8:]} published {publisher.published}") from exc

        def evaluated_since(wall: float) -> list[tuple]:
            return [h for h in list(monitor.history) if h[0] > wall]

        # 1. Baselines, then the burst: one device of three changes, for long enough, and nothing triggers.
        until(lambda: any(e.status != "insufficient" and e.evidence.get("compared_devices") == DEVICES
                          for e in monitor.last_evaluations()),
              60, "the monitor never compared every device with its baseline")
        burst_wall = publisher.start_wall + publisher.start_burst()

        def burst_seen_in_a_row() -> bool:
            recent = evaluated_since(burst_wall)[-DRIFT["consecutive"]:]
            return len(recent) == DRIFT["consecutive"] and all(
                status != "insufficient" and changed + mismatched >= 1 for _at, _m, _c, status, changed, mismatched
                in recent)

        until(burst_seen_in_a_row, 60, f"the monitor never saw dev-002's burst {DRIFT['consecutive']} times in a row")
        publisher.end_burst()
        burst_over = time.time()  # the broken machine's last reading went out before the switch returned
        assert len(publisher.burst_faults) > 20
        # An evaluation whose window holds none of the burst (and still no trigger).
        until(lambda: evaluated_since(burst_over + DRIFT["window_s"]), 60, "no evaluation after the burst")
        assert loop.triggers == [], (
            f"a single device's burst of faults triggered a retrain: {loop.triggers}; "
            f"evaluations {list(monitor.history)[-12:]}"
        )

        # 2. The regime change: detected, retrained, deployed to every edge.
        drift_wall = publisher.start_wall + publisher.start_drift()
        assert drift_wall == publisher.drift_wall
        trigger = until(lambda: loop.triggers, 90, "no drift trigger")[0]
        assert trigger["at"] > drift_wall
        job = until(lambda: (j := loop.jobs().get(MODEL)) and not j["alive"] and j, 150,
                    "retrain/deploy did not finish")
        assert job["state"] == "deployed", f"{job} (worker: {tmp_path / 'retrain-jobs'})"
        new = job["version"]
        registry = loop.registry
        assert registry.current(MODEL) == new and registry.record(MODEL, new)["parent"] == base
        _, meta = registry.get(MODEL, new)
        assert meta.training.parent == base and meta.reference.feature_quantiles
        eventually(lambda: all(watch.node_version(f"edge-{i}") == new for i in range(DEVICES)), timeout=60,
                   message="not every edge reports the new version")

        # 3. Enough windows scored by the new model, including some injected faults.
        def after_redeploy() -> bool:
            rows = [r for r in watch.results() if r.model_version == new]
            return len(rows) > 3000 and figures(rows, publisher.faults, drift_wall, new, base)["after"][
                "episodes"] >= 5

        eventually(after_redeploy, timeout=60, message="too few windows or faults after the redeploy")
        publisher.close()
        q = figures(watch.results(), publisher.faults, drift_wall, new, base,
                    excluded=set(publisher.burst_faults) | burst_windows(publisher))
        before, during, after = q["before"], q["during"], q["after"]
        assert before["normal_windows"] > 2000 and during["normal_windows"] > 500, q
        assert during["fpr"] > 3 * before["fpr"], f"the drift did not raise the anomaly rate: {q}"
        assert after["fpr"] <= max(1.5 * before["fpr"], 0.01), f"anomaly rate did not come back: {q}"
        assert after["recall"] >= 0.8, f"faults after the redeploy are not flagged: {q}"

        # Every step is an event in InfluxDB (Grafana annotations), with its evidence.
        events = eventually(lambda: server.points(f"SELECT * FROM events WHERE model = '{MODEL}'", db), timeout=20)
        kinds = [e["kind"] for e in events]
        assert {"drift", "retrain", "deploy"} <= set(kinds), kinds
        drift = next(e for e in events if e["kind"] == "drift")
        assert drift["version"] == base and drift["changed_devices"] >= 2 and drift["score_psi"] > 0
        assert any(e["kind"] == "deploy" and e["version"] == new for e in events)
        assert loop.store.count(MODEL) > RETRAIN["min_train_samples"]
    finally:
        if publisher is not None:
            publisher.close()
        if bridge is not None:
            bridge.stop(timeout_s=15)
        codes = terminate_all(*edges, timeout=30)
        if watch is not None:
            watch.close()
    assert codes == [0] * DEVICES, logs(*edges)


def burst_windows(publisher: FleetPublisher) -> set[tuple[str, int]]:
    """Every (device, seq) of a window that holds a reading of the broken machine: neither normal nor an
    ordinary fault (a window spans two readings; its seq is its last)."""
    span = publisher.burst_seqs
    device = f"dev-{BURST.device:03d}"
    return {(device, s) for s in range(span[0], span[1] + 3)} if span else set()
