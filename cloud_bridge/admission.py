"""What the bridge admits from a device: the store and the loop take what the fleet is, not what a device says.

Why this module: the broker ACL pins a device's id (``results/{own id}/+``,
``samples/{own id}/+``, ``status/{own id}``) and nothing else. The model name,
``model_version``, ``sensor``, ``node``, ``site`` and ``ts`` of a result are
the publisher's choice, and each becomes an InfluxDB tag or a shard; the
closed loop trains on what a device sends. Measured before these checks
(issue 11): 1,000 distinct versions pushed influxd over ``max-values-per-tag``
for everyone; 500 timestamps from 1970 to 2100 opened 501 shards; one device's
made-up version made the drift monitor judge the fleet by that device alone.

- :class:`KnownVersions` -- the (model, version) pairs the fleet runs: the
  registry's versions (read-only, re-read when the model's directory changes)
  and what nodes announce in their retained ``status/{node}``. A node keeps its
  last ``announced_versions_per_model`` versions per model known, so results
  still in an edge's outbox after a swap are stored. At deploy time the edge
  publishes its status (the swap is reported) before its first result of the
  new version, and the bridge reads results and statuses from one queue in
  order; a version the deployer rolls out is in the registry before any edge
  has it. So no result of a newly deployed version needs holding back.
- :class:`TagBudget` -- per device, at most N distinct values of each tag
  within a sliding period; a result's extra ``tags`` (names its input's topic
  template bound, e.g. ``area``) count like the others, and so does the set of
  their names, so a device cannot invent tag keys without bound either.
- :class:`DeviceBudget` -- a token bucket of rows and bytes per device (samples).
- :class:`ResultGuard` -- the checks a result passes before it is encoded.

Each check names a reason (a dead-letter reason and a counter):
``unknown_model_version``, ``timestamp_out_of_range``, ``tag_cardinality``,
``device_budget``, ``feature_width``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

from edgeloop.contract import InferenceResult, NodeStatus
from edgeloop.mqttconfig import MqttSettings

from edgeloop.bridge.config import BridgeConfig, StoreSettings

log = logging.getLogger("edgeloop.bridge.admission")

#: A registry model directory is listed again at most this often when its mtime did not change, and
#: at most this often while it holds a version directory without record.json (an add under way).
REGISTRY_RELIST_S = 1.0
REGISTRY_RELIST_INCOMPLETE_S = 0.02
#: An admitted tag combination is re-checked against the tag budget at most this often.
ADMITTED_RECHECK_S = 60.0
_ADMITTED_MAX = 65_536

UNKNOWN = "unknown_model_version"
OUT_OF_RANGE = "timestamp_out_of_range"
CARDINALITY = "tag_cardinality"
BUDGET = "device_budget"
WIDTH = "feature_width"


class KnownVersions:
    """The (model, version) pairs results and samples may carry. Thread-safe."""

    def __init__(
        self,
        registry_root: Path | None,
        per_model: int = 4,
        models_per_node: int = 32,
        max_nodes: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = None
        if registry_root is not None:
            from edgeloop.bridge.registry import Registry

            self._registry = Registry(registry_root)
        self._per_model = per_model
        self._models_per_node = models_per_node
        self._max_nodes = max_nodes
        self._clock = clock
        self._lock = threading.Lock()
        #: model -> (listed at, model dir mtime_ns, versions, every version dir complete) from the registry.
        self._listed: dict[str, tuple[float, int, frozenset[str], bool]] = {}
        #: node -> model -> its last announced versions (newest last).
        self._nodes: OrderedDict[str, dict[str, deque[str]]] = OrderedDict()
        #: (model, version) -> how many nodes announce it.
        self._announced: Counter[tuple[str, str]] = Counter()
        self._widths: dict[tuple[str, str], int | None] = {}
        self._link = None
        self.counters: Counter[str] = Counter()

    @classmethod
    def for_config(cls, cfg: BridgeConfig) -> KnownVersions:
        s = cfg.store
        return cls(cfg.known_versions_registry, s.announced_versions_per_model, s.announced_models_per_node,
                   s.max_devices)

    # ------------------------------------------------------------------ status announcements

    def announce(self, status: NodeStatus) -> None:
        """Take the versions a node's status says it runs (an offline status still counts: its outbox may drain)."""
        if not status.models:
            return
        with self._lock:
            models = self._nodes.get(status.node)
            if models is None:
                models = self._nodes[status.node] = {}
                if len(self._nodes) > self._max_nodes:
                    _, forgotten = self._nodes.popitem(last=False)
                    for name, versions in forgotten.items():
                        for version in versions:
                            self._release((name, version))
            else:
                self._nodes.move_to_end(status.node)
            for name, ref in status.models.items():
                versions = models.get(name)
                if versions is None:
                    if len(models) >= self._models_per_node:
                        self.counters["announced_models_ignored"] += 1
                        continue
                    versions = models[name] = deque()
                if versions and versions[-1] == ref.version:
                    continue
                if ref.version in versions:
                    versions.remove(ref.version)
                else:
                    self._announced[(name, ref.version)] += 1
                versions.append(ref.version)
                if len(versions) > self._per_model:
                    self._release((name, versions.popleft()))

    def follow(self, settings: MqttSettings, client_id: str, wait_s: float = 5.0) -> int:
        """Subscribe ``status/+`` on a connection of its own, read every retained status before returning,
        and keep taking statuses until :meth:`close`; return how many retained ones were read.

        Why a connection of its own: a bridge restarted with a persistent session gets the results
        queued while it was away *before* the retained statuses of its subscription; and replicas
        sharing a subscription (``share_group``) each get only some statuses on their main link.
        QoS 0, so no inflight window lets the barrier's SUBACK overtake a retained status. Never
        raises: without a broker the main connection reports it.
        """
        from edgeloop.contract import ContractError, decode_status, parse_status_topic
        from edgeloop.mqtt import MqttLink

        taken = 0

        def on_message(msg) -> None:  # noqa: ANN001
            nonlocal taken
            try:
                if msg.payload:
                    status = decode_status(msg.payload, 1 << 20)
                    if status.node == parse_status_topic(msg.topic):
                        self.announce(status)
                        taken += 1
            except ContractError:
                pass  # the result path dead-letters it when it arrives there

        self._link = link = MqttLink(settings.model_copy(update={"client_id": client_id}), client_id,
                                     on_message=on_message, subscriptions=[("status/+", 0)])
        try:
            link.start(wait_s)
            if not (link.subscribed.wait(wait_s) and link.barrier(wait_s)):
                log.warning("retained statuses not all read within %.0f s: known versions may start incomplete", wait_s)
        except Exception as exc:  # noqa: BLE001 -- start-up goes on; the main connection reports the broker
            log.warning("could not read retained statuses for known versions: %s", exc)
        log.info("known versions: %d retained statuses read", taken)
        return taken

    def close(self) -> None:
        if self._link is not None:
            self._link.stop()
            self._link = None

    def _release(self, key: tuple[str, str]) -> None:
        self._announced[key] -= 1
        if self._announced[key] <= 0:
            del self._announced[key]

    # ------------------------------------------------------------------ lookups

    def is_known(self, model: str, version: str) -> bool:
        if (model, version) in self._announced:
            return True
        return self._registry is not None and version in self._registry_versions(model)

    def _registry_versions(self, model: str) -> frozenset[str]:
        now = self._clock()
        listed = self._listed.get(model)
        try:
            mtime = (self._registry.root / model).stat().st_mtime_ns
        except OSError:
            return frozenset()
        if listed is not None and listed[1] == mtime and (
            now - listed[0] < (REGISTRY_RELIST_S if listed[3] else REGISTRY_RELIST_INCOMPLETE_S)
        ):
            return listed[2]
        # A version's directory appears (and changes the mtime) before its record.json, written last:
        # a listing that saw a directory without one is not trusted for long.
        try:
            dirs = sum(1 for p in (self._registry.root / model).iterdir() if p.is_dir())
            versions = frozenset(self._registry.versions(model))
        except Exception as exc:  # noqa: BLE001 -- a half-written registry must not stop the bridge
            log.warning("cannot list registry versions of %s: %s", model, exc)
            dirs, versions = -1, listed[2] if listed else frozenset()
        with self._lock:
            if len(self._listed) >= 4096 and model not in self._listed:
                self._listed.clear()
            self._listed[model] = (now, mtime, versions, dirs == len(versions))
        self.counters["registry_listings"] += 1
        return versions

    def width(self, model: str, version: str) -> int | None:
        """The feature width of the registry's ``model`` ``version`` (its 1-D input), or None if unknown."""
        key = (model, version)
        if key in self._widths:
            return self._widths[key]
        width = None
        if self._registry is not None and version in self._registry_versions(model):
            try:
                shape = self._registry.get(model, version)[1].input.item_shape
                width = shape[0] if len(shape) == 1 else None
            except Exception as exc:  # noqa: BLE001 -- no width known: the byte budget still bounds rows
                log.warning("no input width for %s %s: %s", model, version, exc)
            with self._lock:
                if len(self._widths) >= 4096:
                    self._widths.clear()
                self._widths[key] = width
        return width

    def stats(self) -> dict:
        with self._lock:
            return {"nodes": len(self._nodes), "announced": len(self._announced), **self.counters}


