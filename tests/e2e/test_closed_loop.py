"""The closed loop end to end, with real processes and servers.

Three edge processes (``edgeloop edge run``, one per simulated machine, signed
deployment and sampling on), the bridge with its closed loop (``edgeloop bridge
run``: sample store, drift monitor, retrain worker process, deployer),
mosquitto and influxd. The fleet runs 10x faster than real time:

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
The bridge is watched from outside, as an operator would: its drift
evaluations in its log (DEBUG), the loop's events in InfluxDB, the registry on
disk, the edges' statuses and results on the broker. Speed is not asserted here
(benchmarks/closed_loop.py measures it).
"""

from __future__ import annotations

import re
import time

import pytest

from lab.configs import bridge_config, closed_loop, write_config
from lab.procs import CliProcess, logs, terminate_all
from lab.servers import eventually

from edgeloop.bridge.loopconfig import SampleStoreSettings
from edgeloop.bridge.registry import Registry
from edgeloop.bridge.samples import SampleStore
from edgeloop.signing import generate_keypair
from lab.loopscenario import (
    MODEL,
    Burst,
    FleetPublisher,
    FleetWatch,
    edge_process,
    figures,
    seed_registry,
)

DEVICES = 3
RATE_HZ = 156.25  # readings per second per device: 10x real time
BURST = Burst(device=2, anomaly_rate=0.3)
DRIFT = {"window_s": 5, "interval_s": 1, "consecutive": 3, "min_samples": 60, "min_device_samples": 20,
         "baseline_samples": 40, "cooldown_s": 600}
# The gate's test split is small here (a few hundred windows); the outcome that matters is asserted
# below on thousands of windows scored by the deployed model.
# The loop waits for its samples (and the worker trains) as long as a loaded machine needs: these are caps, and
# the job goes on as soon as it has 1,500 samples (~11 s at this rate when idle; over 60 s with the load of
# eight test runs on two cores).
RETRAIN = {"targets": ["edge-*"], "min_train_samples": 1500, "wait_for_samples_s": 300, "epochs": 30, "max_fpr": 0.04,
           "canary_timeout_s": 120, "rollout_timeout_s": 120, "timeout_s": 400}


