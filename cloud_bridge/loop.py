"""The closed loop inside the bridge: samples -> store + drift monitor -> retrain -> registry -> deploy.

Threads and hand-offs (why: ingestion of results must never wait on any of this,
and nothing here may wait on training):

    paho network thread (own MQTT link: samples/+/+ and the retrain command topic)
        --(topic, payload, received)--> Queue(bounded; full: dropped and counted)
    loop thread        decode + validate SampleBatch (bad input: counted, logged, dead-lettered),
                       store.add + monitor.observe; every drift.interval_s monitor.evaluate();
                       store flush and retention; the retrain schedule; starts retrain jobs
    retrain job thread (one per model at a time) waits for enough samples, then runs the one
                       retrain flow (edgeloop.bridge.retrainflow, also `edgeloop model retrain`):
                       the worker *process* (edgeloop.bridge.training.retrain), registers a
                       candidate that passed the gate, asks the Deployer to roll it out (canary
                       first if configured); writes an event at every step

What one device can send is bounded at the loop thread, before the store and the
monitor (``edgeloop.bridge.admission``, docs/security.md): samples of a
(model, version) that is neither in the registry nor announced in a node's
retained ``status/{node}`` (this link subscribes ``status/+`` too), rows whose
width is not the registry model's input width, and anything past the device's
row and byte budget (``samples.device_budget_*``) are dead-lettered with the
reason. Feature rows are held as float32 arrays, not Python lists.

Triggers: sustained drift (``DriftMonitor``), ``{"model": NAME}`` on
``retrain.command_topic`` (``commands/bridge/retrain``; ``edgeloop model
retrain NAME --request``), ``retrain.schedule_s``, and :meth:`request_retrain`.
Every trigger starts the model's cooldown, and a model has at most one job.

Events (``edgeloop.bridge.events``, measurement ``events``, tags model + kind):
``drift`` (the trigger and its statistics), ``retrain`` (requested / candidate
passed the gate, with its metrics), ``refused`` (gate or job failure), and the
deployer's ``deploy`` / ``refused`` / ``rollback``.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeloop.bridge.admission import BUDGET, UNKNOWN, WIDTH, DeviceBudget, KnownVersions
from edgeloop.bridge.config import BridgeConfig
from edgeloop.bridge.drift import DriftMonitor, Trigger
from edgeloop.bridge.events import EventWriter
from edgeloop.bridge.retrainflow import RetrainRun, connect_deployer, retrain_and_deploy
from edgeloop.bridge.samples import SampleStore
from edgeloop.errors import ConfigError
from edgeloop.mqtt import Message, MqttLink
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.rejects import Rejects
from edgeloop.contract import (
    ContractError,
    TopicLevel,
    decode_frame_sample,
    decode_samples,
    decode_status,
    parse_sample_topic,
    parse_status_topic,
)
from edgeloop.modelfile import ModelMetadata

log = logging.getLogger("edgeloop.bridge.loop")

SAMPLES_FILTER = "samples/+/+"
STATUS_FILTER = "status/+"
QUEUE_SIZE = 10_000
RETENTION_EVERY_S = 600.0
MAX_COMMAND_BYTES = 4096
JOBS_KEPT = 5


class RetrainCommand(BaseModel):
    """Payload of the retrain command topic."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: TopicLevel
    since_s: float | None = Field(default=None, gt=0, description="train on samples of the last N seconds")


@dataclass
class _Job:
    run: RetrainRun
    thread: threading.Thread
    started: float
    done: bool = False  # set when the job thread ends (is_alive() is False before start() too)