class TagBudget:
    """Per device, at most ``max_values`` distinct values of each tag within a sliding ``period_s``.

    Memory: at most ``max_devices`` devices (least recently seen forgotten) x tags x ``max_values``.
    Not thread-safe: one writer thread owns it.
    """

    def __init__(self, max_values: int, period_s: float, max_devices: int) -> None:
        self.max_values = max_values
        self.period_s = period_s
        self.max_devices = max_devices
        self._devices: OrderedDict[str, dict[str, dict[str, float]]] = OrderedDict()

    def admit(self, device: str, tags: tuple[tuple[str, str | None], ...], now: float) -> str | None:
        """None if admitted (values recorded), else the tag whose new value is one too many."""
        seen = self._devices.get(device)
        if seen is None:
            seen = self._devices[device] = {}
            if len(self._devices) > self.max_devices:
                self._devices.popitem(last=False)
        else:
            self._devices.move_to_end(device)
        horizon = now - self.period_s
        for key, value in tags:
            if value is None:
                continue
            values = seen.get(key)
            if values is None:
                values = seen[key] = {}
            if value not in values and len(values) >= self.max_values:
                for old in [v for v, t in values.items() if t < horizon]:
                    del values[old]
                if len(values) >= self.max_values:
                    return key
        for key, value in tags:
            if value is not None:
                seen[key][value] = now
        return None