# Each phase waits for its event, so a busy machine makes the run longer, not different (the retrain
# worker's TensorFlow import and training: 30 s idle, 65 s with one core taken): the cap is the phases'.
@pytest.mark.timeout(1500)
def test_drift_is_detected_retrained_deployed_and_the_anomaly_rate_returns(mosquitto, influx_db, tmp_path):
    server, db = influx_db
    private, public, _ = generate_keypair(tmp_path / "keys")
    base = seed_registry(tmp_path / "registry")
    config = write_config(tmp_path / "bridge.yaml", bridge_config(
        mosquitto.url, server.url, db, closed_loop(tmp_path, private, DRIFT, RETRAIN)))
    edges, publisher, watch, bridge = [], None, None, None
    try:
        watch = FleetWatch(mosquitto.port)
        for i in range(DEVICES):
            node = f"edge-{i}"
            edges.append(edge_process(tmp_path, node, f"sensors/dev-{i:03d}/vibration", mosquitto.url, public,
                                      fraction=0.3, seed=i))
        bridge = CliProcess(["--log-level", "DEBUG", "bridge", "run", "-c", str(config)], tmp_path / "bridge.log").start()
        running = [bridge, *edges]
        watch.wait_online("edgeloop-bridge", bridge)
        # Online (retained, published after the edge's SUBSCRIBE on the same connection): subscribed.
        eventually(lambda: all(watch.node_version(f"edge-{i}") == base for i in range(DEVICES)), timeout=60,
                   message="edges not online with the bundled model", alive=running)

        publisher = FleetPublisher(mosquitto.port, DEVICES, RATE_HZ, None, burst=BURST)
        publisher.start()

        def until(condition, timeout: float, what: str):  # noqa: ANN001, ANN202
            """eventually() on the live processes, failing with the loop's state at the deadline."""
            try:
                return eventually(condition, timeout=timeout, interval=0.5, message=what, alive=running)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; evaluations {evaluations()[-8:]} events {events()} "
                                     f"published {publisher.published}\n{logs(bridge)}") from exc

        def evaluations() -> list[tuple]:
            """(at, status, compared, changed, mismatched) of every drift evaluation the bridge logged."""
            return [(float(at), status, *map(int, counts)) for at, status, *counts in EVALUATION.findall(bridge.log())]

        def evaluated_since(wall: float) -> list[tuple]:
            return [e for e in evaluations() if e[0] > wall]

        def events(kind: str | None = None) -> list[dict]:
            where = f" AND kind = '{kind}'" if kind else ""
            return server.points(f"SELECT * FROM events WHERE model = '{MODEL}'{where}", db)

        # 1. Baselines, then the burst: one device of three changes, for long enough, and nothing triggers.
        until(lambda: any(status != "insufficient" and compared == DEVICES
                          for _at, status, compared, _c, _m in evaluations()),
              60, "the monitor never compared every device with its baseline")
        burst_wall = publisher.start_wall + publisher.start_burst()

        def burst_seen_in_a_row() -> bool:
            recent = evaluated_since(burst_wall)[-DRIFT["consecutive"]:]
            return len(recent) == DRIFT["consecutive"] and all(
                status != "insufficient" and changed + mismatched >= 1 for _at, status, _n, changed, mismatched
                in recent)

        until(burst_seen_in_a_row, 60, f"the monitor never saw dev-002's burst {DRIFT['consecutive']} times in a row")
        publisher.end_burst()
        burst_over = time.time()  # the broken machine's last reading went out before the switch returned
        assert len(publisher.burst_faults) > 20
        # An evaluation whose window holds none of the burst (and still no trigger).
        until(lambda: evaluated_since(burst_over + DRIFT["window_s"]), 60, "no evaluation after the burst")
        assert events("drift") == [] and "event drift" not in bridge.log(), (
            f"a single device's burst of faults triggered a retrain: {events()}; evaluations {evaluations()[-12:]}"
        )

        # 2. The regime change: detected, retrained, deployed to every edge.
        drift_wall = publisher.start_wall + publisher.start_drift()
        assert drift_wall == publisher.drift_wall
        trigger = until(lambda: events("drift"), 90, "no drift trigger")[0]
        assert trigger["version"] == base and trigger["changed_devices"] >= 2 and trigger["score_psi"] > 0
        registry = Registry(tmp_path / "registry")

        def no_refused_retrain() -> bool:
            return not events("refused")

        running.append(no_refused_retrain)  # a failed retrain job ends the wait at once, with its event
        deploy = until(lambda: [e for e in events("deploy") if e["version"] != base], 900,
                       "retrain/deploy did not finish")[0]
        new = deploy["version"]
        # The "deploy" event marks the fleet rollout's publication; the registry's current follows once the
        # fleet runs the new version (docs/deployment.md, "registry and fleet agree").
        until(lambda: registry.current(MODEL) == new, 300, "the registry's current did not follow the fleet")
        assert registry.record(MODEL, new)["parent"] == base
        _, meta = registry.get(MODEL, new)
        assert meta.training.parent == base and meta.reference.feature_quantiles
        until(lambda: all(watch.node_version(f"edge-{i}") == new for i in range(DEVICES)), 60,
              "not every edge reports the new version")

        # 3. Enough windows scored by the new model, including some injected faults.
        def after_redeploy() -> bool:
            rows = [r for r in watch.results() if r.model_version == new]
            return len(rows) > 3000 and figures(rows, publisher.faults, drift_wall, new, base)["after"][
                "episodes"] >= 5

        until(after_redeploy, 60, "too few windows or faults after the redeploy")
        publisher.close()
        q = figures(watch.results(), publisher.faults, drift_wall, new, base,
                    excluded=set(publisher.burst_faults) | burst_windows(publisher))
        before, during, after = q["before"], q["during"], q["after"]
        assert before["normal_windows"] > 2000 and during["normal_windows"] > 500, q
        assert during["fpr"] > 3 * before["fpr"], f"the drift did not raise the anomaly rate: {q}"
        assert after["fpr"] <= max(1.5 * before["fpr"], 0.01), f"anomaly rate did not come back: {q}"
        assert after["recall"] >= 0.8, f"faults after the redeploy are not flagged: {q}"

        # Every step is an event in InfluxDB (Grafana annotations), with its evidence.
        kinds = [e["kind"] for e in events()]
        assert {"drift", "retrain", "deploy"} <= set(kinds) and "refused" not in kinds, kinds
    finally:
        if publisher is not None:
            publisher.close()
        codes = terminate_all(*([bridge] if bridge is not None else []), *edges, timeout=30)
        if watch is not None:
            watch.close()
    assert codes == [0] * (DEVICES + 1), logs(bridge, *edges)
    store = SampleStore(SampleStoreSettings(enabled=True, dir=tmp_path / "samples"))
    assert store.count(MODEL) > RETRAIN["min_train_samples"]  # the field samples it retrained on, on disk


#: One drift evaluation in the bridge's log (edgeloop.bridge.drift, DEBUG).
EVALUATION = re.compile(r"drift evaluation \S+ at=([\d.]+): (\w+) \(devices \d+, compared (\d+), changed (\d+), "
                        r"mismatched (\d+)\)")


def burst_windows(publisher: FleetPublisher) -> set[tuple[str, int]]:
    """Every (device, seq) of a window that holds a reading of the broken machine: neither normal nor an
    ordinary fault (a window spans two readings; its seq is its last)."""
    span = publisher.burst_seqs
    device = f"dev-{BURST.device:03d}"
    return {(device, s) for s in range(span[0], span[1] + 3)} if span else set()
