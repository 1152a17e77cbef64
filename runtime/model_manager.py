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
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.edge import model_store
from edgeloop.errors import ModelError
from edgeloop.rejects import Rejects
from edgeloop.signing import VerifyKey
from edgeloop.edge.config import EdgeConfig, PipelineSettings
from edgeloop.contract import ContractError, DeployState
from edgeloop.deploy_contract import (
    DeployRefused,
    ModelManifest,
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

log = logging.getLogger("edgeloop.deploy")

INBOX_SIZE = 1024

_STOP = object()
_WAKE = object()


@dataclass
class _Transfer:
    manifest: ModelManifest
    deadline: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    bad_chunks: int = 0


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
        self.key = VerifyKey.load(self.settings.public_key_file)
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
        self._swapper = ModelSwapper(self.settings, self.counters, self._set_state,
                                     self._keep if self.settings.state_dir is not None else None, self._running)
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
            manifest = verify_manifest(payload, self.key)
            if manifest.model != model:
                raise DeployRefused("invalid_manifest", f"manifest for {manifest.model} on the topic of {model}")
        except DeployRefused as exc:
            version, deploy_id = _best_effort_ids(payload)
            if self._seen.get(model) == f"refused:{deploy_id}:{exc.reason}":
                return  # the same retained refusal, redelivered on reconnect
            self._seen[model] = f"refused:{deploy_id}:{exc.reason}"
            self._refuse(model, version, deploy_id, exc.reason, str(exc), topic, payload)
            return
        transfer = self._transfers.get(model)
        if not manifest.targets_node(self.cfg.node_id):
            if transfer is not None and transfer.manifest.deploy_id != manifest.deploy_id:
                self._cancel(model)  # superseded by a deployment for other nodes
            self.counters["deploy_not_targeted"] += 1
            return
        if transfer is not None and transfer.manifest.deploy_id == manifest.deploy_id:
            self._subscribe_chunks(manifest)  # reconnected mid-transfer: the retained chunks come again
            return
        if self._seen.get(model) == manifest.deploy_id:
            return
        self._cancel(model)
        self._seen[model] = manifest.deploy_id
        if self._running.get(model) == (manifest.version, manifest.sha256):
            self.counters["deploy_already_running"] += 1
            return
        if manifest.size > self.settings.max_artifact_bytes:
            self._refuse_manifest(
                manifest, "too_large", f"artifact of {manifest.size} bytes exceeds {self.settings.max_artifact_bytes}"
            )
            return
        self._transfers[model] = _Transfer(manifest, time.monotonic() + self.settings.chunk_timeout_s)
        self._set_state(model, manifest, "receiving")
        log.info("receiving %s %s (%d bytes, %d chunks)", model, manifest.version, manifest.size, manifest.chunks)
        self._subscribe_chunks(manifest)

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
        transfer.chunks[index] = payload
        transfer.deadline = time.monotonic() + self.settings.chunk_timeout_s
        if len(transfer.chunks) == manifest.chunks:
            self._cancel(model)
            self._prepare(manifest, b"".join(transfer.chunks[i] for i in range(manifest.chunks)))

    def _expire(self) -> None:
        now = time.monotonic()
        for model, transfer in list(self._transfers.items()):
            if now >= transfer.deadline:
                self._cancel(model)
                manifest = transfer.manifest
                detail = (
                    f"{len(transfer.chunks)} of {manifest.chunks} chunks after {self.settings.chunk_timeout_s:g}s "
                    f"without progress"
                )
                if transfer.bad_chunks:
                    detail += f" ({transfer.bad_chunks} chunks of the wrong length)"
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
                payload: bytes) -> None:
        self.counters["deploys_refused"] += 1
        log.warning("refused deployment of %s %s: %s: %s", model, version, reason, detail[:300])
        self.rejects.reject(topic, payload, reason, f"{model} {version}: {detail}")
        self._set_state(model, None, "refused", version=version, deploy_id=deploy_id, reason=reason, detail=detail)

    def _refuse_manifest(self, manifest: ModelManifest, reason: str, detail: str) -> None:
        self._refuse(manifest.model, manifest.version, manifest.deploy_id, reason, detail,
                     deploy_topic(manifest.model), b"")

    # ------------------------------------------------------------------ worker thread and state_dir

    def service(self, engine: Engine, publish: Publish) -> None:
        """Called by the worker between batches (runtime/model_swap.py)."""
        self._swapper.service(engine, publish)

    @property
    def _handoff(self):
        return self._swapper.handoff

    def _keep(self, prepared: PreparedModel, previous: TfliteModel) -> None:
        """From the worker: hand the disk writes to the manager thread."""
        self._persist.put((prepared, previous))
        try:
            self._inbox.put_nowait(_WAKE)
        except queue.Full:
            pass  # the manager thread is busy and will get to it

    def _drain_persist(self) -> None:
        while True:
            try:
                prepared, previous = self._persist.get_nowait()
            except queue.Empty:
                return
            try:
                model_store.keep(self.settings.state_dir, prepared.content, prepared.manifest.metadata,
                                 prepared.manifest.deploy_id, previous)
            except (OSError, ModelError) as exc:
                log.warning("could not keep %s in %s: %s", prepared.manifest.model, self.settings.state_dir, exc)

    def restore(self, engine: Engine) -> None:
        """At startup: serve the model kept in ``state_dir`` (current, else previous) instead of the configured one."""
        if self.settings.state_dir is not None:
            self._running.update(model_store.restore(self.settings.state_dir, self.cfg, engine))


def run_selftest(model: TfliteModel, manifest: ModelManifest) -> str | None:
    """None if the model reproduces the manifest's self-test outputs, else what differs."""
    test = manifest.selftest
    inputs = np.asarray(test.inputs, dtype=np.float32)
    expected = np.asarray(test.expected, dtype=np.float32)
    rows = inputs.shape[0]
    if inputs.size != rows * int(np.prod(model.input_shape)):
        return f"self-test rows have {inputs.shape[1]} values, the model takes {model.input_shape}"
    try:
        actual = model.run(inputs.reshape(rows, *model.input_shape))
    except (ModelError, ValueError) as exc:
        return f"self-test inference failed: {exc}"
    if actual.shape != expected.shape:
        return f"self-test outputs have shape {actual.shape}, expected {expected.shape}"
    if not np.all(np.isfinite(actual)):
        return "self-test outputs are not finite"
    close = np.isclose(actual, expected, atol=test.atol, rtol=test.rtol)
    if not close.all():
        worst = float(np.max(np.abs(actual - expected)))
        return f"{int((~close).sum())} of {close.size} self-test outputs outside tolerance (max |diff| {worst:.3g})"
    return None


def _best_effort_ids(payload: bytes) -> tuple[str, str | None]:
    """Version and deploy id of a manifest that did not verify, for the report only."""
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "unknown", None
    if not isinstance(obj, dict):
        return "unknown", None
    version = obj.get("version")
    deploy_id = obj.get("deploy_id")
    version = version[:64] if isinstance(version, str) and version else "unknown"
    deploy_id = deploy_id[:32] if isinstance(deploy_id, str) and deploy_id.isalnum() and deploy_id.isascii() else None
    return version, deploy_id