class DeviceBudget:
    """A token bucket per device over rows and bytes: ``rows``/``nbytes`` per ``period_s``, refilled
    continuously, starting full. Not thread-safe: one loop thread owns it."""

    def __init__(self, rows: int, nbytes: int, period_s: float, max_devices: int = 100_000) -> None:
        self.rows, self.nbytes, self.period_s, self.max_devices = rows, nbytes, period_s, max_devices
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()  # device -> [at, rows left, bytes left]

    def take(self, device: str, rows: int, nbytes: int, now: float) -> bool:
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = [now, float(self.rows), float(self.nbytes)]
            if len(self._buckets) > self.max_devices:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(device)
            share = max(0.0, now - bucket[0]) / self.period_s
            bucket[1] = min(float(self.rows), bucket[1] + share * self.rows)
            bucket[2] = min(float(self.nbytes), bucket[2] + share * self.nbytes)
            bucket[0] = now
        if rows > bucket[1] or nbytes > bucket[2]:
            return False
        bucket[1] -= rows
        bucket[2] -= nbytes
        return True


class ResultGuard:
    """The checks every result and status passes before it is encoded (one writer thread)."""

    def __init__(self, settings: StoreSettings, known: KnownVersions | None) -> None:
        self.settings = settings
        self.known = known if settings.known_versions != "off" else None
        self.tags = TagBudget(settings.max_tag_values, settings.tag_period_s, settings.max_devices)
        self._admitted: dict[tuple, float] = {}
        self._past, self._future = settings.max_past_s, settings.max_future_s
        self.refused: Counter[str] = Counter()

    def timestamp(self, ts: float, now: float) -> tuple[str, str] | None:
        s = self.settings
        if ts < now - s.max_past_s or ts > now + s.max_future_s:
            return OUT_OF_RANGE, (
                f"ts {ts:.3f} is outside [arrival - {s.max_past_s:g} s, arrival + {s.max_future_s:g} s] "
                f"(arrival {now:.3f}; store.max_past_s / store.max_future_s)"
            )
        return None

    def check(self, r: InferenceResult, now: float) -> tuple[str, str] | None:
        """None if ``r`` may be stored, else (reason, detail); counted in ``refused``. The common case
        (a tag set admitted in the last minute, a timestamp near now) is two comparisons and a lookup."""
        if now - self._past <= r.ts <= now + self._future:
            key = (r.device, r.sensor, r.model, r.model_version, r.node, r.site,
                   tuple(sorted(r.tags.items())) if r.tags else None)
            at = self._admitted.get(key)
            if at is not None and now - at < ADMITTED_RECHECK_S:
                return None
            refusal = self._tags(r, key, now)
        else:
            refusal = self.timestamp(r.ts, now)
        if refusal is not None:
            self.refused[refusal[0]] += 1
        return refusal

    def _tags(self, r: InferenceResult, key: tuple, now: float) -> tuple[str, str] | None:
        if self.known is not None and not self.known.is_known(r.model, r.model_version):
            return UNKNOWN, (
                f"{r.model} {r.model_version!r} is neither in the registry nor announced in a node's status"
            )
        extra = key[-1] or ()
        over = self.tags.admit(
            r.device,
            # The set of extra tag names first: a refusal there leaves no state for the names themselves.
            (("tags", ",".join(k for k, _ in extra) if extra else None),
             ("sensor", r.sensor), ("model", r.model), ("model_version", r.model_version), ("node", r.node),
             ("site", r.site), *(("tag:" + k, v) for k, v in extra)),
            now,
        )
        if over is not None:
            return CARDINALITY, (
                f"device {r.device} already used {self.settings.max_tag_values} values of "
                f"{'the set of tag names' if over == 'tags' else 'tag ' + repr(over.removeprefix('tag:'))} within "
                f"{self.settings.tag_period_s:g} s (store.max_tag_values)"
            )
        if len(self._admitted) >= _ADMITTED_MAX:
            self._admitted.clear()
        self._admitted[key] = now
        return None
