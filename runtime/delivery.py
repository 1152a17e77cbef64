"""The edge's at-least-once plumbing, in one object the app calls at four points.

- out: ``publish(messages)`` appends to the disk outbox (runtime/outbox.py);
  ``OutboxSender`` (runtime/sender.py) sends oldest first and deletes on PUBACK.
- in: with ``input.qos: 1`` paho runs with ``manual_ack``; ``ingested()`` and
  ``publish()`` feed ``InputAcks`` (runtime/inputacks.py), which acknowledges a
  reading once its results are on disk and no future window needs it.
- disk: with ``outbox.fsync: batch`` (default) a sync thread fsyncs the outbox's
  write-ahead log at most every ``outbox.fsync_interval_ms`` after appends and
  then releases the input acks those appends cover (group commit: the worker
  never waits for the disk, and a power cut loses nothing the broker will not
  deliver again).
- session: a persistent MQTT session (``mqtt.session_expiry_s``, default 3600 s
  on the edge) so the broker queues readings while the edge restarts.
- ``outbox.enabled: false`` keeps the old direct path: results go straight to
  paho (in memory), and stop() waits for their acks.

Why a separate object: the app's worker loop, model deployment and metrics are
other people's concerns; this keeps delivery semantics in one reviewable place.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from edgeloop.mqtt import MqttLink, wait_for_all
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.edge.config import EdgeConfig
from edgeloop.edge.ingest.topics import Router
from edgeloop.edge.inputacks import MAX_HELD, InputAcks, held_limit
from edgeloop.edge.outbox import Outbox, default_state_dir
from edgeloop.edge.sender import OutboxSender

log = logging.getLogger("edgeloop.edge")

#: mosquitto's default ``max_inflight_messages``: a 3.1.1 client's window unless ``input.broker_inflight`` is set.
MQTT311_BROKER_INFLIGHT = 20

#: Edge default for ``mqtt.session_expiry_s``: an hour of readings queued by the broker across a restart.
EDGE_SESSION_EXPIRY_S = 3600


def session_expiry_s(cfg: EdgeConfig) -> int:
    value = cfg.mqtt.session_expiry_s
    return EDGE_SESSION_EXPIRY_S if value is None else value


def outbox_path(cfg: EdgeConfig):
    return cfg.outbox.path or default_state_dir() / f"outbox-{cfg.node_id}.sqlite"


def window_history(cfg: EdgeConfig) -> dict[str, int]:
    """Samples a reading stays needed after it, per sensor: ``size - 1`` of the pipeline's window stage."""
    out = {}
    for p in cfg.pipelines:
        sizes = [getattr(stage, "size", 0) for stage in p.stages if getattr(stage, "type", None) == "window"]
        out[p.sensor] = max(0, max(sizes, default=0) - 1)
    return out


def receive_maximum(cfg: EdgeConfig) -> int:
    """MQTT 5 Receive Maximum the edge announces: its queue plus the readings it may hold."""
    return min(65535, cfg.input.queue_size + MAX_HELD)


def broker_window(cfg: EdgeConfig) -> int | None:
    """QoS 1 messages the broker has in flight to this edge at most (None: no limit)."""
    configured = cfg.input.broker_inflight
    if cfg.mqtt.protocol == "5":
        announced = receive_maximum(cfg)
        return announced if not configured else min(announced, configured)
    if configured is None:
        return MQTT311_BROKER_INFLIGHT
    return configured or None


