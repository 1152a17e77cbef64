"""The bridge: MQTT results/status in, validated, batched, written to InfluxDB.

Threads and hand-offs (why: paho's network thread must never wait on the
database, and the database must see large batches, not one request per message):

    paho network thread --(topic, payload)--> Queue(queue_size) --> writer thread
         on_message only enqueues               bounded              parse topic, decode, check,
                                                                     encode lines, batch, write, retry

Overflow policy of the queue: when it is full, ``on_message`` blocks paho's
network thread for at most 1 s (back-pressure: the broker stops sending to us
and, at QoS 1, holds the messages), then drops the message and counts it in
``stats()["dropped_queue_full"]``.

A batch is flushed when ``influx.batch_size`` lines or ``influx.batch_max_bytes``
are pending (a batch may exceed either by one message's results, because a
message is never split) or ``influx.flush_interval_ms`` after its first line.

Write failures: Throttled/Unavailable keep the batch and retry it with capped
exponential backoff and jitter (meanwhile the queue absorbs, then overflows as
above: the pending lines stay bounded by one batch plus the queue); PartialWrite
moves on (influxd stored the good points) and dead-letters a summary with the
server's reason; Fatal logs an error, counts and drops the batch.

Each batch keeps the deliveries (messages) its lines came from and settles them
in ``_settle`` once the batch is written or given up. Today that only counts;
at-least-once delivery needs the queue item to carry (mid, qos) and
``_settle`` to send the MQTT acks (paho ``manual_ack``), nothing else.

Nothing a peer sends can stop the writer: every message-level failure becomes
a counted, rate-limited-logged, dead-lettered reject (``runtime.common.rejects``).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections import Counter

from runtime.common.mqtt import MqttLink
from runtime.common.ratelimit import RateLimitedLog
from runtime.common.rejects import Rejects
from runtime.contract import (
    ContractError,
    decode_results,
    decode_status,
    parse_result_topic,
    parse_status_topic,
)

from cloud_bridge.config import DEFAULT_CLIENT_ID, BridgeConfig
from cloud_bridge.errors import Fatal, PartialWrite, Throttled, Unavailable
from cloud_bridge.schema import LineEncoder
from cloud_bridge.sinks import Sink, make_sink

log = logging.getLogger("cloud_bridge")

QUEUE_BLOCK_S = 1.0
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0
STATS_EVERY_S = 10.0

_STOP = object()


class _Batch:
    __slots__ = ("lines", "nbytes", "deliveries", "started")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.nbytes = 0
        self.deliveries: list[str] = []
        self.started = 0.0


class Bridge:
    """``start()``, ``stop()`` (drains), ``stats()``. ``sink`` is a seam for tests."""

    def __init__(self, cfg: BridgeConfig, sink: Sink | None = None) -> None:
        self.cfg = cfg
        self._sink = sink
        self._encoder = LineEncoder(cfg.influx)
        self._queue: queue.Queue = queue.Queue(cfg.queue_size)
        self._link = MqttLink(
            cfg.mqtt,
            DEFAULT_CLIENT_ID,
            on_message=self._on_message,
            subscriptions=[(topic, cfg.qos) for topic in cfg.subscribe],
        )
        self._unsubscribed = threading.Event()
        self._link.client.on_unsubscribe = lambda *_args: self._unsubscribed.set()
        self.rejects = Rejects("bridge", log, publish=self._publish_deadletter)
        self._log = RateLimitedLog(log)
        self._writer = threading.Thread(target=self._run, name="bridge-writer", daemon=True)
        self._wake = threading.Event()
        self._abandon_at: float | None = None
        self._halt = False
        self._started = False
        self._stopped = False
        self._rng = random.Random()
        # Counters. Each is written by one thread only (network or writer).
        self._received = 0
        self._dropped_queue_full = 0
        self._messages = 0
        self._results = 0
        self._statuses = 0
        self._ignored_empty = 0
        self._points_written = 0
        self._points_refused = 0
        self._points_dropped = 0
        self._given_up_at_stop = 0
        self._batches = 0
        self._retries = 0
        self._settled = 0
        self._write_errors: Counter[str] = Counter()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float | None = 10.0) -> None:
        """Start writing and connect; raises TransientError if the broker is not reachable by ``wait_s``."""
        if self._started:
            raise RuntimeError("bridge already started")
        self._started = True
        if self._sink is None:
            self._sink = make_sink(self.cfg)
        self._writer.start()
        influx = self.cfg.influx
        target = f"db={influx.db}" if influx.api == "v1" else f"bucket={influx.bucket}"
        log.info("bridge writing to %s (%s, %s), subscribing %s", influx.url, influx.api, target, self.cfg.subscribe)
        try:
            self._link.start(wait_s)
        except Exception:
            self._queue.put(_STOP)
            self._writer.join(5.0)
            raise

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Unsubscribe, write everything already received, disconnect.

        Returns True if everything was drained; after ``timeout_s`` (database
        down) the rest is dropped and counted in ``points_dropped``.
        """
        if not self._started or self._stopped:
            return True
        self._stopped = True
        deadline = time.monotonic() + timeout_s
        self._abandon_at = deadline
        if self._link.connected.is_set():
            # After UNSUBACK the broker sends nothing more; everything it sent before is queued.
            self._link.client.unsubscribe([topic for topic in self.cfg.subscribe])
            self._unsubscribed.wait(min(2.0, timeout_s))
        self._wake.set()
        try:
            self._queue.put(_STOP, timeout=max(0.1, deadline - time.monotonic()))
        except queue.Full:
            pass
        self._writer.join(max(0.1, deadline - time.monotonic()))
        if self._writer.is_alive():
            self._halt = True
            self._writer.join(5.0)
        drained = not self._writer.is_alive() and self._queue.empty() and not self._given_up_at_stop
        self._link.stop()
        if self._sink is not None:
            self._sink.close()
        return drained

    def stats(self) -> dict:
        """Counters since start (a snapshot; safe to call from any thread)."""
        return {
            "received": self._received,
            "queue_depth": self._queue.qsize(),
            "dropped_queue_full": self._dropped_queue_full,
            "messages": self._messages,
            "results": self._results,
            "statuses": self._statuses,
            "ignored_empty_status": self._ignored_empty,
            "points_written": self._points_written,
            "points_refused": self._points_refused,
            "points_dropped": self._points_dropped,
            "given_up_at_stop": self._given_up_at_stop,
            "batches": self._batches,
            "retries": self._retries,
            "write_errors": dict(self._write_errors),
            "rejected": dict(self.rejects.by_reason),
            "dead_lettered": self.rejects.dead_lettered,
            "settled": self._settled,
            "mqtt_reconnects": self._link.reconnects,
        }

    # ------------------------------------------------------------------ network thread

    def _on_message(self, msg) -> None:  # noqa: ANN001 -- paho.MQTTMessage
        """Runs on paho's thread: only hand off, never raise."""
        try:
            try:
                item = (msg.topic, msg.payload)
            except UnicodeDecodeError:
                item = (msg._topic.decode("utf-8", "replace"), msg.payload)
            self._received += 1
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                try:
                    self._queue.put(item, timeout=QUEUE_BLOCK_S)
                except queue.Full:
                    self._dropped_queue_full += 1
                    self._log.warning("queue_full", "queue full (%d): dropped a message", self.cfg.queue_size)
        except Exception as exc:  # noqa: BLE001 -- an exception here would kill paho's loop
            self._log.warning("on_message", "on_message failed: %r", exc)

    def _publish_deadletter(self, topic: str, payload: bytes) -> object:
        return self._link.publish(topic, payload, qos=0)

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        influx = self.cfg.influx
        interval = influx.flush_interval_ms / 1000.0
        batch = _Batch()
        stopping = False
        while not stopping and not self._halt:
            timeout = max(0.0, batch.started + interval - time.monotonic()) if batch.lines else 1.0
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    stopping = True
                    break
                self._handle(item[0], item[1], batch)
                if len(batch.lines) >= influx.batch_size or batch.nbytes >= influx.batch_max_bytes:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            if batch.lines and (
                stopping
                or len(batch.lines) >= influx.batch_size
                or batch.nbytes >= influx.batch_max_bytes
                or time.monotonic() >= batch.started + interval
            ):
                self._flush(batch)
                batch = _Batch()
        if batch.lines:
            if self._halt:
                self._points_dropped += len(batch.lines)
                self._given_up_at_stop += len(batch.deliveries)
            else:
                self._flush(batch)
        if self._halt:
            self._drop_queued()

    def _drop_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                self._given_up_at_stop += 1

    def _handle(self, topic: str, payload: bytes, batch: _Batch) -> None:
        """Validate one message and add its lines to ``batch``, or reject it."""
        self._messages += 1
        max_bytes = self.cfg.max_payload_bytes
        try:
            if topic.startswith("results/"):
                device, model = parse_result_topic(topic)
                results = decode_results(payload, max_bytes)
                encode = self._encoder.result
                lines = []
                for result in results:
                    if result.device != device or result.model != model:
                        raise ContractError(
                            "topic_mismatch",
                            f"payload device/model {result.device}/{result.model} != topic {device}/{model}",
                        )
                    lines.append(encode(result))
                self._results += len(lines)
            elif topic.startswith("status/"):
                node = parse_status_topic(topic)
                if not payload:  # a retained status being cleared
                    self._ignored_empty += 1
                    self._settle([topic])
                    return
                status = decode_status(payload, max_bytes)
                if status.node != node:
                    raise ContractError("topic_mismatch", f"payload node {status.node} != topic node {node}")
                lines = [self._encoder.status(status)]
                self._statuses += 1
            else:
                raise ContractError("bad_topic", f"topic {topic[:80]!r} is not results/... or status/...")
        except ContractError as exc:
            self.rejects.reject(topic, payload, exc.reason, str(exc))
            self._settle([topic])
            return
        except Exception as exc:  # noqa: BLE001 -- a bug must cost one message, not the bridge
            log.exception("unexpected error handling a message on %r", topic[:128])
            self.rejects.reject(topic, payload, "internal_error", repr(exc))
            self._settle([topic])
            return
        if not lines:
            self._settle([topic])
            return
        if not batch.lines:
            batch.started = time.monotonic()
        batch.lines.extend(lines)
        batch.nbytes += sum(map(len, lines))
        batch.deliveries.append(topic)

    def _flush(self, batch: _Batch) -> None:
        """Write one batch; retry transient failures; never raise."""
        attempt = 0
        n = len(batch.lines)
        while True:
            try:
                self._sink.write(batch.lines)
            except (Throttled, Unavailable) as exc:
                kind = "throttled" if isinstance(exc, Throttled) else "unavailable"
                self._write_errors[kind] += 1
                if self._halt or (self._abandon_at is not None and time.monotonic() >= self._abandon_at):
                    log.error("stopping: dropped a batch of %d points after %d attempts: %s", n, attempt + 1, exc)
                    self._points_dropped += n
                    self._given_up_at_stop += len(batch.deliveries)
                    break
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt)
                delay = self._rng.uniform(delay / 2, delay)
                if isinstance(exc, Throttled) and exc.retry_after is not None:
                    delay = min(RETRY_MAX_S, max(delay, exc.retry_after))
                attempt += 1
                self._retries += 1
                self._log.warning(kind, "write of %d points failed (%s), retry %d in %.2fs", n, exc, attempt, delay)
                self._sleep(delay)
                continue
            except PartialWrite as exc:
                self._write_errors["partial"] += 1
                refused = exc.dropped or 0
                self._points_written += n - refused
                self._points_refused += refused
                self._deadletter_partial(batch, exc)
            except Fatal as exc:
                self._write_errors["fatal"] += 1
                self._points_dropped += n
                log.error("database refused a batch of %d points, dropped it (fix the config): %s", n, exc)
            except Exception as exc:  # noqa: BLE001 -- a sink bug: treat as fatal, keep running
                self._write_errors["unexpected"] += 1
                self._points_dropped += n
                log.exception("unexpected error writing %d points, dropped them: %r", n, exc)
            else:
                self._points_written += n
            break
        self._batches += 1
        self._settle(batch.deliveries)

    def _sleep(self, delay: float) -> None:
        if self._abandon_at is None:
            self._wake.wait(delay)  # stop() wakes us to re-check the drain deadline
        else:
            time.sleep(max(0.0, min(delay, self._abandon_at - time.monotonic())))

    def _deadletter_partial(self, batch: _Batch, exc: PartialWrite) -> None:
        influx = self.cfg.influx
        target = f"influx:{influx.db if influx.api == 'v1' else influx.bucket}"
        summary = {
            "points": len(batch.lines),
            "dropped": exc.dropped,
            "reason": exc.reason,
            "topics": sorted(set(batch.deliveries))[:20],
            "first_line": batch.lines[0][:400],
        }
        self.rejects.reject(target, json.dumps(summary).encode(), "partial_write", exc.reason)

    def _settle(self, deliveries: list[str]) -> None:
        """The messages are handled (written, refused or given up): the point where acks go."""
        self._settled += len(deliveries)


def run_bridge(cfg: BridgeConfig, stop_event: threading.Event) -> int:
    """Run until ``stop_event`` is set, logging stats every 10 s; 0 if the drain completed, else 1."""
    bridge = Bridge(cfg)
    bridge.start()
    last = bridge.stats()
    last_t = time.monotonic()
    while not stop_event.wait(STATS_EVERY_S):
        now, stats = time.monotonic(), bridge.stats()
        rate = (stats["points_written"] - last["points_written"]) / max(1e-9, now - last_t)
        log.info(
            "bridge: received=%d written=%d (%.0f/s) rejected=%d dropped=%d queue=%d write_errors=%s",
            stats["received"],
            stats["points_written"],
            rate,
            sum(stats["rejected"].values()),
            stats["points_dropped"] + stats["dropped_queue_full"],
            stats["queue_depth"],
            stats["write_errors"],
        )
        last, last_t = stats, now
    drained = bridge.stop()
    log.info("bridge stopped: %s", bridge.stats())
    return 0 if drained else 1