class ClosedLoop:
    """``start()``, ``stop()``, ``request_retrain()``, ``stats()``. Built and started by the Bridge."""

    def __init__(self, cfg: BridgeConfig, events: EventWriter | None = None, workdir: Path | None = None,
                 known: KnownVersions | None = None) -> None:
        self.cfg = cfg
        problems = []
        if cfg.retrain.enabled and not cfg.samples.enabled:
            problems.append("retrain.enabled needs samples.enabled (training reads the sample store)")
        if problems:
            raise ConfigError("bridge config", problems)
        self.store = SampleStore(cfg.samples) if cfg.samples.enabled else None
        self.registry = None
        if cfg.retrain.enabled or cfg.drift.enabled:
            from edgeloop.bridge.registry import Registry

            self.registry = Registry(cfg.retrain.registry)
        self.monitor = DriftMonitor(cfg.drift, reference_for=self._reference) if cfg.drift.enabled else None
        #: The versions samples may carry (shared with the Bridge's result path) and each device's budget.
        self.known = known if known is not None else KnownVersions.for_config(cfg)
        sm = cfg.samples
        self.budget = DeviceBudget(sm.device_budget_rows, sm.device_budget_bytes, sm.device_budget_period_s,
                                   cfg.store.max_devices)
        self.events = events if events is not None else EventWriter(None, cfg.influx.tags)
        self._events_lock = threading.Lock()
        # Job files (job.json, result.json, worker.log, the candidate) beside the sample store.
        self.workdir = Path(workdir or Path(cfg.samples.dir).parent / "retrain-jobs")
        self.deployer = None
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-loop", daemon=True)
        self._jobs: dict[str, _Job] = {}
        self._jobs_lock = threading.Lock()
        self.history: deque[dict[str, Any]] = deque(maxlen=1000)  # recent events, for the demo and tests
        self._log = RateLimitedLog(log)
        self._last_schedule: dict[str, float] = {}
        self._models_seen: set[str] = set()
        self.received = self.dropped_queue_full = self.batches = self.frame_samples = self.ignored_statuses = 0
        #: Age of the last sample message when the loop thread took it: a loop falling behind shows here
        #: first (the drift monitor's window counts from arrival, so a lag past ``window_s`` starves it).
        self.lag_s = 0.0
        self.triggers: list[dict[str, Any]] = []
        subscriptions = [(SAMPLES_FILTER, 1), (STATUS_FILTER, 1)] if (self.store or self.monitor) else []
        if cfg.retrain.enabled:
            subscriptions.append((cfg.retrain.command_topic, 1))
        client_id = f"{cfg.mqtt.client_id or 'edgeloop-bridge'}-loop"
        self._link = MqttLink(cfg.mqtt_for("loop").model_copy(update={"client_id": client_id}), client_id,
                              on_message=self._on_message, subscriptions=subscriptions)
        self.rejects = Rejects("bridge", log, publish=lambda t, p: self._link.publish(t, p, qos=0))

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float | None = 10.0) -> None:
        rt = self.cfg.retrain
        if rt.enabled and rt.deploy:
            client_id = f"{self.cfg.mqtt.client_id or 'edgeloop-bridge'}-deployer"
            self.deployer = connect_deployer(self.cfg, self.registry, self.event, client_id, wait_s=wait_s or 10.0)
        self._thread.start()
        self._link.start(wait_s)
        if wait_s:
            self._link.barrier(min(wait_s, 5.0))  # subscribed (SUBACK) before start() returns

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop intake, flush the store, end jobs (a running worker process is killed)."""
        self._link.unsubscribe_all(min(2.0, timeout_s))
        self._stop.set()
        self._thread.join(timeout_s)
        with self._jobs_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            if job.run.proc is not None and job.run.proc.poll() is None:
                job.run.proc.kill()
            job.thread.join(timeout_s)
        if self.store is not None:
            self.store.flush()
        self._link.stop()
        if self.deployer is not None:
            self.deployer.close()

    def event(self, model: str, kind: str, message: str, version: str | None = None, **fields: Any) -> None:
        """Write one loop event (thread-safe); also kept in ``history`` for tests and the demo."""
        with self._events_lock:
            self.history.append({"ts": time.time(), "model": model, "kind": kind, "message": message,
                                 "version": version, **fields})
            self.events(model, kind, message, version, **fields)

    # ------------------------------------------------------------------ network thread

    def _on_message(self, msg: Message) -> None:
        """paho's thread: hand off. (The link catches anything raised here; edgeloop/mqtt.py.)"""
        self.received += 1
        try:
            self._queue.put_nowait(("msg", msg.topic, msg.payload, time.time()))
        except queue.Full:
            self.dropped_queue_full += 1
            self._log.warning("queue_full", "loop queue full (%d): dropped a sample message", QUEUE_SIZE)

    def request_retrain(self, model: str, trigger: str = "api", since: float | None = None,
                        evidence: dict[str, float] | None = None) -> None:
        """Ask for a retrain of ``model`` (any thread); handled by the loop thread."""
        self._queue.put(("retrain", model, trigger, since, evidence or {}))

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        drift_every = self.cfg.drift.interval_s if self.monitor else None
        now = time.time()
        next_eval = now + drift_every if drift_every else None
        next_retention = now + RETENTION_EVERY_S
        while not self._stop.is_set():
            timeout = 0.5 if next_eval is None else max(0.0, min(0.5, next_eval - time.time()))
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._handle(item)
                now = time.time()
                if self.store is not None and self.store.flush_due(now):
                    self.store.flush()
                if next_eval is not None and now >= next_eval:
                    next_eval = now + drift_every
                    for trigger in self.monitor.evaluate(now):
                        self._on_drift(trigger)
                if self.store is not None and now >= next_retention:
                    next_retention = now + RETENTION_EVERY_S
                    self.store.enforce_retention(now)
                self._schedule(now)
            except Exception:
                log.exception("closed loop step failed")

    def _handle(self, item: tuple) -> None:
        if item[0] == "retrain":
            _, model, trigger, since, evidence = item
            self._start_job(model, trigger, since, evidence)
            return
        _, topic, payload, received = item
        self.lag_s = time.time() - received
        if topic == self.cfg.retrain.command_topic:
            self._command(topic, payload)
            return
        if topic.startswith("status/"):
            self._status(topic, payload)
            return
        try:
            device, model = parse_sample_topic(topic)
            if not self.budget.take(device, 0, len(payload), received):  # before decoding: that costs CPU
                raise ContractError(BUDGET, f"device {device} is past its budget of "
                                    f"{self.cfg.samples.device_budget_bytes} bytes per "
                                    f"{self.cfg.samples.device_budget_period_s:g} s (samples.device_budget_bytes)")
            try:
                batch = decode_samples(payload, self.cfg.max_payload_bytes)
            except ContractError:
                if self._is_frame_sample(payload):
                    return
                raise
            if batch.device != device or batch.model != model:
                raise ContractError("topic_mismatch", f"payload {batch.device}/{batch.model} != topic {device}/{model}")
            self._admit(batch, received)
        except ContractError as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return
        self.batches += 1
        self._models_seen.add(model)
        if self.store is not None:
            self.store.add(batch, received)
        if self.monitor is not None:
            self.monitor.observe(batch, received)

    def _admit(self, batch, received: float) -> None:
        """Raise ContractError unless ``batch`` is of a known version, of its model's width, within budget."""
        model, version = batch.model, batch.model_version
        if self.cfg.store.known_versions != "off" and not self.known.is_known(model, version):
            raise ContractError(UNKNOWN, f"{model} {version!r} is neither in the registry nor announced in a "
                                "node's status: not deployed")
        width = self.known.width(model, version)
        if width is not None and len(batch.rows[0].features) != width:
            raise ContractError(WIDTH, f"rows of {len(batch.rows[0].features)} features; {model} {version} "
                                f"takes {width}")
        if not self.budget.take(batch.device, len(batch.rows), 0, received):
            raise ContractError(BUDGET, f"device {batch.device} is past its budget of "
                                f"{self.cfg.samples.device_budget_rows} rows per "
                                f"{self.cfg.samples.device_budget_period_s:g} s (samples.device_budget_rows)")

    def _status(self, topic: str, payload: bytes) -> None:
        """A node's retained status: the versions it runs. Bad ones are the result path's to dead-letter."""
        try:
            node = parse_status_topic(topic)
            if payload:
                status = decode_status(payload, self.cfg.max_payload_bytes)
                if status.node == node:
                    self.known.announce(status)
        except ContractError:
            self.ignored_statuses += 1

    def _is_frame_sample(self, payload: bytes) -> bool:
        """Camera frames kept by the edge (``FrameSample``, stage "frame") share the topic; the
        feature store and the drift monitor do not use them: counted and skipped, not rejected."""
        try:
            decode_frame_sample(payload, self.cfg.max_payload_bytes)
        except ContractError:
            return False
        self.frame_samples += 1
        return True

    def _command(self, topic: str, payload: bytes) -> None:
        try:
            if len(payload) > MAX_COMMAND_BYTES:
                raise ContractError("oversized", f"command of {len(payload)} bytes")
            cmd = RetrainCommand.model_validate_json(payload)
        except ValidationError as exc:
            self.rejects.reject(topic, payload, "invalid_schema", str(exc.errors()[0]["msg"]))
            return
        except ContractError as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            return
        since = time.time() - cmd.since_s if cmd.since_s else None
        self._start_job(cmd.model, "mqtt", since, {})

    def _schedule(self, now: float) -> None:
        every = self.cfg.retrain.schedule_s
        if not (self.cfg.retrain.enabled and every):
            return
        for model in list(self._models_seen):
            last = self._last_schedule.setdefault(model, now)
            if now - last >= every:
                self._last_schedule[model] = now
                self._start_job(model, "schedule", now - every, {})

    def _on_drift(self, trig: Trigger) -> None:
        self.triggers.append({"at": trig.at, "since": trig.since, "model": trig.model, "cohort": trig.cohort})
        self.event(trig.model, "drift", trig.message, trig.version, cohort=trig.cohort, since=trig.since, **trig.evidence)
        if self.cfg.retrain.enabled:
            self._start_job(trig.model, "drift", trig.since, trig.evidence)

    # ------------------------------------------------------------------ retrain jobs

    def _start_job(self, model: str, trigger: str, since: float | None, evidence: dict[str, float]) -> None:
        if not self.cfg.retrain.enabled:
            log.warning("retrain of %s requested (%s) but retrain is not enabled", model, trigger)
            return
        with self._jobs_lock:
            running = self._jobs.get(model)
            if running is not None and not running.done:
                log.info("retrain of %s requested (%s) while one is running: ignored", model, trigger)
                return
            if self.monitor is not None:
                self.monitor.cooldown(model)
            thread = threading.Thread(
                target=self._job, args=(model, trigger, since), name=f"retrain-{model}", daemon=True
            )
            self._jobs[model] = _Job(RetrainRun(model, trigger), thread, time.time())
        if trigger != "drift":
            self.event(model, "retrain", f"retrain requested ({trigger})", None, trigger=trigger)
        thread.start()

    def _enough_samples(self, model: str, since: float | None) -> int:
        rt = self.cfg.retrain
        deadline = time.time() + rt.wait_for_samples_s
        count = 0
        while not self._stop.is_set():
            self.store.flush()
            count = self.store.count(model, since=since, reasons=("random",))
            if count >= rt.min_train_samples or time.time() >= deadline:
                return count
            self._stop.wait(1.0)
        return count

    def _job(self, model: str, trigger: str, since: float | None) -> None:
        """Wait for enough samples, then the one retrain flow (edgeloop.bridge.retrainflow)."""
        job = self._jobs[model]
        try:
            count = self._enough_samples(model, since)
            if self._stop.is_set():
                return
            work = self.workdir / f"{model}-{int(time.time() * 1000)}"
            for old in sorted(self.workdir.glob(f"{model}-*"))[:-(JOBS_KEPT - 1)]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("retraining %s (%s) on %d samples since %s", model, trigger, count, since)
            run = retrain_and_deploy(job.run, since, settings=self.cfg.retrain, store_dir=self.cfg.samples.dir,
                                     registry=self.registry, workdir=work, events=self.event,
                                     deployer=self.deployer, stop=self._stop)
            if self.monitor is not None and "registered" in run.timeline and run.state != "failed":
                self.monitor.cooldown(model)  # the new version needs its own baselines first
        except Exception as exc:
            job.run.state, job.run.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("retrain job of %s failed", model)
            self.event(model, "refused", f"retrain job failed: {job.run.error}", None, trigger=trigger)
        finally:
            job.done = True

    # ------------------------------------------------------------------ introspection

    def _reference(self, model: str, version: str) -> ModelMetadata | None:
        if self.registry is None or version not in self.registry.versions(model):
            return None
        return self.registry.get(model, version)[1]

    def jobs(self) -> dict[str, dict[str, Any]]:
        with self._jobs_lock:
            jobs = dict(self._jobs)
        return {
            m: {
                "trigger": j.run.trigger, "state": j.run.state, "started": j.started, "alive": not j.done,
                "error": j.run.error, "version": getattr(j.run.result, "version", None),
                "reason": getattr(j.run.result, "reason", None),
                "deploy": j.run.deploy.as_dict() if j.run.deploy is not None else None, **j.run.timeline,
            }
            for m, j in jobs.items()
        }

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "batches": self.batches,
            "frame_samples_skipped": self.frame_samples,
            "ignored_statuses": self.ignored_statuses,
            "known_versions": self.known.stats(),
            "dropped_queue_full": self.dropped_queue_full,
            "queue_depth": self._queue.qsize(),
            "lag_s": round(self.lag_s, 3),
            "rejected": dict(self.rejects.by_reason),
            "store": self.store.stats() if self.store else None,
            "drift": self.monitor.stats() if self.monitor else None,
            "triggers": list(self.triggers),
            "jobs": self.jobs(),
        }


def publish_retrain_request(mqtt: Any, model: str, since_s: float | None = None,
                            topic: str | None = None) -> None:
    """What ``edgeloop model retrain NAME --request`` does: ask a running bridge to retrain.

    ``mqtt``: MqttSettings (URL, TLS, credentials; ``edgeloop.commands.fleet_mqtt``)."""
    from edgeloop.bridge.loopconfig import RETRAIN_COMMAND_TOPIC
    from edgeloop.mqtt import redact_url, wait_for_all

    link = MqttLink(mqtt, f"edgeloop-retrain-request-{int(time.time() * 1000) % 10**9}")
    link.start(wait_s=10.0)
    try:
        payload = json.dumps({"model": model, **({"since_s": since_s} if since_s else {})})
        info = link.publish(topic or RETRAIN_COMMAND_TOPIC, payload, qos=1)
        if not wait_for_all([info], 10.0):
            raise ConfigError("command line", [f"the broker at {redact_url(mqtt.url)} did not acknowledge the request"])
    finally:
        link.stop()