class EdgeDelivery:
    def __init__(self, cfg: EdgeConfig) -> None:
        self.cfg = cfg
        self.expiry_s = session_expiry_s(cfg)
        self.persistent = self.expiry_s > 0
        self.link: MqttLink | None = None
        self.outbox: Outbox | None = None
        self.sender: OutboxSender | None = None
        if cfg.outbox.enabled:
            o = cfg.outbox
            self.outbox = Outbox(
                outbox_path(cfg), max_messages=o.max_messages, max_bytes=o.max_bytes, ttl_s=o.ttl_s, fsync=o.fsync
            )
            if self.outbox.depth:
                log.info("outbox %s holds %d messages from before: replaying them first", self.outbox.path, self.outbox.depth)
            self.sender = OutboxSender(self.outbox, None, window=cfg.mqtt.max_inflight)
        self._direct: list = []  # Publications of direct publishes (outbox disabled)
        self._dirty = threading.Event()
        self._sync_stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self.outbox is not None and self.outbox.fsync == "batch":
            self._syncer = threading.Thread(target=self._sync_loop, name="edgeloop-outbox-sync", daemon=True)
        self.outbox_write_errors = 0
        self._log = RateLimitedLog(log)
        self.acks: InputAcks | None = None
        if cfg.input.qos == 1:
            history = window_history(cfg) if self.persistent else {}
            router = Router([p.template for p in cfg.pipelines])
            sensors = [p.sensor for p in cfg.pipelines]
            # Held readings stay below the broker's in-flight window: a window full of them would
            # stop the messages that release them (docs/reliability.md, "In-flight window").
            self.acks = InputAcks(self._ack, lambda topic: self._history_of(topic, history, router, sensors),
                                  max_held=held_limit(broker_window(cfg), cfg.input.queue_size))

    # ------------------------------------------------------------------ wiring

    def link_options(self) -> dict:
        """Keyword arguments for MqttLink: session, manual acks, receive maximum, PUBACK callback."""
        return {
            "clean_start": not self.persistent,
            "session_expiry_s": self.expiry_s,
            "manual_ack": self.acks is not None,
            "receive_maximum": receive_maximum(self.cfg) if self.acks is not None else None,
            "on_publish": self.sender.on_publish if self.sender is not None else None,
        }

    def attach(self, link: MqttLink) -> None:
        self.link = link
        if self.sender is not None:
            self.sender.link = link
            # The sender bounds what paho holds (mqtt.max_inflight rows); paho's own in-flight limit
            # would only add a scan of every held message per PUBACK (paho 2.x _update_inflight).
            link.set_max_inflight(0)

    def start(self) -> None:
        if self.sender is not None:
            self.sender.start()
        if self._syncer is not None:
            self._syncer.start()

    # ------------------------------------------------------------------ worker thread

    def ingested(self, topic: str, mid: int, qos: int, gen: int, samples: int, engine_pending: int) -> None:
        """After ``engine.ingest``: remember the ack; send it now if nothing waits for a flush."""
        if self.acks is None:
            return
        self.acks.received(topic, mid, qos, gen, samples)
        if not engine_pending:
            self._commit_inputs()

    def tick(self) -> None:
        """From the worker loop: the stall net (InputAcks.tick) for a broker window full of held readings."""
        if self.acks is not None and self.acks.tick():
            self._log.warning("input_stall", "no reading arrived for %.0fs with %d held: the broker's in-flight "
                              "window may be full; released the oldest early (set input.broker_inflight lower)",
                              self.acks.stall_s, self.acks.held + 1)

    def publish(self, messages: list[tuple[str, bytes]], engine_pending: int) -> None:
        """Results and samples: to disk, then to the broker. Readings whose windows are all out get acked."""
        if messages:
            if self.outbox is None:
                self._publish_direct(messages)
            else:
                try:
                    self.outbox.append(messages)
                except sqlite3.Error as exc:
                    # Disk full or gone: better in memory (lost only if the process dies) than nowhere.
                    self.outbox_write_errors += 1
                    self._log.warning("outbox_write", "outbox append failed (%s): publishing %d messages directly", exc, len(messages))
                    self._publish_direct(messages)
                else:
                    self.sender.wake()
                    self._dirty.set()
        if self.acks is not None and not engine_pending:
            self._commit_inputs()

    def _commit_inputs(self) -> None:
        """Readings ingested so far have their results in the outbox: ack them once that is on disk."""
        if self.outbox is None:
            self.acks.commit(0, 0)
            return
        self.acks.commit(self.outbox.append_seq, None)
        self.acks.release(self.outbox.synced_seq)  # read after commit(): the sync thread may just have synced

    def _sync_loop(self) -> None:
        interval = self.cfg.outbox.fsync_interval_ms / 1000.0
        last = 0.0
        while not self._sync_stop.is_set():
            self._dirty.wait(1.0)
            if not self._dirty.is_set():
                continue
            self._sync_stop.wait(max(0.0, last + interval - time.monotonic()))  # group commit
            self._dirty.clear()
            last = time.monotonic()
            self._sync()

    def _sync(self) -> None:
        try:
            synced = self.outbox.sync()
        except OSError as exc:
            self._log.warning("outbox_sync", "outbox fsync failed: %s", exc)
            return
        if self.acks is not None:
            self.acks.release(synced)

    def _publish_direct(self, messages: list[tuple[str, bytes]]) -> None:
        qos = self.cfg.output.qos
        for topic, payload in messages:
            info = self.link.publish(topic, payload, qos=qos)
            if qos and len(self._direct) < 100_000:
                self._direct.append(info)
        if len(self._direct) > 10_000:
            self._direct = [i for i in self._direct if not i.is_published()]

    # ------------------------------------------------------------------ lifecycle

    def finish_input(self) -> None:
        """Worker done: acknowledge what was processed. Held readings stay unacknowledged in a
        persistent session (the next start rebuilds its windows from them); without one they are acked."""
        if self.acks is None:
            return
        self._commit_inputs()
        if self.outbox is not None:
            self._sync()
        if not self.persistent:
            self.acks.release_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait (bounded) until the broker has acknowledged everything published. What is left stays on disk."""
        deadline = time.monotonic() + timeout_s
        ok = True
        if self.sender is not None:
            ok = self.sender.drain(timeout_s)
            if not ok:
                log.warning(
                    "outbox: %d messages not acknowledged within %.0fs; kept in %s for the next start",
                    self.outbox.depth, timeout_s, self.outbox.path,
                )
        pending = [i for i in self._direct if not i.is_published()]
        return wait_for_all(pending, max(0.0, deadline - time.monotonic())) and ok

    def close(self) -> None:
        self._sync_stop.set()
        self._dirty.set()
        if self._syncer is not None and self._syncer.is_alive():
            self._syncer.join(5)
        if self.sender is not None:
            self.sender.stop()
        if self.outbox is not None:
            self.outbox.close()

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.outbox is not None:
            out.update(self.outbox.counters())
            out.update(self.sender.counters())
            out["outbox_write_errors"] = self.outbox_write_errors
            out["outbox_fsyncs"] = self.outbox.syncs
        if self.acks is not None:
            out.update(self.acks.counters())
        return out

    # ------------------------------------------------------------------ helpers

    def _ack(self, mid: int, qos: int, gen: int) -> None:
        link = self.link
        if link is not None:
            link.ack(mid, qos, gen)

    @staticmethod
    def _history_of(topic: str, history: dict[str, int], router: Router, sensors: list[str]) -> int:
        """The window history of the pipeline whose input template matches ``topic`` (0: none does)."""
        if not history:
            return 0
        routed = router.route(topic)
        return 0 if routed is None else history.get(sensors[routed[0]], 0)
