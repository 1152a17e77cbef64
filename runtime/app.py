"""The edge runtime process: MQTT in, micro-batched inference, MQTT out.

Threads:
  paho network thread  on_message only appends (topic, payload, t) to a
                       bounded queue -- it never decodes or infers
  worker thread        drains the queue into the Engine, flushes batches,
                       appends results to the disk outbox
  outbox sender        sends the outbox oldest first, deletes on PUBACK
                       (runtime/delivery.py, docs/reliability.md)
  main thread          waits for SIGTERM/SIGINT, then stop(): intake stops,
                       the worker drains what was received, publishes, waits
                       (bounded) for the broker's acks, publishes "offline",
                       exits 0; what is not acked stays in the outbox

With ``workers: N > 1`` (runtime/workers.py) the worker thread only batches
readings per worker process (partitioned by stream), and a collector thread
takes the processes' answers into the outbox and the input acks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from edgeloop import __version__
from edgeloop.mqtt import Message, MqttLink, Will, redact_url
from edgeloop.rejects import RateLimitedLog, Rejects
from edgeloop.systemd import SystemdNotifier
from edgeloop.edge.config import EdgeConfig
from edgeloop.contract import NodeStatus, status_topic
from edgeloop.edge.delivery import EdgeDelivery
from edgeloop.edge.model_manager import ModelManager
from edgeloop.edge.startup import prepare

if TYPE_CHECKING:
    from edgeloop.edge.metrics import EdgeSnapshot
    from edgeloop.metrics import MetricsServer

log = logging.getLogger("edgeloop.edge")

_STOP = object()


class EdgeApp:
    def __init__(self, cfg: EdgeConfig, source: str = "edge config") -> None:
        self.cfg = cfg
        self.rejects = Rejects("edge", log, publish=self._publish_deadletter if cfg.output.deadletter else None, node=cfg.node_id)
        # Every model loaded and every pipeline built against it, before any I/O: the same call as
        # `edgeloop config check` makes (edgeloop.edge.startup), so both fail alike.
        prepared = prepare(cfg, self.rejects, source)
        self.engine = prepared.engine
        # Signed over-the-air deployment (docs/deployment.md): None unless deploy.enabled.
        self.deploy = ModelManager(cfg, self.engine, self.rejects, on_change=self._publish_birth) if cfg.deploy.enabled else None
        if self.deploy is not None:
            self.deploy.restore(self.engine)
        # Camera frames (docs/camera.md): newest-wins slots and a frame worker; None without `vision:`.
        self.vision = None
        if prepared.vision is not None:
            from edgeloop.edge.vision.worker import FrameWorker

            publish_frames = lambda messages: self.delivery.publish(messages, 1)  # noqa: E731 -- 1: acks are not ours
            self.vision = FrameWorker(cfg.vision, prepared.vision, publish_frames, self.rejects)
        self.inbox: queue.Queue = queue.Queue(cfg.input.queue_size)
        self.dropped_queue_full = 0
        self._drop_log = RateLimitedLog(log)
        # Inference in worker processes (workers > 1): this process keeps the connection, acks and outbox.
        self.pool = None
        if cfg.workers > 1:
            from edgeloop.edge.workers import WorkerPool  # multiprocessing only where it is used

            self.pool = WorkerPool(cfg, source, self._answered, self._worker_died)
        #: Set when the edge must stop on its own (a worker process died); run_edge waits on it too.
        self.on_fatal = None
        self.failed: str | None = None
        self._worker = threading.Thread(target=self._work if self.pool is None else self._dispatch,
                                        name="edgeloop-worker", daemon=True)
        self.systemd = SystemdNotifier.from_env()  # no-op outside systemd
        self._intake_open = True
        # Outbox, persistent session and input acks (at-least-once both ways): runtime/delivery.py.
        self.delivery = EdgeDelivery(cfg)
        self.link = MqttLink(
            cfg.mqtt,
            client_id=f"edgeloop-{cfg.node_id}",
            on_message=self._on_message,
            subscriptions=[(p.subscription, cfg.input.qos) for p in cfg.pipelines]
            + (self.deploy.subscriptions() if self.deploy is not None else [])
            + (self.vision.subscriptions() if self.vision is not None else []),
            will=Will(topic=status_topic(cfg.node_id), payload=self._status("offline")),
            on_connected=self._publish_birth,
            **self.delivery.link_options(),
        )
        self.delivery.attach(self.link)
        # Home Assistant discovery (runtime/ha_discovery.py): None unless homeassistant.enabled.
        self.ha = None
        if cfg.homeassistant.enabled:
            from edgeloop.edge.ha_discovery import HaDiscovery

            self.ha = HaDiscovery(cfg.homeassistant, cfg.node_id,
                                  lambda topic, payload: self.link.publish(topic, payload, qos=1, retain=True),
                                  batch_results=cfg.output.batch_results)

        if self.deploy is not None:
            self.deploy.attach(self.link)

    # ------------------------------------------------------------ network thread

    def _on_message(self, msg: Message) -> None:
        """Runs on paho's thread: only hand off. The link catches what this raises (edgeloop/mqtt.py)."""
        if not self._intake_open:
            return  # stopping: unacknowledged, so a persistent session delivers it to the next start
        if self.deploy is not None and msg.topic.startswith("models/"):
            self.deploy.offer(msg.topic, msg.payload)
            self.link.ack(msg.mid, msg.qos, self.link.generation)  # the deploy manager owns it now
            return
        if self.vision is not None and msg.topic.startswith("frames/"):
            self.vision.offer(msg)  # newest frame wins per camera; frames are at-most-once
            self.link.ack(msg.mid, msg.qos, self.link.generation)
            return
        if len(msg.payload) > self.cfg.input.max_payload_bytes:
            # Refused at the door, before it takes queue memory (decode_reading would refuse it too).
            limit = self.cfg.input.max_payload_bytes
            self.rejects.reject(msg.topic, msg.payload, "oversized", f"payload of {len(msg.payload)} bytes exceeds {limit}")
            self.link.ack(msg.mid, msg.qos, self.link.generation)
            return
        item = (msg.topic, msg.payload, time.monotonic(), msg.mid, msg.qos, self.link.generation)
        try:
            self.inbox.put_nowait(item)
        except queue.Full:
            # QoS 1 waits for room (the broker holds the rest); QoS 0 is shed at the door.
            while msg.qos and self._intake_open:
                try:
                    self.inbox.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue
            if msg.qos:
                return  # stopping: left unacknowledged on purpose
            self.dropped_queue_full += 1
            self._drop_log.warning("queue_full", "input queue full (%d): dropping newest readings", self.cfg.input.queue_size)

    def _publish_birth(self) -> None:
        self.link.publish(status_topic(self.cfg.node_id), self._status("online"), qos=1, retain=True)

    def _publish_deadletter(self, topic: str, payload: bytes) -> None:
        self.link.publish(topic, payload, qos=0)

    def _status(self, state: str) -> bytes:
        counters = {k: v for k, v in self.counters().items() if isinstance(v, int)}
        return NodeStatus(
            node=self.cfg.node_id,
            state=state,
            ts=time.time(),
            models={**self.engine.models(), **(self.vision.engine.models() if getattr(self, "vision", None) else {})}
            if hasattr(self, "engine") else {},
            runtime_version=__version__,
            site=self.cfg.site,
            counters=counters,
            last_deploy=self.deploy.states() if getattr(self, "deploy", None) is not None else {},
        ).model_dump_json(exclude_none=True).encode()

    # ------------------------------------------------------------ worker thread

    def _work(self) -> None:
        batching = self.cfg.batching
        max_wait = batching.max_latency_ms / 1000.0
        engine = self.engine
        stopping = False
        next_status = time.monotonic() + self.cfg.status_interval_s
        expiry_every = engine.expiry_interval_s
        next_expiry = time.monotonic() + expiry_every
        deploy = self.deploy
        while True:
            if deploy is not None:
                deploy.service(engine, self._publish)  # between batches: swap in a new model, judge it, roll back
            if engine.pending:
                timeout = max(0.0, engine.oldest_pending + max_wait - time.monotonic())
            else:
                timeout = 0.5
            try:
                item = self.inbox.get(timeout=timeout) if not stopping else self.inbox.get_nowait()
            except queue.Empty:
                item = None
                if stopping:
                    break
            if item is _STOP:
                stopping = True
            elif item is not None:
                self._ingest(item)
                # Greedily take what is already queued, up to a full batch.
                while engine.pending < batching.max_batch:
                    try:
                        item = self.inbox.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stopping = True
                        break
                    self._ingest(item)
            if engine.pending and (
                engine.pending >= batching.max_batch
                or time.monotonic() >= engine.oldest_pending + max_wait
                or (batching.flush_when_idle and self.inbox.empty())
                or stopping
            ):
                self._publish(engine.flush())
            self.delivery.tick()  # the stall net: held readings must not fill the broker's window for good
            self.systemd.ping()  # WatchdogSec: proves this loop still turns
            if time.monotonic() >= next_expiry:
                next_expiry = time.monotonic() + expiry_every
                engine.expire_idle(time.monotonic())
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + self.cfg.status_interval_s
                self._publish_birth()
        if engine.pending:
            self._publish(engine.flush())

    def _dispatch(self) -> None:
        """The worker loop with worker processes: batch each reading for the process its stream belongs to.

        A worker's batch goes out when it is full, when its oldest reading has waited
        ``batching.max_latency_ms``, or (``flush_when_idle``) when nothing more is queued --
        the rule the single-process loop flushes by, applied per worker.
        """
        from edgeloop.edge.workers import worker_of

        pool, batching, inbox = self.pool, self.cfg.batching, self.inbox
        size, max_wait = pool.size, batching.max_latency_ms / 1000.0
        batches: list[list[tuple]] = [[] for _ in range(size)]
        first = [0.0] * size
        stopping = False
        next_status = time.monotonic() + self.cfg.status_interval_s
        while True:
            waiting = [first[w] for w in range(size) if batches[w]]
            timeout = max(0.0, min(waiting) + max_wait - time.monotonic()) if waiting else 0.5
            try:
                item = inbox.get(timeout=timeout) if not stopping else inbox.get_nowait()
            except queue.Empty:
                item = None
                if stopping:
                    break
            taken = 0
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                w = worker_of(item[0], size)
                batch = batches[w]
                if not batch:
                    first[w] = item[2]
                batch.append(item)
                if len(batch) >= batching.max_batch:
                    pool.submit(w, batch)
                    batches[w] = []
                taken += 1
                if taken >= batching.max_batch * size:
                    break
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    break
            idle = stopping or (batching.flush_when_idle and inbox.empty())
            now = time.monotonic()
            for w in range(size):
                if batches[w] and (idle or now >= first[w] + max_wait):
                    pool.submit(w, batches[w])
                    batches[w] = []
            self.delivery.tick()
            self.systemd.ping()
            if now >= next_status:
                next_status = now + self.cfg.status_interval_s
                self._publish_birth()
        for w in range(size):
            if batches[w]:
                pool.submit(w, batches[w])

    def _answered(self, items: list[tuple], samples: list[int], messages: list[tuple[str, bytes]],
                  replies: list[tuple[str, bytes]], letters: list[tuple[str, bytes]]) -> None:
        """On the pool's collector thread: a worker's answer for ``items``, in the order they were sent."""
        for topic, payload in replies:  # a codec's answers (a Sparkplug rebirth request): QoS 0
            self.link.publish(topic, payload, qos=0)
        for topic, payload in letters:
            self._publish_deadletter(topic, payload)
        for item, taken in zip(items, samples):
            self.delivery.ingested(item[0], item[3], item[4], item[5], taken, 1)  # 1: commit after the append
        self._publish(messages)

    def _worker_died(self, message: str) -> None:
        log.error("%s", message)
        self.failed = message
        if self.on_fatal is not None:
            self.on_fatal()

    def _ingest(self, item: tuple) -> None:
        samples = self.engine.ingest(item[0], item[1], item[2])
        if self.engine.replies:  # a codec's answers (a Sparkplug rebirth request): QoS 0, not through the outbox
            replies, self.engine.replies = self.engine.replies, []
            for topic, payload in replies:
                self.link.publish(topic, payload, qos=0)
        if len(item) >= 6:  # (topic, payload, t, mid, qos, generation) from _on_message
            self.delivery.ingested(item[0], item[3], item[4], item[5], samples or 0, self.engine.pending)

    def _publish(self, messages: list[tuple[str, bytes]]) -> None:
        """The one way results and samples leave the edge: disk outbox first, then the broker."""
        if self.ha is not None:
            self.ha.seen(messages)  # a (device, model)'s first result announces it to Home Assistant
        self.delivery.publish(messages, self.engine.pending)

    # ------------------------------------------------------------ lifecycle

    def counters(self) -> dict[str, int]:
        pool = getattr(self, "pool", None)
        if pool is not None:  # the engines are in the worker processes: their last snapshots, summed
            out = dict(pool.counters())
            out.setdefault("streams_live", 0)
            out["rejected"] = self.rejects.total + sum(pool.rejects_by_reason().values())
            out["workers"] = pool.size
        else:
            out = dict(self.engine.counters) if hasattr(self, "engine") else {}
            out["streams_live"] = self.engine.live_streams if hasattr(self, "engine") else 0
            out["rejected"] = self.rejects.total
        out["dropped_queue_full"] = self.dropped_queue_full
        out["queue_depth"] = self.inbox.qsize() if hasattr(self, "inbox") else 0
        out["reconnects"] = self.link.reconnects if hasattr(self, "link") else 0
        out["mqtt_handler_errors"] = self.link.handler_errors if hasattr(self, "link") else 0
        if getattr(self, "deploy", None) is not None:
            out.update(self.deploy.counters)
        if getattr(self, "vision", None) is not None:
            out.update(self.vision.counters())  # frames_received, frames_dropped_stale, frames_classified, ...
        if getattr(self, "ha", None) is not None:
            out["ha_discovery_announced"] = len(self.ha.announced)
            out["ha_discovery_skipped"] = self.ha.skipped
        if getattr(self, "delivery", None) is not None:
            out.update(self.delivery.counters())  # outbox_depth, outbox_dropped_overflow, input_held, ...
        return out

    def metrics_snapshot(self) -> EdgeSnapshot:
        """What a Prometheus scrape reports (runtime/metrics.py)."""
        from edgeloop.edge.metrics import EdgeSnapshot

        by_reason, letters = dict(self.rejects.by_reason), self.rejects.dead_lettered
        if self.pool is not None:
            by_reason = dict(self.pool.rejects_by_reason() + self.rejects.by_reason)
            letters += self.pool.dead_lettered()
        return EdgeSnapshot(self.counters(), by_reason, letters, self.engine.models(), self.link.connected.is_set())

    def serve_metrics(self, source: str = "edge config") -> MetricsServer | None:
        """``/metrics`` if the config enables it (None otherwise), its histograms fed by the engine."""
        from edgeloop.edge.metrics import serve_edge_metrics  # prometheus_client only when asked for

        served = serve_edge_metrics(self.cfg.metrics, self.cfg.node_id, self.metrics_snapshot, source)
        if served is None:
            return None
        server, collector = served
        self.engine.on_batch = collector.observe_batch
        return server

    def start(self, connect_timeout_s: float | None = 30.0) -> None:
        log.info(
            "edge %s starting: broker %s, pipelines %s",
            self.cfg.node_id,
            redact_url(self.cfg.mqtt.url),
            ", ".join(f"{p.subscription} -> {p.model.path.name}" for p in self.cfg.pipelines),
        )
        if self.pool is not None:
            self.pool.start()  # each process loads the models before the first reading is taken
        self._worker.start()
        self.delivery.start()
        if self.deploy is not None:
            self.deploy.start()
        if self.vision is not None:
            self.vision.start()
        self.link.start(wait_s=connect_timeout_s)

    def stop(self) -> bool:
        """Drain and disconnect. Returns True when every result was acknowledged.

        A persistent session keeps its subscriptions (the broker queues readings
        for the next start); the SUBACK of a re-subscribe marks what has arrived.
        Results the broker has not acknowledged within ``drain_timeout_s`` stay
        in the outbox for the next start.
        """
        if self.delivery.persistent:
            self.link.barrier()
        else:
            self.link.unsubscribe_all()
        self._intake_open = False
        self.inbox.put(_STOP)
        self._worker.join(self.cfg.drain_timeout_s)
        # Every answer handled (the collector is done) before the acks are committed below.
        pool_ok = self.pool.stop(self.cfg.drain_timeout_s) if self.pool is not None else True
        if not self._worker.is_alive() and pool_ok:
            self.delivery.finish_input()
        if self.vision is not None:
            self.vision.stop(self.cfg.drain_timeout_s)  # classifies and publishes the frames already received
        if self.deploy is not None:
            self.deploy.stop()
        acked = self.delivery.drain(self.cfg.drain_timeout_s)
        self.link.stop(final=(status_topic(self.cfg.node_id), self._status("offline")))
        self.delivery.close()
        log.info("edge %s stopped: %s", self.cfg.node_id, self.counters())
        return acked and pool_ok and not self._worker.is_alive() and self.failed is None


def run_edge(cfg: EdgeConfig, stop: threading.Event, source: str = "edge config", stats_every_s: float = 10.0) -> int:
    """Run until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT); exit code 0 on a clean drain.

    An unreachable broker is not fatal: the runtime keeps retrying with backoff
    (a device often boots before its network), logging each failed attempt.
    """
    app = EdgeApp(cfg, source)
    app.on_fatal = stop.set  # a dead worker process stops the edge (runtime/workers.py)
    metrics = app.serve_metrics(source)  # None unless metrics.enabled
    app.start(connect_timeout_s=None)
    app.systemd.ready(f"node {cfg.node_id}")
    while not stop.wait(stats_every_s):
        log.info("stats %s", app.counters())
    app.systemd.stopping()
    drained = app.stop()
    if metrics is not None:
        metrics.close()
    return 0 if drained else 1
