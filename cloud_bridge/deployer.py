"""Signed over-the-air deployment of a registry version to the fleet, canary first.

Why over MQTT: a device needs no other open port and no other credentials;
the broker ACL that already pins its topics decides what it may read.

``deploy(name, version, targets="*", canary=[...])``:

1. read the artifact and metadata from the registry (sha256 checked), try it
   in a child process (load it, allocate every batch size, compute self-test
   outputs, within ``trial_timeout_s``: an artifact that crashes or hangs the
   interpreter is never signed, DeployError), and take the self-test vectors
   (stored with the version, else the trial's, then stored);
   each manifest gets the registry's next ``seq`` for the model, which edges
   require to grow (an old manifest published again is refused as ``replayed``);
2. publish the chunks on ``models/{model}/{version}/chunk/{i}`` (retained,
   QoS 1, acked), then the Ed25519-signed manifest on ``models/{model}/deploy``
   (retained, QoS 1), first with ``targets = canary``;
3. watch ``status/+``: each canary node must report the version in
   ``models`` and ``last_deploy.state == "healthy"`` (its own check over its
   first N windows) within ``canary_timeout_s``; a refusal, an edge-side
   rollback or the timeout fails the canary: the version is marked refused in
   the registry, a ``refused`` event is written, and the retained manifest
   goes back to the registry's current version (or is cleared), so the rest of
   the fleet never switches;
4. otherwise re-sign the manifest for ``targets`` (fleet phase), write a
   ``deploy`` event, and (``wait``) wait until the targeted online nodes
   report it.

The registry's ``current`` follows what the fleet accepted: it moves to the
new version only once at least one targeted node runs it (with ``wait``;
without, when the manifest is published). When no node accepts it (every
one refused, rolled back or stayed silent), the version is marked refused,
``current`` stays what the fleet runs, the retained manifest goes back to it,
and the audit log says so (``not_accepted``). A rollout whose targets match
no online node publishes nothing (outcome ``no_nodes``, even with ``wait=False``:
a version no node runs must not become current).

Retained chunks: the chunks of the version named by the retained manifest
stay retained, so a device that connects later still gets them; chunks of
any other version this deployer published are cleared (empty retained
payloads) on the next deploy. Which versions have retained chunks is kept in
``{registry}/{model}/published.json``.

Status routing: ``Deployer(link, ...)`` needs ``status/+`` messages passed
to :meth:`Deployer.observe` by whoever owns the link's ``on_message``;
:meth:`Deployer.connect` makes a link of its own that does exactly that.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeloop.bridge.events import EventSink
from edgeloop.bridge.registry import Registry, atomic_write, json_bytes
from edgeloop.errors import EdgeloopError
from edgeloop.mqtt import MqttLink, MqttSettings, redact_url, wait_for_all
from edgeloop.signing import SigningKey
from edgeloop.contract import ContractError, NodeStatus, decode_status, parse_status_topic
from edgeloop.deploy_contract import (
    ModelManifest,
    SelfTest,
    chunk_digest,
    chunk_topic,
    deploy_topic,
    sign_manifest,
    split_chunks,
)

log = logging.getLogger("edgeloop.bridge.deployer")

DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_STATUS_BYTES = 256 * 1024

Outcome = Literal["deployed", "published", "canary_failed", "fleet_failed", "incomplete", "no_nodes"]
#: A node state that means it runs the version (``canary``: on probation there).
ACCEPTED = ("healthy", "canary")


class DeployError(EdgeloopError):
    """A deployment that cannot start (unknown version, no canary node online, broker gone)."""


@dataclass
class DeployReport:
    """What a ``deploy`` did. ``nodes``: node -> its last state for this version
    (``healthy``, ``canary`` (on probation), ``receiving``, ``refused:<reason>``, ``rolled_back:<reason>``,
    ``silent`` (no report by the timeout)); ``current``: the registry's current version afterwards.

    ``outcome``: ``deployed`` (every targeted node runs it), ``published`` (not waited for),
    ``incomplete`` (some nodes run it, others not), ``canary_failed`` / ``fleet_failed`` (no node
    accepted it: refused, and the fleet left on ``current``), ``no_nodes`` (no online node matched:
    nothing published)."""

    model: str
    version: str
    outcome: Outcome
    canary: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    deploy_ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    current: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def ok(self) -> bool:
        return self.outcome in ("deployed", "published")

    def summary(self) -> str:
        """One line for people: what the fleet runs now and what the registry says."""
        what = f"{self.model} {self.version}"
        probation = sorted(n for n, s in self.nodes.items() if s == "canary")
        later = (f"; still on probation on {', '.join(probation)}: if a node rolls back by itself later, the "
                 f"registry still says {self.version} (`edgeloop model rollback {self.model}` then puts it back; "
                 "--wait-healthy waits for the verdict)"
                 if probation else "")
        if self.outcome == "deployed":
            return f"{what} deployed: {len(self.nodes)} node(s) run it; registry current {self.current}{later}"
        if self.outcome == "published":
            return f"{what} published without waiting for the fleet; registry current {self.current}"
        if self.outcome == "incomplete":
            return f"{what} is the registry's current, but not every node runs it: {self.reason}{later}"
        if self.outcome == "no_nodes":
            return f"nothing deployed: {self.reason}; registry current stays {self.current}"
        return (f"the fleet did not accept {what} ({self.outcome}: {self.reason}); it is marked refused, "
                f"registry current stays {self.current} and the retained manifest is back on it")


class Deployer:
    """Publishes signed deployments and follows the fleet's status. Thread-safe."""

    def __init__(
        self,
        link: MqttLink,
        registry: Registry,
        signing_key: SigningKey,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        canary_timeout_s: float = 120.0,
        rollout_timeout_s: float = 120.0,
        publish_timeout_s: float = 30.0,
        events: EventSink | None = None,
        actor: str = "deployer",
        trial_timeout_s: float = 60.0,
    ) -> None:
        self.link = link
        self.registry = registry
        self.key = signing_key
        self.chunk_size = chunk_size
        self.canary_timeout_s = canary_timeout_s
        self.rollout_timeout_s = rollout_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.events = events
        self.actor = actor
        self.trial_timeout_s = trial_timeout_s
        self._tried: dict[str, SelfTest] = {}  # sha256 -> self-test computed by a trial that passed
        self._nodes: dict[str, NodeStatus] = {}
        self._changed = threading.Condition()
        self._deploy_lock = threading.Lock()
        self.status_rejected = 0

    @classmethod
    def connect(
        cls,
        mqtt: MqttSettings,
        registry: Registry,
        signing_key: SigningKey,
        *,
        client_id: str = "edgeloop-deployer",
        wait_s: float = 10.0,
        **kwargs: Any,
    ) -> Deployer:
        """A deployer with its own MQTT connection (subscribed to ``status/+``), started."""
        holder: dict[str, Deployer] = {}
        link = MqttLink(
            mqtt,
            client_id,
            on_message=lambda msg: holder["d"].observe(msg.topic, msg.payload),
            subscriptions=[("status/+", 1)],
        )
        deployer = holder["d"] = cls(link, registry, signing_key, **kwargs)
        link.start(wait_s=wait_s)
        return deployer

    def close(self) -> None:
        self.link.stop()

    # ------------------------------------------------------------------ fleet status

    def observe(self, topic: str, payload: bytes) -> None:
        """Feed one ``status/{node}`` message (any thread). Bad payloads are counted, never raised."""
        try:
            node = parse_status_topic(topic)
            if not payload:
                status = None
            else:
                status = decode_status(payload, MAX_STATUS_BYTES)
                if status.node != node:
                    raise ContractError("topic_mismatch", f"status of {status.node} on {topic}")
        except ContractError:
            self.status_rejected += 1
            return
        with self._changed:
            if status is None:
                self._nodes.pop(node, None)
            else:
                self._nodes[node] = status
            self._changed.notify_all()

    def wait_for_fleet(self, timeout_s: float = 2.0, quiet_s: float = 0.3) -> dict[str, NodeStatus]:
        """Give the retained statuses time to arrive: a fresh connection learns the fleet from them.

        Returns once ``quiet_s`` passed without a new node after at least one, or after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._changed:
            known, last_change = len(self._nodes), time.monotonic()
            while True:
                now = time.monotonic()
                if now >= deadline or (self._nodes and now - last_change >= quiet_s):
                    break
                self._changed.wait(min(quiet_s, deadline - now))
                if len(self._nodes) != known:
                    known, last_change = len(self._nodes), time.monotonic()
        return self.nodes()

    def nodes(self, online_only: bool = True) -> dict[str, NodeStatus]:
        with self._changed:
            return {n: s for n, s in self._nodes.items() if s.state == "online" or not online_only}

    def _matching(self, patterns: list[str], name: str) -> list[str]:
        """Online nodes matching ``patterns`` that run model ``name`` (a bridge or an edge serving
        other models reports no such model and is not waited for)."""
        return sorted(
            n for n, status in self.nodes().items()
            if name in status.models and any(fnmatch.fnmatchcase(n, p) for p in patterns)
        )

    def _node_state(self, node: str, name: str, version: str, deploy_ids: set[str]) -> str | None:
        """``healthy``, ``canary``, ``receiving``, ``refused:<reason>``, ``rolled_back:<reason>`` or None (nothing yet).

        A node already running ``version`` before this deployment (it ignores
        a manifest for what it runs) counts as healthy unless that version is
        on probation there.
        """
        status = self._nodes.get(node)
        if status is None:
            return None
        state = status.last_deploy.get(name)
        running = status.models.get(name)
        runs_it = running is not None and running.version == version
        if state is not None and state.version == version and (state.deploy_id in deploy_ids or not deploy_ids):
            if state.state in ("refused", "rolled_back"):
                return f"{state.state}:{state.reason or 'unknown'}"
            if state.state == "healthy":
                return "healthy" if runs_it else None
            return state.state
        if runs_it:
            on_probation = state is not None and state.version == version and state.state == "canary"
            return "canary" if on_probation else "healthy"
        return None

    def _wait(self, name: str, version: str, nodes: list[str], deploy_ids: set[str], timeout_s: float, done_when: set[str]) -> dict[str, str]:
        """Wait until every node's state is in ``done_when`` or failed; return node -> state."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                states = {n: self._node_state(n, name, version, deploy_ids) or "silent" for n in nodes}
                finished = all(s in done_when or s.startswith(("refused", "rolled_back")) for s in states.values())
                remaining = deadline - time.monotonic()
                if finished or remaining <= 0:
                    return states
                self._changed.wait(min(remaining, 1.0))

    # ------------------------------------------------------------------ publishing

    def selftest_for(self, name: str, version: str) -> SelfTest:
        """Stored self-test vectors, else the trial's (stored in the registry)."""
        fresh = self.trial(name, version)
        stored = self.registry.selftest(name, version)
        if stored is not None:
            return stored
        self.registry.set_selftest(name, version, fresh)
        return fresh

    def trial(self, name: str, version: str) -> SelfTest:
        """Load, allocate and self-test the artifact in a child process (once per artifact and deployer);
        DeployError if it crashes, hangs or does not load: such an artifact is never signed."""
        path, meta = self.registry.get(name, version)
        if meta.sha256 not in self._tried:
            from edgeloop.bridge.training.selftest import TrialFailed, tried_selftest  # needs an interpreter

            try:
                self._tried[meta.sha256] = tried_selftest(path.read_bytes(), meta, self.trial_timeout_s)
            except TrialFailed as exc:
                raise DeployError(f"{name} {version} failed its trial in a child process and is not signed: "
                                  f"{exc}") from None
        return self._tried[meta.sha256]

    def manifest(
        self,
        name: str,
        version: str,
        targets: list[str],
        phase: Literal["canary", "fleet"] = "fleet",
        selftest: SelfTest | None = None,
    ) -> tuple[ModelManifest, bytes]:
        """The unsigned manifest for a registry version, and the artifact bytes."""
        self.trial(name, version)  # never sign what crashes or hangs the interpreter
        path, meta = self.registry.get(name, version)
        content = path.read_bytes()
        record = self.registry.record(name, version)
        manifest = ModelManifest(
            model=name,
            version=version,
            sha256=meta.sha256,
            size=len(content),
            chunk_size=self.chunk_size,
            chunks=len(split_chunks(content, self.chunk_size)),
            chunk_digests=[chunk_digest(part) for part in split_chunks(content, self.chunk_size)],
            targets=targets,
            phase=phase,
            deploy_id=uuid.uuid4().hex[:16],
            seq=self.registry.next_deploy_seq(name),
            parent=record.get("parent"),
            created=time.time(),
            metadata=meta,
            selftest=selftest or self.selftest_for(name, version),
        )
        return manifest, content

    def publish(
        self,
        name: str,
        version: str,
        targets: list[str] | str = "*",
        phase: Literal["canary", "fleet"] = "fleet",
        selftest: SelfTest | None = None,
    ) -> ModelManifest:
        """Publish chunks (if not already retained) and the signed manifest; no waiting for devices."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        manifest, content = self.manifest(name, version, targets, phase, selftest)
        self.publish_artifact(manifest, content)
        self.publish_manifest(manifest)
        return manifest

    def publish_artifact(self, manifest: ModelManifest, content: bytes, chunks: list[int] | None = None) -> None:
        """Retained chunks of one version (``chunks``: only these indexes -- tests use it to truncate).

        Published again on every manifest, even if retained before: a broker
        restarted without persistence has lost them, and a topic nobody
        subscribes to costs the broker next to nothing.
        """
        published = self._published(manifest.model)
        parts = split_chunks(content, manifest.chunk_size)
        infos = [
            self.link.publish(chunk_topic(manifest.model, manifest.version, i), part, qos=1, retain=True)
            for i, part in enumerate(parts)
            if chunks is None or i in chunks
        ]
        self._acked(infos, f"chunks of {manifest.model} {manifest.version}")
        published[manifest.version] = manifest.chunks
        self._save_published(manifest.model, published)

    def publish_manifest(self, manifest: ModelManifest, payload: bytes | None = None) -> None:
        """Sign and publish (retained); then clear retained chunks of every other version."""
        payload = sign_manifest(manifest, self.key) if payload is None else payload
        self._acked([self.link.publish(deploy_topic(manifest.model), payload, qos=1, retain=True)], "manifest")
        self.clear_chunks(manifest.model, keep=manifest.version)

    def clear_chunks(self, name: str, keep: str | None = None) -> None:
        published = self._published(name)
        infos = []
        for version, count in list(published.items()):
            if version == keep:
                continue
            infos += [self.link.publish(chunk_topic(name, version, i), b"", qos=1, retain=True) for i in range(count)]
            del published[version]
        self._acked(infos, f"clearing chunks of {name}")
        self._save_published(name, published)

    def clear(self, name: str) -> None:
        """Remove the retained manifest and every retained chunk of ``name``."""
        self._acked([self.link.publish(deploy_topic(name), b"", qos=1, retain=True)], "clearing manifest")
        self.clear_chunks(name)

    def _acked(self, infos: list, what: str) -> None:
        if not wait_for_all(infos, self.publish_timeout_s):
            raise DeployError(f"broker did not acknowledge {what} within {self.publish_timeout_s:.0f}s")

    def _published_path(self, name: str) -> Path:
        return self.registry.root / name / "published.json"

    def _published(self, name: str) -> dict[str, int]:
        path = self._published_path(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def _save_published(self, name: str, published: dict[str, int]) -> None:
        atomic_write(self._published_path(name), json_bytes(published))

    def _event(self, name: str, kind: str, message: str, version: str | None, **fields: Any) -> None:
        if self.events is not None:
            self.events(name, kind, message, version, **fields)
        else:
            log.info("%s %s %s: %s", kind, name, version, message)

    # ------------------------------------------------------------------ deploy

    def deploy(
        self,
        name: str,
        version: str,
        targets: list[str] | str = "*",
        canary: list[str] | None = None,
        *,
        wait: bool = True,
        selftest: SelfTest | None = None,
        rollback: bool = False,
        verdict: bool = False,
    ) -> DeployReport:
        """Canary (if given) then fleet. Blocks until the canary verdict and, with ``wait``, the rollout.

        ``canary``: node ids or globs, matched against the nodes online now
        (at least one must match). ``rollback``: the version is the registry's
        previous one, and accepting it rolls the registry back (rather than
        promoting it again). ``verdict``: in the fleet phase, wait for each
        node's probation verdict (``healthy`` or ``rolled_back``) rather than
        only for it to run the version, so a node that rolls back within the
        timeout counts as not accepting it (a node still on probation at the
        timeout counts as accepting). Returns a DeployReport; raises
        DeployError only when the deployment cannot start.
        """
        targets = [targets] if isinstance(targets, str) else list(targets)
        with self._deploy_lock:
            started = time.monotonic()
            report = DeployReport(model=name, version=version, outcome="published")
            try:
                self._deploy(report, targets, canary, wait, selftest, rollback, verdict)
            finally:
                report.current = self.registry.current(name)
                report.seconds = time.monotonic() - started
            return report

    def _deploy(self, report: DeployReport, targets: list[str], canary: list[str] | None, wait: bool,
                selftest: SelfTest | None, rollback: bool, verdict: bool) -> None:
        name, version = report.model, report.version
        self.registry.get(name, version)  # unknown version / tampered registry: fail before publishing
        refused = self.registry.refused(name).get(version)
        if refused is not None:
            raise DeployError(f"{name} {version} was refused ({refused}); clear that in the registry first")
        if not self._matching(targets, name):  # a typo, the wrong broker, or the fleet is offline
            report.outcome, report.reason = "no_nodes", self._no_match(name, targets)
            self._event(name, "refused", f"nothing deployed: {report.reason}", version)
            return
        if canary:
            nodes = self._matching(canary, name)
            if not nodes:
                raise DeployError(f"no online node matches canary {canary}; online: {sorted(self.nodes())}")
            report.canary = nodes
            manifest = self.publish(name, version, nodes, "canary", selftest)
            report.deploy_ids.append(manifest.deploy_id)
            self.registry.note(name, version, "deploy_canary", self.actor, canary=",".join(nodes))
            self._event(name, "deploy", f"canary on {', '.join(nodes)}", version)
            states = self._wait(name, version, nodes, {manifest.deploy_id}, self.canary_timeout_s, {"healthy"})
            report.nodes.update(states)
            failed = {n: s for n, s in states.items() if s != "healthy"}
            if failed:
                report.outcome = "canary_failed"
                report.reason = "; ".join(f"{n}: {s}" for n, s in sorted(failed.items()))
                self._rolled_back_events(name, version, failed)
                self._fail(name, version, "canary", report.reason)
                return
        manifest = self.publish(name, version, targets, "fleet", selftest)
        report.deploy_ids.append(manifest.deploy_id)
        self._event(name, "deploy", f"fleet rollout to {', '.join(targets)}", version)
        if not wait:
            self._accept(name, version, rollback, f"published to {','.join(targets)} (not waited for)")
            return
        fleet = [n for n in self._matching(targets, name) if n not in report.canary]
        done = {"healthy"} if verdict else set(ACCEPTED)
        states = self._wait(name, version, fleet, set(report.deploy_ids), self.rollout_timeout_s, done)
        report.nodes.update(states)
        bad = {n: s for n, s in states.items() if s not in ACCEPTED}
        accepted = sorted(n for n, s in report.nodes.items() if s in ACCEPTED)
        if bad:
            report.reason = "; ".join(f"{n}: {s}" for n, s in sorted(bad.items()))
            self._rolled_back_events(name, version, bad)
        if not accepted:
            report.outcome = "fleet_failed"
            self._fail(name, version, "fleet", report.reason or "no node")
            return
        self._accept(name, version, rollback, f"deployed to {','.join(targets)}; running on {','.join(accepted)}")
        report.outcome = "incomplete" if bad else "deployed"

    def _accept(self, name: str, version: str, rollback: bool, reason: str) -> None:
        """The fleet runs ``version``: make it the registry's current."""
        if rollback and self.registry.previous(name) == version:
            self.registry.rollback(name, actor=self.actor, reason=reason)
        else:
            self.registry.promote(name, version, actor=self.actor, reason=reason)

    def _no_match(self, name: str, targets: list[str]) -> str:
        """Why ``targets`` matched no node: no status seen at all, no node running ``name``, or the names."""
        with self._changed:
            seen = dict(self._nodes)
        broker = redact_url(self.link.settings.url)
        if not seen:
            return (f"no node status seen on {broker} (status/+): no edge reports to this broker "
                    "(is it the fleet's broker, and are the edges online?)")
        online = sorted(n for n, st in seen.items() if st.state == "online")
        running = sorted(n for n in online if name in seen[n].models)
        if not running:
            return f"no online node runs {name} (online: {_names(online)}; offline: {_names(sorted(set(seen) - set(online)))})"
        return f"targets {', '.join(targets)} matched none of: {_names(running)} (the online nodes running {name})"

    def _rolled_back_events(self, name: str, version: str, states: dict[str, str]) -> None:
        for node, state in sorted(states.items()):
            if state.startswith("rolled_back"):
                self._event(name, "rollback", f"{node} rolled back to its previous model: "
                            f"{self._detail(node, name) or state}", version, node=node)

    def _detail(self, node: str, name: str) -> str | None:
        with self._changed:
            status = self._nodes.get(node)
            state = status.last_deploy.get(name) if status is not None else None
        return state.detail if state is not None else None

    def _fail(self, name: str, version: str, phase: str, reason: str) -> None:
        """No node accepted ``version``: mark it refused, record that the registry's current stays what
        the fleet runs, and put the retained manifest back to it."""
        current = self.registry.current(name)
        self.registry.mark_refused(name, version, f"{phase} failed: {reason}", actor=self.actor)
        self.registry.note(name, version, "not_accepted", self.actor, phase=phase, current=current, reason=reason[:500])
        self._event(name, "refused", f"{phase} failed: {reason}; registry current stays {current}", version)
        if current is not None and current != version:
            self.publish(name, current, "*", "fleet")
        else:
            self.clear(name)


def _names(nodes: list[str], limit: int = 20) -> str:
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return (", ".join(nodes[:limit]) or "none") + more
