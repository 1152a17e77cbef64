"""One retrain from start to finish: train (worker process) -> gate -> register -> deploy.

Why one function: the bridge's closed loop (``edgeloop.bridge.loop``: on
drift, on a schedule, on a command) and ``edgeloop model retrain`` (what the
Kubernetes Job runs) take the same steps and must write the same events:

    ``refused``  the gate refused the candidate (with its metrics), or a step failed
    ``retrain``  a candidate passed the gate (metrics, duration), before it is registered
    and the deployer's own ``deploy`` / ``refused`` / ``rollback`` while it rolls out.

Training runs in a worker process (``edgeloop.bridge.training.retrain``), so
the caller never blocks on TensorFlow and can stop it: ``stop`` kills the
worker, and so does ``retrain.timeout_s``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgeloop.bridge.config import BridgeConfig
from edgeloop.bridge.events import EventSink
from edgeloop.bridge.loopconfig import RetrainSettings
from edgeloop.modelfile import load_model_files

log = logging.getLogger("edgeloop.bridge.retrain")


@dataclass
class RetrainRun:
    """The live state of one retrain (the closed loop reports it while it runs).

    ``state``: waiting -> training -> refused | registered [-> deploying -> the deploy
    outcome]; failed (an exception, written as a ``refused`` event); stopped.
    """

    model: str
    trigger: str
    state: str = "waiting"
    proc: subprocess.Popen | None = None
    result: Any = None  # RetrainResult
    deploy: Any = None  # DeployReport
    error: str | None = None
    timeline: dict[str, float] = field(default_factory=dict)


def connect_deployer(cfg: BridgeConfig, registry: Any, events: EventSink, client_id: str | None = None,
                     wait_s: float = 10.0, mqtt: Any = None) -> Any:
    """A Deployer with the signing key and rollout settings of ``retrain:`` (its own MQTT connection):
    ``mqtt`` (whose client id it keeps), else ``cfg.mqtt`` under ``client_id``."""
    from edgeloop.bridge.deployer import Deployer
    from edgeloop.signing import SigningKey

    rt = cfg.retrain
    mqtt = mqtt if mqtt is not None else cfg.mqtt_for("deployer").model_copy(update={"client_id": client_id})
    return Deployer.connect(
        mqtt, registry, SigningKey.load(rt.signing_key_file),
        client_id=mqtt.client_id, wait_s=wait_s, chunk_size=rt.chunk_size, canary_timeout_s=rt.canary_timeout_s,
        rollout_timeout_s=rt.rollout_timeout_s, events=events,
    )


def _wait(proc: subprocess.Popen, timeout_s: float, stop: threading.Event | None) -> int:
    """The worker's exit code; killed when ``timeout_s`` passes or ``stop`` is set."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return proc.wait(max(0.0, min(0.5, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                proc.kill()
                return proc.wait()


def retrain_and_deploy(
    run: RetrainRun,
    since: float | None,
    *,
    settings: RetrainSettings,
    store_dir: Path,
    registry: Any,
    workdir: Path,
    events: EventSink,
    deployer: Any = None,
    stop: threading.Event | None = None,
    worker_output: IO | None = None,
) -> RetrainRun:
    """Train a candidate of ``run.model`` on the samples since ``since``, gate it, register it and
    (with a ``deployer``) roll it out to ``settings.targets``, canary first. Never raises: a failure
    is ``run.state == "failed"`` and a ``refused`` event. ``worker_output``: default ``workdir/worker.log``."""
    from edgeloop.bridge.training.retrain import RetrainJob, read_result, start_worker

    model, trigger = run.model, run.trigger
    try:
        run.state, run.timeline["worker_started"] = "training", time.time()
        spec = RetrainJob(model=model, store_dir=store_dir, registry_dir=registry.root, out_dir=workdir / "candidate",
                          since=since, trigger=trigger, settings=settings)
        run.proc, result_path = start_worker(spec, workdir, output=worker_output)
        code = _wait(run.proc, settings.timeout_s, stop)
        if stop is not None and stop.is_set():
            run.state = "stopped"
            return run
        result = run.result = read_result(result_path, model, code)
        run.timeline["worker_done"] = time.time()
        if not result.passed:
            run.state = "refused"
            events(model, "refused", result.reason, result.version, trigger=trigger, **result.metrics)
            return run
        events(model, "retrain", f"candidate {result.version} from {result.parent} ({trigger}): {result.reason}",
               result.version, trigger=trigger, duration_s=result.duration_s, **result.metrics)
        content, meta = load_model_files(result.candidate)
        registry.add(model, content, meta, parent=result.parent, actor=f"retrain:{trigger}")
        run.state, run.timeline["registered"] = "registered", time.time()
        if deployer is not None:
            run.state = "deploying"
            run.deploy = deployer.deploy(model, result.version, settings.targets, settings.canary or None)
            run.timeline["deployed"] = time.time()
            run.state = run.deploy.outcome
            log.info("deploy of %s %s: %s %s", model, result.version, run.deploy.outcome, run.deploy.reason or "")
    except Exception as exc:  # noqa: BLE001 -- reported as an event; the caller (a loop thread) goes on
        run.state, run.error = "failed", f"{type(exc).__name__}: {exc}"
        log.exception("retrain of %s failed", model)
        events(model, "refused", f"retrain job failed: {run.error}", None, trigger=trigger)
    return run
