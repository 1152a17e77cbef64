"""The drift phase of ``make demo`` (and the run behind ``benchmarks/closed_loop.py``).

What it shows, on one machine with its own mosquitto and InfluxDB: a fleet of
simulated machines served by one edge process (signed deployment and
sampling on) and the bridge with its closed loop. At ``drift_at_s`` every
machine changes regime; the anomaly rate climbs; the bridge detects the
drift, retrains on the field samples in a worker process, gates, signs and
deploys the new model; the anomaly rate comes back while faults are still
flagged. Progress lines while it runs, a scorecard at the end.

It ends ``after_s`` after the edge reports the new model, or at once when the
loop cannot get there: a retrain the worker or its gate refused, a job that
failed, a rollout the canary refused, or the edge process gone. That is
printed the moment it is seen, with its reason, and is the result's
``failure`` (``max_s`` of publishing without a new model is one too).

Default speeds (real time, 8 machines, drift at 40 s) are the ones the
targets in docs/closed-loop.md refer to.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lab.loopscenario import (
    MODEL,
    FleetPublisher,
    FleetWatch,
    Timeline,
    edge_process,
    figures,
    loop_bridge_config,
    seed_registry,
)
from lab.scorecard import print_card

NODE = "demo-edge"
DB = "edgeloop"
#: Drift monitor and retrain settings of the demo (real time): a 20 s window, evaluated every 5 s.
DRIFT = {"window_s": 20, "interval_s": 5, "consecutive": 3, "min_samples": 100, "min_device_samples": 15,
         "baseline_samples": 30, "cooldown_s": 900}
RETRAIN = {"targets": [NODE], "min_train_samples": 1500, "wait_for_samples_s": 120, "epochs": 40,
           "canary_timeout_s": 120, "rollout_timeout_s": 120, "timeout_s": 300}
FRACTION = 0.5  # a demo on a free link: production keeps a few percent (docs/closed-loop.md)


def run_drift_demo(
    devices: int = 8,
    rate_hz: float | None = None,
    drift_at_s: float = 40.0,
    after_s: float = 40.0,
    max_s: float = 300.0,
    stop: threading.Event | None = None,
    quiet: bool = False,
    workdir: Path | None = None,
    drift: dict[str, Any] | None = None,
    retrain: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the scenario; return the figures (timeline delays, quality before/during/after, versions)
    and ``failure`` (None, or why no new model reached the edge). ``drift`` / ``retrain``: overrides of
    ``DRIFT`` / ``RETRAIN``."""
    from edgeloop.bridge.app import Bridge
    from lab.servers import InfluxDB1, Mosquitto, eventually
    from edgeloop.signing import generate_keypair

    started = time.monotonic()
    stop = stop or threading.Event()
    say = (lambda *_a, **_k: None) if quiet else print
    rate = rate_hz or 1000.0 / 64  # real time: one 64-sample vibration reading every 64 ms
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edgeloop-drift-demo-"))
    logging.getLogger().setLevel(logging.WARNING)
    say(f"edgeloop demo, closed loop: {devices} machines at {rate / (1000 / 64):g}x real time, regime change at "
        f"{drift_at_s:.0f}s; drift detection, retrain, signed redeploy; it ends {after_s:.0f}s after the edge runs "
        f"the new model (about 4 min in real time), or at once if the loop cannot get there (at most "
        f"{max_s:.0f}s of publishing)\n  work dir {workdir}")
    with Mosquitto(workdir / "mosquitto") as broker, InfluxDB1(workdir / "influxdb") as influx:
        influx.create_database(DB)
        private, public, _ = generate_keypair(workdir / "keys")
        base = seed_registry(workdir / "registry")
        watch = FleetWatch(broker.port)
        edge = edge_process(workdir, NODE, "sensors/+/vibration", broker.url, public, FRACTION, seed=1)
        bridge = Bridge(loop_bridge_config(broker.url, influx.url, DB, workdir, private, {**DRIFT, **(drift or {})},
                                           {**RETRAIN, **(retrain or {})}))
        publisher = None
        timeline = Timeline()
        failure = None
        try:
            bridge.start(10)
            loop = bridge.loop
            eventually(lambda: watch.node_version(NODE) == base, timeout=60, message="edge did not come online")
            say(f"  broker {broker.url}  influxdb {influx.url} (database {DB})  edge {NODE} runs {MODEL} {base}\n")
            publisher = FleetPublisher(broker.port, devices, rate, drift_at_s, seed=42, anomaly_rate=0.002,
                                       max_s=max_s)
            publisher.start()
            eventually(lambda: publisher.start_wall > 0, timeout=10)
            timeline.drift_onset = publisher.drift_wall
            done_at = None
            last_print, seen = 0.0, 0
            while not stop.is_set() and publisher.is_alive():
                stop.wait(1.0)
                now = time.time()
                if loop.triggers and timeline.detected is None:
                    timeline.detected = loop.triggers[0]["at"]
                job = loop.jobs().get(MODEL) or {}
                timeline.registered = job.get("registered", timeline.registered)
                timeline.deployed = job.get("deployed", timeline.deployed)
                new = job.get("version") if job.get("state") == "deployed" else None
                timeline.new_version = new
                if new and timeline.fleet_on_new is None and watch.node_version(NODE) == new:
                    timeline.fleet_on_new = watch.first_on(NODE, new)
                    done_at = now + after_s
                if now - last_print >= 5.0:
                    rows = watch.results()
                    recent = rows[seen:]
                    seen, last_print = len(rows), now
                    rate_now = sum(r.anomaly for r in recent) / len(recent) if recent else 0.0
                    t = now - publisher.start_wall
                    phase = "before drift" if t < drift_at_s else ("new model" if timeline.fleet_on_new else "drifted")
                    say(f"  t={t:5.0f}s  {phase:<12}  results {len(rows):6d}  flagged (last 5s) {rate_now:6.1%}  "
                        f"model {watch.node_version(NODE) or '-'}  loop: {job.get('state', 'watching')}", flush=True)
                if done_at is not None and now >= done_at:
                    break
                failure = job_failure(job) or (None if edge.alive() else
                                               f"the edge process exited (code {edge.returncode}; see {edge.log_path})")
                if failure is not None:
                    say(f"  t={now - publisher.start_wall:5.0f}s  {failure}", flush=True)
                    break
            if failure is None and done_at is None and not stop.is_set():
                failure = (f"no new model on the edge after {max_s:.0f} s of publishing "
                           f"(loop: {(loop.jobs().get(MODEL) or {}).get('state', 'no drift detected')})")
        finally:
            if publisher is not None:
                publisher.close()
            bridge.stop(timeout_s=15)
            edge_rc = edge.terminate(30)
            watch.close()
        rows = watch.results()
        events = influx.points(f"SELECT * FROM events WHERE model = '{MODEL}'", DB)
    quality = figures(rows, publisher.faults, timeline.drift_onset, timeline.new_version, base)
    result = {
        "devices": devices,
        "rate_per_device_hz": rate,
        "speed_vs_real_time": rate / (1000 / 64),
        "drift_at_s": drift_at_s,
        "base_version": base,
        "new_version": timeline.new_version,
        "delays_s": timeline.delays(),
        "quality": quality,
        "events": sorted({e["kind"] for e in events}),
        "edge_exit_code": edge_rc,
        "workdir": str(workdir),
        "failure": failure,
        "interrupted": stop.is_set(),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    if not quiet:
        print_scorecard(result)
    return result


#: Job states (edgeloop.bridge.retrainflow.RetrainRun.state) after which no new model will come.
DEAD_ENDS = {
    "refused": "retrain refused",
    "failed": "retrain job failed",
    "stopped": "retrain stopped",
    "canary_failed": "rollout stopped: the canary refused the new model",
    "incomplete": "rollout incomplete",
}


def job_failure(job: dict[str, Any]) -> str | None:
    """``"retrain refused: <reason>"`` for a job (``ClosedLoop.jobs()`` entry) in a dead end, else None."""
    what = DEAD_ENDS.get(job.get("state", ""))
    if what is None:
        return None
    reason = job.get("error") or job.get("reason") or (job.get("deploy") or {}).get("reason") or "no reason given"
    return f"{what}: {reason}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def print_scorecard(result: dict[str, Any]) -> None:
    d, q = result["delays_s"], result["quality"]

    def secs(v: float | None) -> str:
        return "did not happen" if v is None else f"{v:.0f} s after the onset"

    lines = [
        ("drift detected", secs(d["detection_s"])),
        ("new model registered", secs(d["registered_s"])),
        ("every edge on the new model", secs(d["fleet_on_new_model_s"])),
        ("model", f"{result['base_version']} -> {result['new_version'] or '(none)'}"),
        ("false-positive rate before drift", _pct(q["before"]["fpr"])),
        ("false-positive rate during drift", _pct(q["during"]["fpr"])),
        ("false-positive rate after redeploy", _pct(q["after"]["fpr"])),
        ("fault recall before drift", f"{_pct(q['before']['recall'])} of {q['before']['episodes']} episodes"),
        ("fault recall after redeploy", f"{_pct(q['after']['recall'])} of {q['after']['episodes']} episodes"),
        ("events written to InfluxDB", ", ".join(result["events"]) or "-"),
    ]
    print_card(lines)
    print(f"  (work dir {result['workdir']}: {NODE}.log, samples/, registry/, retrain-jobs/)")


def main() -> None:  # pragma: no cover -- python -m lab.loopdemo
    print(json.dumps(run_drift_demo(), indent=2, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
