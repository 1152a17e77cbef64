"""Edge side of signed over-the-air deployment: receive, verify, prepare, swap, judge, roll back.

Why a thread of its own: verifying, reassembling and loading a model and
running its self-test take milliseconds to seconds; none of it may stall
paho's network thread or the inference worker. The worker only ever does
two cheap things, in :meth:`ModelManager.service` at the top of its loop:

* swap in a fully prepared runner (after flushing pending windows with the
  old model, so each window gets exactly one result, and carrying the
  stream's window state over, so no window is lost), and
* judge a freshly swapped model over its first ``deploy.canary_windows``
  windows, against the proven model shadow-running on the same windows
  (edgeloop.edge.probation: invalid outputs, latency, anomaly rate, blind),
  and swap the previous model back if it fails.

Flow on the manager thread::

    models/{model}/deploy   -> verify signature (configured public key), then schema;
                               targets this node? size under the limit? -> subscribe to
                               models/{model}/{version}/chunk/+ (retained chunks arrive)
    .../chunk/{i}           -> length check, keep; all there -> sha256 -> load interpreter
                               -> tensor spec vs pipeline -> self-test -> hand to the worker

Every refusal (reasons in ``edgeloop.deploy_contract.REFUSAL_REASONS``) keeps
the current model serving, is reported in ``NodeStatus.last_deploy`` and is
dead-lettered on ``deadletter/edge``. A deployment that stays healthy is
written to ``deploy.state_dir`` (``{model}/current`` and ``{model}/previous``)
so a restarted node comes back on it.

Order and memory (``edgeloop.edge.deploy_ledger``): every signed manifest's
fate is recorded on disk before the edge acts on it. A manifest whose ``seq``
is not above the newest recorded one is refused as ``replayed``; the newest
one delivered again (the retained manifest after a restart) is not acted on
twice: a refused or rolled-back deployment is only reported again, one the
edge died with (``installing`` at startup) is refused as ``interrupted``.
Untrusted bytes are first loaded, allocated and self-tested in a child
process with a time limit (``edgeloop.edge.model_trial``), so a model that
crashes or hangs the interpreter is refused (``load_failed``, ``timeout``)
while the edge keeps serving. Strings from manifests that did not verify are
never logged or reported raw.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgeloop.childproc import printable
from edgeloop.contract import TOPIC_LEVEL_PATTERN
from edgeloop.edge import model_store
from edgeloop.edge.deploy_ledger import DeployLedger, Entry
from edgeloop.edge.model_trial import run_selftest, trial
from edgeloop.edge.outbox import default_state_dir
from edgeloop.errors import ConfigError, ModelError
from edgeloop.rejects import Rejects
from edgeloop.signing import VerifyKey
from edgeloop.edge.config import EdgeConfig, PipelineSettings
from edgeloop.contract import ContractError, DeployState
from edgeloop.deploy_contract import (
    DeployRefused,
    ModelManifest,
    chunk_digest,
    chunk_filter,
    deploy_topic,
    expected_chunk_length,
    parse_chunk_topic,
    parse_deploy_topic,
    verify_manifest,
)
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.model_swap import ModelSwapper, PreparedModel, Publish
from edgeloop.edge.stages import PipelineError

__all__ = ["ModelManager", "run_selftest"]

log = logging.getLogger("edgeloop.deploy")

INBOX_SIZE = 1024
#: Times a stalled transfer is started over (chunk topics subscribed again, so the broker resends the
#: retained chunks) before it is refused as ``incomplete``: chunks dropped by a full inbox come back.
TRANSFER_ATTEMPTS = 3

_STOP = object()
_WAKE = object()
_LEVEL_RE = re.compile(TOPIC_LEVEL_PATTERN)
#: Remembered states that end a deployment: the same manifest delivered again is reported, not acted on.
_FINAL = ("refused", "rolled_back")
#: Refusals that a redelivery of the same manifest tries again: chunks lost or substituted on the way.
_RETRYABLE = ("incomplete", "hash_mismatch")


@dataclass
class _Transfer:
    manifest: ModelManifest
    deadline: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    bad_chunks: int = 0
    attempts: int = 1


class ModelManager:
    """One per edge process; ``start()``/``stop()`` its thread, ``offer()`` from paho, ``service()`` from the worker."""

    def __init__(
        self,
        cfg: EdgeConfig,
        engine: Engine,
        rejects: Rejects,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = cfg.deploy
        self.keys = [VerifyKey.load(path) for path in self.settings.trusted_key_files]
        ledger_dir = self.settings.state_dir or default_state_dir() / f"deploy-{cfg.node_id}"
        try:
            self.ledger = DeployLedger(ledger_dir)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("deploy.state_dir", [f"cannot open the deployment ledger in {ledger_dir}: {exc}"]) from None
        self.rejects = rejects
        self.on_change = on_change
        self.counters: Counter[str] = Counter()
        self._pipelines: dict[str, PipelineSettings] = {p.sensor: p for p in cfg.pipelines}
        self._sensor_of: dict[str, str] = {r.model.name: s for s, r in engine.runners.items()}
        self._running: dict[str, tuple[str, str]] = {
            r.model.name: (r.model.version, r.model.sha256) for r in engine.runners.values()
        }
        self._inbox: queue.Queue = queue.Queue(INBOX_SIZE)
        self._persist: queue.Queue = queue.Queue()
        self._transfers: dict[str, _Transfer] = {}
        self._seen: dict[str, str] = {}  # model -> deploy_id already acted on
        self._states: dict[str, DeployState] = {}
        self._lock = threading.Lock()
        self._link: Any = None
        self._swapper = ModelSwapper(self.settings, self.counters, self._report_from_worker, self._keep, self._running)
        self._interrupted()
        self._thread = threading.Thread(target=self._run, name="edgeloop-deploy", daemon=True)

    # ------------------------------------------------------------------ wiring

    def subscriptions(self) -> list[tuple[str, int]]:
        """The retained manifests of the models this node runs (QoS 1)."""
        return [(deploy_topic(name), 1) for name in sorted(self._sensor_of)]

    def attach(self, link: Any) -> None:
        """The MqttLink used to (un)subscribe chunk topics while a transfer runs (the link restores them
        after a reconnect, so a transfer survives a clean-session reconnect)."""
        self._link = link

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        try:
            self._inbox.put(_STOP, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self.ledger.close()

    def states(self) -> dict[str, DeployState]:
        with self._lock:
            return dict(self._states)

    def offer(self, topic: str, payload: bytes) -> None:
        """From paho's network thread: queue and return. A full inbox drops (counted); the transfer
        then times out as ``incomplete`` and is reported like any other refusal."""
        try:
            self._inbox.put_nowait((topic, payload))
        except queue.Full:
            self.counters["deploy_inbox_full"] += 1

    # ------------------------------------------------------------------ manager thread

    def _run(self) -> None:
        while True:
            deadlines = [t.deadline for t in self._transfers.values()]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.5
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._drain_persist()
                break
            try:
                if item is not None and item is not _WAKE:
                    self._handle(*item)
                self._expire()
                self._drain_persist()
            except Exception as exc:
                log.exception("deployment handling failed")
                self.counters["deploy_internal_errors"] += 1
                if isinstance(item, tuple):
                    self.rejects.reject(item[0], item[1], "internal_error", repr(exc))

    def _handle(self, topic: str, payload: bytes) -> None:
        try:
            if topic.endswith("/deploy"):
                self._on_manifest(parse_deploy_topic(topic), topic, payload)
            else:
                self._on_chunk(topic, payload)
        except ContractError as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))

    def _on_manifest(self, model: str, topic: str, payload: bytes) -> None:
        if model not in self._sensor_of:
            self.counters["deploy_other_model"] += 1
            return
        if not payload:  # retained manifest cleared: abandon a transfer of it
            self._cancel(model)
            return
        try:
            manifest = verify_manifest(payload, self.keys)
            if manifest.model != model:
                raise DeployRefused("invalid_manifest", f"manifest for {manifest.model} on the topic of {model}")
        except DeployRefused as exc:
            version, deploy_id = _best_effort_ids(payload)
            if self._seen.get(model) == f"refused:{deploy_id}:{exc.reason}:{version}":
                return  # the same retained refusal, redelivered on reconnect
            self._seen[model] = f"refused:{deploy_id}:{exc.reason}:{version}"
            self._refuse(model, version, deploy_id, exc.reason, str(exc), topic, payload, authoritative=False)
            return
        transfer = self._transfers.get(model)
        if transfer is not None and transfer.manifest.deploy_id == manifest.deploy_id:
            self._subscribe_chunks(manifest)  # reconnected mid-transfer: the retained chunks come again
            return
        if self._seen.get(model) in (manifest.deploy_id, f"replay:{manifest.deploy_id}"):
            return  # acted on in this process already
        try:
            entry = self._remembered(manifest)
        except DeployRefused as exc:
            self._seen[model] = f"replay:{manifest.deploy_id}"
            self.counters["deploys_replayed"] += 1
            self._refuse(model, manifest.version, manifest.deploy_id, exc.reason, str(exc), topic, payload,
                         authoritative=False)  # a stale manifest says no more about the deployment in hand
            return
        self._seen[model] = manifest.deploy_id
        if entry is not None and self._settled(manifest, entry):
            return
        if not manifest.targets_node(self.cfg.node_id):
            if transfer is not None:
                self._cancel(model)  # superseded by a deployment for other nodes
            self.counters["deploy_not_targeted"] += 1
            self._record(manifest, "not_targeted")
            return
        self._cancel(model)
        if self._running.get(model) == (manifest.version, manifest.sha256):
            self.counters["deploy_already_running"] += 1
            self._record(manifest, "running")
            return
        if manifest.size > self.settings.max_artifact_bytes:
            self._refuse_manifest(
                manifest, "too_large", f"artifact of {manifest.size} bytes exceeds {self.settings.max_artifact_bytes}"
            )
            return
        self._record(manifest, "receiving")
        self._transfers[model] = _Transfer(manifest, time.monotonic() + self.settings.chunk_timeout_s)
        self._set_state(model, manifest, "receiving")
        log.info("receiving %s %s (%d bytes, %d chunks, seq %s)", model, manifest.version, manifest.size,
                 manifest.chunks, manifest.seq)
        self._subscribe_chunks(manifest)

    def _remembered(self, manifest: ModelManifest) -> Entry | None:
        """The ledger's row of this very publication if the edge acted on it before (it is redelivered:
        the retained manifest after a reconnect or restart); DeployRefused if it is older than the newest
        manifest recorded for the model (``replayed``) or lacks a seq after a sequenced one (``unsequenced``)."""
        head = self.ledger.head(manifest.model)
        if manifest.seq is None:
            if head is not None:
                raise DeployRefused("unsequenced", f"manifest {manifest.deploy_id} has no seq, but this node recorded "
                                                   f"seq {head.seq} ({head.version}, deploy {head.deploy_id})")
            return self.ledger.get(manifest.model, manifest.deploy_id)  # an older deployer: known by deploy id only
        if head is None:
            return None
        if head.deploy_id == manifest.deploy_id:
            return head
        if manifest.seq <= head.seq:
            raise DeployRefused("replayed", f"seq {manifest.seq} is not above seq {head.seq} ({head.version}, deploy "
                                            f"{head.deploy_id}, {head.state}) this node recorded: an old manifest "
                                            f"published again; deploy anew to roll back")
        return None

    def _settled(self, manifest: ModelManifest, entry: Entry) -> bool:
        """True if the remembered ``entry`` of ``manifest`` leaves nothing to do (report it again if it ended
        badly); False to go on as with a new manifest (a transfer cut short, a kept model that did not load)."""
        model = manifest.model
        if entry.state in _FINAL and entry.reason not in _RETRYABLE:
            self.counters["deploys_remembered"] += 1
            log.info("%s %s (deploy %s) was %s before (%s); not tried again", model, manifest.version,
                     manifest.deploy_id, entry.state, entry.reason)
            self._set_state(model, manifest, entry.state, reason=entry.reason, detail=entry.detail)
            return True
        if entry.state in ("healthy", "running"):
            if self._running.get(model) == (manifest.version, manifest.sha256):
                self.counters["deploy_already_running"] += 1
                return True
        return False

    def _interrupted(self) -> None:
        """At startup: a deployment still ``installing`` is one this edge died with (while loading it in its
        own process, or while it was on probation). Refuse it for good, so the retained manifest does not
        make the edge load it again on every start."""
        for entry in self.ledger.installing():
            detail = ("the edge process stopped while this model was being loaded or on probation (crash, kill or "
                      "restart); it is not tried again: deploy it anew to retry")
            self.ledger.mark_interrupted(entry, detail)
            log.warning("deployment of %s %s (deploy %s) was interrupted by the edge stopping: refused, not retried",
                        entry.model, entry.version, entry.deploy_id)
            self.counters["deploys_refused"] += 1
            self._states[entry.model] = DeployState(version=entry.version, state="refused", ts=time.time(),
                                                    deploy_id=entry.deploy_id, reason="interrupted", detail=detail)

    def _record(self, manifest: ModelManifest, state: str, reason: str | None = None, detail: str | None = None) -> None:
        self.ledger.record(manifest.model, manifest.deploy_id, manifest.seq, manifest.version, manifest.sha256,
                           state, reason, detail)

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        model, version, index = parse_chunk_topic(topic)
        transfer = self._transfers.get(model)
        if transfer is None or transfer.manifest.version != version or not payload:
            self.counters["deploy_stale_chunks"] += 1
            return
        manifest = transfer.manifest
        if index >= manifest.chunks or len(payload) != expected_chunk_length(manifest.size, manifest.chunk_size, index):
            transfer.bad_chunks += 1
            self.rejects.reject(topic, payload, "bad_chunk", f"chunk {index} of {manifest.chunks}: {len(payload)} bytes")
            return
        if manifest.chunk_digests is not None and chunk_digest(payload) != manifest.chunk_digests[index]:
            transfer.bad_chunks += 1
            self.rejects.reject(topic, payload, "bad_chunk", f"chunk {index} of {manifest.chunks}: digest differs "
                                                             f"from the manifest's (substituted or corrupted)")
            return
        transfer.chunks[index] = payload
        transfer.deadline = time.monotonic() + self.settings.chunk_timeout_s
        if len(transfer.chunks) == manifest.chunks:
            self._cancel(model)
            self._prepare(manifest, b"".join(transfer.chunks[i] for i in range(manifest.chunks)))

    def _expire(self) -> None:
        now = time.monotonic()
        for model, transfer in list(self._transfers.items()):
            if now >= transfer.deadline:
                if transfer.attempts < TRANSFER_ATTEMPTS:
                    transfer.attempts += 1
                    transfer.deadline = now + self.settings.chunk_timeout_s
                    self.counters["deploy_transfer_retries"] += 1
                    log.info("%s %s: %d of %d chunks after %gs; subscribing again (attempt %d of %d)", model,
                             transfer.manifest.version, len(transfer.chunks), transfer.manifest.chunks,
                             self.settings.chunk_timeout_s, transfer.attempts, TRANSFER_ATTEMPTS)
                    if self._link is not None:
                        self._link.unsubscribe(chunk_filter(model, transfer.manifest.version))
                    self._subscribe_chunks(transfer.manifest)
                    continue
                self._cancel(model)
                manifest = transfer.manifest
                detail = (
                    f"{len(transfer.chunks)} of {manifest.chunks} chunks after {transfer.attempts} attempts of "
                    f"{self.settings.chunk_timeout_s:g}s without progress"
                )
                if transfer.bad_chunks:
                    detail += f" ({transfer.bad_chunks} chunks dropped: wrong length or digest)"
                self._refuse_manifest(manifest, "incomplete", detail)

    def _prepare(self, manifest: ModelManifest, content: bytes) -> None:
        """Everything that can refuse a model, done before the worker sees it."""
        from edgeloop.modelfile import sha256_bytes

        actual = sha256_bytes(content)
        if actual != manifest.sha256:
            self._refuse_manifest(manifest, "hash_mismatch", f"artifact sha256 {actual[:16]}... != manifest {manifest.sha256[:16]}...")
            return
        sensor = self._sensor_of[manifest.model]
        settings = self._pipelines[sensor]
        started = time.monotonic()
        try:
            trial(content, manifest, num_threads=settings.model.num_threads, max_batch=self.cfg.batching.max_batch,
                  timeout_s=self.settings.trial_timeout_s)
        except DeployRefused as exc:
            self._refuse_manifest(manifest, exc.reason, str(exc))
            return
        self.counters["deploy_trial_ms"] = round((time.monotonic() - started) * 1000)
        self._record(manifest, "installing")  # from here until judged: an edge that dies now will not retry it
        try:
            model = TfliteModel.from_bytes(
                content, manifest.metadata, num_threads=settings.model.num_threads, max_batch=self.cfg.batching.max_batch
            )
        except ModelError as exc:
            self._refuse_manifest(manifest, "load_failed", str(exc))
            return
        try:
            runner = PipelineRunner.build(settings, model)
        except (ModelError, PipelineError) as exc:
            self._refuse_manifest(manifest, "spec_mismatch", str(exc))
            return
        problem = run_selftest(model, manifest)
        if problem:
            self._refuse_manifest(manifest, "selftest_failed", problem)
            return
        self._handoff.append(PreparedModel(sensor, runner, manifest, content))
        self.counters["deploys_prepared"] += 1

    def _subscribe_chunks(self, manifest: ModelManifest) -> None:
        if self._link is not None:
            self._link.subscribe(chunk_filter(manifest.model, manifest.version), qos=1)

    def _cancel(self, model: str) -> None:
        transfer = self._transfers.pop(model, None)
        if transfer is not None and self._link is not None:
            self._link.unsubscribe(chunk_filter(model, transfer.manifest.version))

    # ------------------------------------------------------------------ reporting

    def _set_state(self, model: str, manifest: ModelManifest | None, state: str, version: str | None = None,
                   deploy_id: str | None = None, reason: str | None = None, detail: str | None = None,
                   windows: int | None = None) -> None:
        new = DeployState(
            version=(manifest.version if manifest else version) or "unknown",
            state=state,
            ts=time.time(),
            deploy_id=manifest.deploy_id if manifest else deploy_id,
            reason=reason,
            detail=detail[:1024] if detail else None,
            windows=windows,
        )
        with self._lock:
            self._states[model] = new
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # noqa: BLE001 -- reporting must not undo a decision
                log.warning("could not publish status: %s", exc)

    def _refuse(self, model: str, version: str, deploy_id: str | None, reason: str, detail: str, topic: str,
                payload: bytes, authoritative: bool = True) -> None:
        """Count, log (printable only), dead-letter and report. A manifest that did not verify, or a
        replayed one (not ``authoritative``), does not replace the report of a deployment in progress:
        anyone who may publish on ``models/#`` could otherwise hide it."""
        self.counters["deploys_refused"] += 1
        detail = printable(detail, 1024)
        log.warning("refused deployment of %s %s: %s: %s", model, version, reason, detail[:300])
        self.rejects.reject(topic, payload, reason, f"{model} {version}: {detail}")
        with self._lock:
            current = self._states.get(model)
        if not authoritative and current is not None and current.state in ("receiving", "canary"):
            return
        self._set_state(model, None, "refused", version=version, deploy_id=deploy_id, reason=reason, detail=detail)

    def _refuse_manifest(self, manifest: ModelManifest, reason: str, detail: str) -> None:
        self._record(manifest, "refused", reason, printable(detail, 1024))
        if reason in _RETRYABLE:
            self._seen.pop(manifest.model, None)  # the retained manifest, redelivered, tries the transfer again
        self._refuse(manifest.model, manifest.version, manifest.deploy_id, reason, detail,
                     deploy_topic(manifest.model), b"")

    # ------------------------------------------------------------------ worker thread and state_dir

    def service(self, engine: Engine, publish: Publish) -> None:
        """Called by the worker between batches (runtime/model_swap.py)."""
        self._swapper.service(engine, publish)

    @property
    def _handoff(self):
        return self._swapper.handoff

    def _report_from_worker(self, model: str, manifest: ModelManifest | None, state: str, **fields) -> None:
        """The swapper's reports; a verdict (healthy, rolled back) is also written to the ledger, by the
        manager thread (the worker does no disk I/O), before the model is kept in ``state_dir``."""
        self._set_state(model, manifest, state, **fields)
        if manifest is not None and state in ("healthy", "rolled_back"):
            self._defer(lambda: self._record(manifest, state, fields.get("reason"), fields.get("detail")))

    def _keep(self, prepared: PreparedModel, previous: TfliteModel) -> None:
        """From the worker: a model passed probation; the manager thread writes it to ``state_dir``."""
        if self.settings.state_dir is not None:
            self._defer(lambda: self._keep_now(prepared, previous))

    def _defer(self, job: Callable[[], None]) -> None:
        self._persist.put(job)
        try:
            self._inbox.put_nowait(_WAKE)
        except queue.Full:
            pass  # the manager thread is busy and will get to it

    def _keep_now(self, prepared: PreparedModel, previous: TfliteModel) -> None:
        try:
            model_store.keep(self.settings.state_dir, prepared.content, prepared.manifest.metadata,
                             prepared.manifest.deploy_id, previous)
        except (OSError, ModelError) as exc:
            log.warning("could not keep %s in %s: %s", prepared.manifest.model, self.settings.state_dir, exc)

    def _drain_persist(self) -> None:
        """Disk writes handed over by the worker, in the order it asked for them."""
        while True:
            try:
                job = self._persist.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except Exception as exc:  # noqa: BLE001 -- a failed write must not stop the manager thread
                log.warning("could not record a deployment outcome: %s", exc)

    def restore(self, engine: Engine) -> None:
        """At startup: serve the model kept in ``state_dir`` (current, else previous) instead of the configured one."""
        if self.settings.state_dir is not None:
            self._running.update(model_store.restore(self.settings.state_dir, self.cfg, engine))


def _best_effort_ids(payload: bytes) -> tuple[str, str | None]:
    """Version and deploy id of a manifest that did not verify, for the report only: kept only if they
    have the shape the schema allows (a topic level; hex), so they cannot carry a newline into a log line."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "unknown", None
    if not isinstance(obj, dict):
        return "unknown", None
    version = obj.get("version")
    deploy_id = obj.get("deploy_id")
    version = version if isinstance(version, str) and _LEVEL_RE.fullmatch(version) else "unknown"
    deploy_id = deploy_id if isinstance(deploy_id, str) and re.fullmatch(r"[0-9a-f]{8,32}", deploy_id) else None
    return version, deploy_id
