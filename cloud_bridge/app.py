"""The bridge: MQTT results/status in, validated, batched, written to InfluxDB.

Threads and hand-offs (why: paho's network thread must never wait on the
database, and the database must see large batches, not one request per message):

    paho network thread --(topic, payload)--> Queue(queue_size) --> writer thread
         on_message only enqueues               bounded              parse topic, decode, check,
                                                                     encode lines, batch, write

Delivery is at-least-once (docs/reliability.md): paho runs with
``manual_ack``, every queue item carries its ``Delivery`` (mid, qos, connection
generation), and ``_settle`` sends the MQTT ack only once the batch holding the
message was written (or the message was refused or dead-lettered). The session
is persistent (``mqtt.session_expiry_s``, default 3600 s), so while the bridge
is down or not acknowledging, the broker holds the backlog; with
``share_group`` several replicas split it (``$share/{group}/...``).

Overflow policy of the queue (the in-flight budget, ``queue_size``; also sent
as the MQTT v5 Receive Maximum): when it is full, a QoS 1 message makes
``on_message`` wait -- back-pressure on paho's network thread, so the broker
stops sending and holds the rest -- until the writer frees room or the bridge
stops (then it is left unacknowledged for redelivery). A QoS 0 message waits at
most 1 s, then is dropped and counted in ``stats()["dropped_queue_full"]``.

A batch is flushed when ``influx.batch_size`` lines or ``influx.batch_max_bytes``
are pending (a batch may exceed either by one message's results: a message is
never split) or ``influx.flush_interval_ms`` after its first line. What happens
when a write fails is ``edgeloop.bridge.batching``'s business; while it retries,
the queue absorbs and then overflows as above, so pending lines stay bounded by
one batch plus the queue.

Nothing a peer sends can stop the writer: every message-level failure becomes
a counted, rate-limited-logged, dead-lettered reject (``edgeloop.rejects``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING

from edgeloop import __version__
from edgeloop.mqtt import Message, MqttLink, Will
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.rejects import Rejects
from edgeloop.contract import (
    ContractError,
    NodeStatus,
    status_topic,
    decode_results,
    decode_status,
    parse_result_topic,
    parse_status_topic,
)

from edgeloop.bridge.admission import KnownVersions, ResultGuard
from edgeloop.bridge.batching import Batch, BatchWriter, Delivery
from edgeloop.bridge.config import DEFAULT_CLIENT_ID, BridgeConfig
from edgeloop.bridge.schema import LineEncoder
from edgeloop.bridge.sinks import Sink, make_sink

if TYPE_CHECKING:
    from edgeloop.bridge.metrics import BridgeSnapshot
    from edgeloop.metrics import MetricsServer

log = logging.getLogger("cloud_bridge")

QUEUE_BLOCK_S = 1.0
BURST_WAIT_S = 0.002
TOPIC_CACHE_MAX = 4096
STATS_EVERY_S = 10.0
#: Bridge default for ``mqtt.session_expiry_s``: the broker keeps an hour of results for a stopped bridge.
BRIDGE_SESSION_EXPIRY_S = 3600

_STOP = object()


class Bridge:
    """``start()``, ``stop()`` (drains), ``stats()``. ``sink`` is a seam for tests."""

    def __init__(self, cfg: BridgeConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self._sink = sink
        #: A sink handed in is a test seam: only the bridge's own sink gets the start-up check of the server.
        self._check_server = sink is None
        self._encoder = LineEncoder(cfg.influx)
        #: What the store admits (edgeloop.bridge.admission): known versions, sane timestamps, bounded tags.
        self.known = KnownVersions.for_config(cfg)
        self._guard = ResultGuard(cfg.store, self.known)
        self._queue: queue.Queue = queue.Queue(cfg.queue_size)
        expiry = BRIDGE_SESSION_EXPIRY_S if cfg.mqtt.session_expiry_s is None else cfg.mqtt.session_expiry_s
        self._persistent = expiry > 0
        self._intake_open = True
        self._link = MqttLink(
            cfg.mqtt,
            DEFAULT_CLIENT_ID,
            on_message=self._on_message,
            subscriptions=[(topic, cfg.qos) for topic in cfg.topic_filters],
            will=Will(topic=status_topic(cfg.node_id), payload=self._status("offline")),
            on_connected=self._publish_birth,
            clean_start=not self._persistent,
            session_expiry_s=expiry,
            manual_ack=cfg.qos == 1,
            receive_maximum=min(65535, cfg.queue_size),
        )
        self.rejects = Rejects("bridge", log, publish=lambda t, p: self._link.publish(t, p, qos=0))
        self._writer: BatchWriter | None = None
        self._thread = threading.Thread(target=self._run, name="bridge-writer", daemon=True)
        self._log = RateLimitedLog(log)
        self._topics: dict[str, tuple[str, str]] = {}
        self._started = False
        self._stopped = False
        # Counters, each written by one thread only (network or writer).
        self._received = 0
        self._dropped_queue_full = 0
        self._messages = 0
        self._results = 0
        self._statuses = 0
        self._ignored_empty = 0
        self._settled = 0
        #: samples store, drift monitor, retrain and deploy (edgeloop.bridge.loop): its own MQTT link and threads.
        self.loop = None
        if cfg.samples.enabled or cfg.drift.enabled or cfg.retrain.enabled:
            from edgeloop.bridge.events import EventWriter
            from edgeloop.bridge.loop import ClosedLoop

            self.loop = ClosedLoop(cfg, EventWriter(make_sink(cfg), cfg.influx.tags), known=self.known)

    # ------------------------------------------------------------------ lifecycle

    def metrics_snapshot(self) -> BridgeSnapshot:
        """What a Prometheus scrape reports (cloud_bridge/metrics.py)."""
        from edgeloop.bridge.metrics import BridgeSnapshot

        return BridgeSnapshot(self.stats(), self._link.connected.is_set())

    def serve_metrics(self, source: str = "bridge config") -> MetricsServer | None:
        """``/metrics`` if the config enables it (None otherwise). Call before ``start()``: the sink it
        wraps times every database write."""
        from edgeloop.bridge.metrics import serve_bridge_metrics  # prometheus_client only when asked for

        served = serve_bridge_metrics(self.cfg.metrics, self.cfg.node_id, self.metrics_snapshot, source)
        if served is None:
            return None
        server, collector = served
        self._sink = collector.timed(self._sink or make_sink(self.cfg))
        return server

    def start(self, wait_s: float | None = 10.0) -> None:
        """Check the database, start the writer and connect.

        Raises InfluxSetupError (a ConfigError: exit 2) if the server refuses
        our writes as configured (``edgeloop.bridge.preflight``), TransientError
        if no broker by ``wait_s``.
        """
        if self._started:
            raise RuntimeError("bridge already started")
        influx = self.cfg.influx
        sink = self._sink or make_sink(self.cfg)
        if self._check_server:
            from edgeloop.bridge.preflight import check_influx

            try:
                log.info("%s", check_influx(influx, sink))
            except Exception:
                sink.close()
                raise
        self._started = True
        target = f"influx:{influx.db if influx.api == 'v1' else influx.bucket}"
        self._writer = BatchWriter(sink, self.rejects, target, self._settle, retry_max_s=influx.retry_max_s)
        if self.cfg.store.known_versions != "off" and self.cfg.store.follow_statuses:  # before the backlog
            client_id = f"{self.cfg.mqtt.client_id or DEFAULT_CLIENT_ID}-known"
            self.known.follow(self.cfg.mqtt_for("status"), client_id, min(wait_s or 5.0, 5.0))
        self._thread.start()
        log.info("bridge writing to %s (%s, %s), subscribing %s", influx.url, influx.api, target, self.cfg.subscribe)
        try:
            self._link.start(wait_s)
        except Exception:
            self._queue.put(_STOP)
            self._thread.join(5.0)
            self.known.close()
            raise
        if self.loop is not None:
            self.loop.start(wait_s)

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop taking messages, write everything already received, disconnect.

        Returns True if everything was drained; after ``timeout_s`` (database
        down) the rest is given up, counted (``given_up_at_stop`` messages) and
        not acknowledged, so a persistent session delivers it to the next start.
        """
        if not self._started or self._stopped:
            return True
        self._stopped = True
        if self.loop is not None:
            self.loop.stop()
        deadline = time.monotonic() + timeout_s
        writer = self._writer
        # After the (UN)SUBACK, everything the broker sent before is queued. A persistent
        # session keeps its subscriptions, so the broker queues what comes next for the next start.
        if self._persistent:
            self._link.barrier(min(2.0, timeout_s))
        else:
            self._link.unsubscribe_all(min(2.0, timeout_s))
        self._intake_open = False
        writer.stopping(deadline)
        try:
            self._queue.put(_STOP, timeout=max(0.1, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._thread.join(max(0.1, deadline - time.monotonic()))
        if self._thread.is_alive():
            writer.halt = True
            self._thread.join(5.0)
        drained = not self._thread.is_alive() and self._queue.empty() and not writer.given_up_at_stop
        self._link.stop(final=(status_topic(self.cfg.node_id), self._status("offline")))
        self.known.close()
        writer.sink.close()
        return drained

    def stats(self) -> dict:
        """Counters since start (a snapshot; safe to call from any thread)."""
        w = self._writer
        return {
            "received": self._received,
            "queue_depth": self._queue.qsize(),
            "dropped_queue_full": self._dropped_queue_full,
            "messages": self._messages,
            "results": self._results,
            "statuses": self._statuses,
            "ignored_empty_status": self._ignored_empty,
            "points_written": w.points_written if w else 0,
            "points_refused": w.points_refused if w else 0,
            "points_unconfirmed": w.points_unconfirmed if w else 0,
            "points_dropped": w.points_dropped if w else 0,
            "probe_writes": w.probe_writes if w else 0,
            # A batch held unacknowledged because the server refuses us as configured (cause "" when none).
            "held_cause": (w.held_cause or "") if w else "",
            "held_points": w.held_points if w else 0,
            "held_for_s": round(w.held_for_s(), 3) if w else 0.0,
            "given_up_at_stop": w.given_up_at_stop if w else 0,
            "batches": w.batches if w else 0,
            "retries": w.retries if w else 0,
            "write_errors": dict(w.errors) if w else {},
            "rejected": dict(self.rejects.by_reason),
            "dead_lettered": self.rejects.dead_lettered,
            "settled": self._settled,
            "mqtt_reconnects": self._link.reconnects,
            "mqtt_handler_errors": self._link.handler_errors,
            "stored_lag_ms": w.lag.percentiles_ms() if w else {},
            "results_refused": dict(self._guard.refused),
            "known_versions": self.known.stats(),
        }

    # ------------------------------------------------------------------ network thread

    def _status(self, state: str) -> bytes:
        return NodeStatus(node=self.cfg.node_id, state=state, ts=time.time(), runtime_version=__version__).model_dump_json(
            exclude_none=True
        ).encode()

    def _publish_birth(self) -> None:
        """Retained ``status/{node_id}`` online (LWT: offline): dashboards and tests see the bridge is up."""
        self._link.publish(status_topic(self.cfg.node_id), self._status("online"), qos=1, retain=True)

    def _on_message(self, msg: Message) -> None:
        """Runs on paho's thread: only hand off. The link catches what this raises and leaves the
        message unacknowledged (edgeloop/mqtt.py)."""
        if not self._intake_open:
            return  # stopping: not acknowledged, so the broker keeps it for the next start
        topic = msg.topic
        item = (topic, msg.payload, Delivery(topic, msg.mid, msg.qos, self._link.generation))
        self._received += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not self._wait_for_room(item, msg.qos):
                self._dropped_queue_full += 1
                self._log.warning("queue_full", "queue full (%d): dropped a message", self.cfg.queue_size)

    def _wait_for_room(self, item: tuple, qos: int) -> bool:
        """Back-pressure: QoS 1 waits until the writer frees room (or we stop); QoS 0 at most QUEUE_BLOCK_S."""
        if not qos:
            try:
                self._queue.put(item, timeout=QUEUE_BLOCK_S)
                return True
            except queue.Full:
                return False
        while self._intake_open:
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return True  # stopping: left unacknowledged on purpose, not dropped

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        influx, writer = self.cfg.influx, self._writer
        interval = influx.flush_interval_ms / 1000.0
        batch = Batch()
        stopping = False
        while not stopping and not writer.halt:
            timeout = max(0.0, batch.started + interval - time.monotonic()) if batch.lines else 1.0
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            drained = False
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                self._handle(item[0], item[1], batch, item[2] if len(item) > 2 else None)
                if len(batch.lines) >= influx.batch_size or batch.nbytes >= influx.batch_max_bytes:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item, drained = None, True
            if batch.lines and (
                stopping
                or len(batch.lines) >= influx.batch_size
                or batch.nbytes >= influx.batch_max_bytes
                or time.monotonic() >= batch.started + interval
            ):
                writer.write(batch)
                batch = Batch()
            elif drained and not stopping:
                # Under load, let messages accumulate: one wake-up per burst instead of a
                # thread switch (and GIL hand-off with paho's thread) per message.
                time.sleep(BURST_WAIT_S)
        if batch.lines and writer.halt:
            writer.give_up(batch)
        elif batch.lines:
            writer.write(batch)
        if writer.halt:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    writer.given_up_at_stop += 1

    def _handle(self, topic: str, payload: bytes, batch: Batch, delivery: Delivery | None = None) -> None:
        """Validate one message and add its lines to ``batch``, or reject it (and settle it)."""
        delivery = delivery or Delivery(topic)
        self._messages += 1
        max_bytes = self.cfg.max_payload_bytes
        try:
            if topic.startswith("results/"):
                parsed = self._topics.get(topic)
                if parsed is None:
                    parsed = self._remember_topic(topic, parse_result_topic(topic))
                device, model = parsed
                encode, check = self._encoder.result, self._guard.check
                lines, device_ts, refused = [], [], None
                now = time.time()
                for result in decode_results(payload, max_bytes):
                    if result.device != device or result.model != model:
                        raise ContractError(
                            "topic_mismatch",
                            f"payload device/model {result.device}/{result.model} != topic {device}/{model}",
                        )
                    refusal = check(result, now)
                    if refusal is not None:
                        refused = refused or {}
                        refused.setdefault(refusal[0], [0, refusal[1]])[0] += 1
                        continue
                    lines.append(encode(result))
                    device_ts.append(result.ts)
                self._results += len(lines)
                if refused:  # the admitted results of the message are stored; the rest dead-lettered
                    for reason, (count, detail) in refused.items():
                        self.rejects.reject(topic, payload, reason, f"{count} result(s): {detail}")
            elif topic.startswith("status/"):
                device_ts = None
                node = parse_status_topic(topic)
                if not payload:  # a retained status being cleared
                    self._ignored_empty += 1
                    lines = []
                else:
                    status = decode_status(payload, max_bytes)
                    if status.node != node:
                        raise ContractError("topic_mismatch", f"payload node {status.node} != topic node {node}")
                    self.known.announce(status)
                    refusal = self._guard.timestamp(status.ts, time.time())
                    if refusal is not None:
                        raise ContractError(*refusal)
                    lines = [self._encoder.status(status)]
                    self._statuses += 1
            else:
                raise ContractError("bad_topic", f"topic {topic[:80]!r} is not results/... or status/...")
        except ContractError as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            self._settle([delivery])
            return
        except Exception as exc:  # noqa: BLE001 -- a bug must cost one message, not the bridge
            log.exception("unexpected error handling a message on %r", topic[:128])
            self.rejects.reject(topic, payload, "internal_error", repr(exc))
            self._settle([delivery])
            return
        if lines:
            batch.add(lines, delivery, device_ts)
        else:
            self._settle([delivery])

    def _remember_topic(self, topic: str, parsed: tuple[str, str]) -> tuple[str, str]:
        """Valid result topics are few (devices x models); parsing each message again is wasted time."""
        if len(self._topics) >= TOPIC_CACHE_MAX:
            self._topics.clear()
        self._topics[topic] = parsed
        return parsed

    def _settle(self, deliveries: list[Delivery]) -> None:
        """These messages are done with (written, refused or dead-lettered): acknowledge them to the broker.

        An ack for a message that arrived on an earlier connection is not sent
        (``MqttLink.ack``): the broker has sent it again, and that copy gets acked.
        """
        self._settled += len(deliveries)
        ack = self._link.ack
        for d in deliveries:
            if d.qos:
                ack(d.mid, d.qos, d.generation)


def run_bridge(cfg: BridgeConfig, stop_event: threading.Event) -> int:
    """Run until ``stop_event`` is set, logging stats every 10 s; 0 if the drain completed, else 1."""
    bridge = Bridge(cfg)
    metrics = bridge.serve_metrics()  # None unless metrics.enabled
    try:
        bridge.start()  # InfluxSetupError (exit 2) when the database refuses us as configured
    except Exception:
        if metrics is not None:
            metrics.close()
        raise
    last, last_t = bridge.stats(), time.monotonic()
    while not stop_event.wait(STATS_EVERY_S):
        now, stats = time.monotonic(), bridge.stats()
        rate = (stats["points_written"] - last["points_written"]) / max(1e-9, now - last_t)
        log.info(
            "bridge: received=%d written=%d (%.0f/s) refused=%d rejected=%d dropped=%d queue=%d write_errors=%s%s",
            stats["received"],
            stats["points_written"],
            rate,
            stats["points_refused"] + stats["points_unconfirmed"],
            sum(stats["rejected"].values()),
            stats["points_dropped"] + stats["dropped_queue_full"],
            stats["queue_depth"],
            stats["write_errors"],
            f" HELD {stats['held_points']} points for {stats['held_for_s']:.0f}s ({stats['held_cause']})"
            if stats["held_cause"] else "",
        )
        last, last_t = stats, now
    drained = bridge.stop()
    log.info("bridge stopped: %s", bridge.stats())
    if metrics is not None:
        metrics.close()
    return 0 if drained else 1
