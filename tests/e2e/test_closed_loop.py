"""The closed loop end to end, with real processes and servers.

Three edge processes (``edgeloop edge run``, one per simulated machine, signed
deployment and sampling on), the bridge with its closed loop (sample store,
drift monitor, retrain worker process, deployer), mosquitto and influxd. The
fleet runs 10x faster than real time:

1. normal operation; then one machine (dev-002) breaks down for a while: its
   burst of faults is flagged and the monitor sees that device change, but it
   is one device of three, so nothing is retrained;
2. every machine changes regime (``drift_at_s``): the anomaly rate climbs, the
   drift is detected, a model is retrained on the field samples, gated,
   signed and deployed; every edge runs the new version;
3. the anomaly rate on the new model is back near the pre-drift level, and
   faults injected after the redeploy are still flagged.

Speed is not asserted here (benchmarks/closed_loop.py measures it).
"""

from __future__ import annotations

import time

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
BURST = Burst(device=2, start_s=7.0, end_s=13.0, anomaly_rate=0.3)  # after the baselines (window_s)
DRIFT_AT_S = 18.0
DRIFT = {"window_s": 5, "interval_s": 1, "consecutive": 3, "min_samples": 60, "min_device_samples": 20,
         "baseline_samples": 40, "cooldown_s": 600}
# The gate's test split is small here (a few hundred windows); the outcome that matters is asserted
# below on thousands of windows scored by the deployed model.
RETRAIN = {"targets": ["edge-*"], "min_train_samples": 1500, "wait_for_samples_s": 60, "epochs": 30, "max_fpr": 0.04,
           "canary_timeout_s": 60, "rollout_timeout_s": 60, "timeout_s": 180}


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
        bridge.start(10)
        loop = bridge.loop
        eventually(lambda: all(watch.node_version(f"edge-{i}") == base for i in range(DEVICES)), timeout=60,
                   message="edges not online with the bundled model")

        publisher = FleetPublisher(mosquitto.port, DEVICES, RATE_HZ, DRIFT_AT_S, burst=BURST, max_s=170)
        publisher.start()

        # 1. The burst: the monitor sees one device of three change, and does not trigger.
        def burst_seen() -> bool:
            return any(status != "insufficient" and changed + mismatched >= 1 and at < publisher.drift_wall
                       for at, _m, _c, status, changed, mismatched in list(loop.monitor.history))

        eventually(burst_seen, timeout=60, message=f"the monitor never saw dev-002's burst: {loop.stats()['drift']}")
        eventually(lambda: time.time() > publisher.start_wall + BURST.end_s and loop.monitor.history
                   and list(loop.monitor.history)[-1][0] > publisher.start_wall + BURST.end_s,
                   timeout=60, message="no evaluation after the burst")
        assert loop.triggers == [], (
            f"a single device's burst of faults triggered a retrain: {loop.triggers}; "
            f"evaluations {list(loop.monitor.history)[-12:]}"
        )
        assert len(publisher.burst_faults) > 20

        # 2. The regime change: detected, retrained, deployed to every edge.
        trigger = eventually(lambda: loop.triggers, timeout=90, message=f"no drift trigger: {loop.stats()['drift']}")[0]
        assert trigger["at"] > publisher.drift_wall
        job = eventually(lambda: (j := loop.jobs().get(MODEL)) and not j["alive"] and j, timeout=150,
                         message=f"retrain/deploy did not finish: {loop.jobs()}")
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
            return len(rows) > 3000 and figures(rows, publisher.faults, publisher.drift_wall, new, base)["after"][
                "episodes"] >= 5

        eventually(after_redeploy, timeout=60, message="too few windows or faults after the redeploy")
        publisher.close()
        q = figures(watch.results(), publisher.faults, publisher.drift_wall, new, base,
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
    """Every (device, seq) of the burst device during the burst: neither normal nor an ordinary fault."""
    seqs = [s for _, s in publisher.burst_faults]
    device = f"dev-{BURST.device:03d}"
    return {(device, s) for s in range(min(seqs), max(seqs) + 3)} if seqs else set()
