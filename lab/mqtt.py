"""The workshop's side of the broker: a connected client, a watcher that keeps what it sees, a paced publisher.

Tests, demos, fault rigs and benchmarks watch and feed the broker through
these, so each is written once. This is the only workshop module that touches
paho; the product talks through ``edgeloop.mqtt``, and the benchmarks that
measure MQTT itself (the broker's limit, the naive baseline) keep bare paho.

- ``connect()``: a paho client connected to a broker, network loop running.
- ``publish_all()``: publish and wait until the broker acknowledged everything.
- ``Watcher``: subscribes (again after a broker restart), keeps every message,
  tracks node statuses, parses results on demand, waits for a node to come online,
  and ``sync()``s: waits until everything the broker routed to it so far has arrived.
- ``Publisher``: publishes a schedule of messages from a thread, each at its
  time (``paced()`` makes a steady-rate schedule from a list).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeloop.contract import ContractError, InferenceResult, NodeStatus, decode_results
from lab.servers import HOST, eventually

#: Results are parsed without the bridge's size limit: the watcher checks what the edge sent.
_NO_LIMIT = 1 << 30
_ids = itertools.count()


def connect(port: int, *, host: str = HOST, client_id: str | None = None, v5: bool = True,
            timeout: float = 10.0, **callbacks: Callable) -> paho.Client:
    """A paho client connected to ``host:port`` (CONNACK received), its network loop running.

    Up to 1,000 QoS 1 messages in flight and no limit on queued ones, so a
    publisher is never throttled by paho; reconnects within 1-2 s. ``callbacks``
    (``on_message=...``, ``on_subscribe=...``) are set before connecting;
    ``on_connect(client)`` runs on every (re)connect.
    """
    on_connect = callbacks.pop("on_connect", None)
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                         client_id=client_id or f"lab-{os.getpid()}-{next(_ids)}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 2)
    connected = threading.Event()

    def _on_connect(c: paho.Client, _u, _flags, reason, _props=None) -> None:  # noqa: ANN001
        if reason.is_failure:
            return
        if on_connect is not None:
            on_connect(c)
        connected.set()

    client.on_connect = _on_connect
    for name, fn in callbacks.items():
        setattr(client, name, fn)
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise RuntimeError(f"no CONNACK from {host}:{port} within {timeout}s")
    return client


def close(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


def properties(user: list[tuple[str, str]]) -> Properties:
    """MQTT v5 PUBLISH properties carrying ``user`` as user properties (frame metadata)."""
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = list(user)
    return props


def publish_all(client: paho.Client, messages: Iterable[tuple[str, bytes | str]], qos: int = 1,
                timeout: float = 10.0, retain: bool = False) -> None:
    """Publish every (topic, payload) and wait until the broker acknowledged each one."""
    infos = [client.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise AssertionError(f"broker did not acknowledge message {info.mid} within {timeout}s")


@dataclass(frozen=True, slots=True)
class Message:
    """One message as the watcher received it; ``received`` is the wall clock at arrival."""

    topic: str
    payload: bytes
    received: float
    user_properties: tuple[tuple[str, str], ...] = ()
    qos: int = 0
    retain: bool = False


class Watcher:
    """Subscribes to ``topics`` on the broker and keeps every message, in order of arrival.

    Subscribes on every connect, so it keeps watching across a broker restart;
    the constructor returns once the broker acknowledged the subscription.
    Status messages (``status/{node}``) are also parsed as ``NodeStatus``
    (junk is kept as a message, not as a status).
    """

    def __init__(self, port: int, topics: Iterable[str | tuple[str, int]] = ("status/#",), *, host: str = HOST,
                 qos: int = 1, timeout: float = 10.0) -> None:
        subscriptions = [(t, qos) if isinstance(t, str) else t for t in topics]
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._statuses: dict[str, list[tuple[float, NodeStatus]]] = {}
        self._results: list[InferenceResult] = []
        self._parsed = 0  # messages looked at by results()
        self._markers: dict[bytes, threading.Event] = {}  # sync() markers on their way back
        subscribed = threading.Event()
        self.client = connect(port, host=host, timeout=timeout, on_message=self._on_message,
                              on_subscribe=lambda *_a: subscribed.set(),
                              on_connect=lambda c: c.subscribe(subscriptions))
        if not subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"no SUBACK for {subscriptions} within {timeout}s")

    def _on_message(self, _c, _u, msg) -> None:  # noqa: ANN001 -- paho's callback
        marker = self._markers.get(msg.payload)
        if marker is not None:
            marker.set()
            return
        props = getattr(msg.properties, "UserProperty", None) if msg.properties is not None else None
        message = Message(msg.topic, msg.payload, time.time(), tuple(props) if props else (), msg.qos, bool(msg.retain))
        status = None
        if msg.topic.startswith("status/") and msg.payload:
            try:
                status = NodeStatus.model_validate_json(msg.payload)
            except ValueError:
                pass
        with self._lock:
            self._messages.append(message)
            if status is not None:
                self._statuses.setdefault(msg.topic.split("/", 1)[1], []).append((message.received, status))

    # ------------------------------------------------------------ what was seen

    def messages(self, prefix: str = "") -> list[Message]:
        with self._lock:
            return [m for m in self._messages if m.topic.startswith(prefix)]

    def on(self, prefix: str) -> list[bytes]:
        """Payloads of the messages whose topic starts with ``prefix``."""
        return [m.payload for m in self.messages(prefix)]

    def statuses(self, node: str) -> list[tuple[float, NodeStatus]]:
        """(arrival time, status) of every valid status ``node`` published, oldest first."""
        with self._lock:
            return list(self._statuses.get(node, ()))

    def states(self, node: str) -> list[str]:
        return [s.state for _t, s in self.statuses(node)]

    def status(self, node: str) -> NodeStatus | None:
        """The latest status of ``node``, if any arrived."""
        seen = self.statuses(node)
        return seen[-1][1] if seen else None

    def results(self, node: str | None = None) -> list[InferenceResult]:
        """Every valid result seen (single or batched), of ``node`` only if given; parsed once each."""
        with self._lock:
            fresh = self._messages[self._parsed:]
            self._parsed = len(self._messages)
            for m in fresh:
                if m.topic.startswith("results/"):
                    try:
                        self._results.extend(decode_results(m.payload, _NO_LIMIT))
                    except ContractError:
                        pass
            return [r for r in self._results if node is None or r.node == node]

    # ------------------------------------------------------------ waiting

    def sync(self, topic: str, timeout: float = 10.0) -> None:
        """Publish a marker on ``topic`` (inside this watcher's subscriptions) and wait until it comes back.

        The broker keeps the order of what it sends one subscriber, so every message it had routed to this
        watcher before the marker has arrived by then: "nothing more came" is an event, not a sleep.
        The marker itself is not kept.
        """
        token = f"lab-sync-{os.getpid()}-{next(_ids)}".encode()
        back = threading.Event()
        self._markers[token] = back
        try:
            publish_all(self.client, [(topic, token)], timeout=timeout)
            if not back.wait(timeout):
                raise AssertionError(f"the sync marker on {topic!r} did not come back within {timeout}s")
        finally:
            del self._markers[token]

    def wait_online(self, node: str, proc=None, timeout: float = 60.0, after: int = 0) -> None:  # noqa: ANN001
        """Until ``node`` published an ``online`` status (after its first ``after`` statuses).

        With ``proc`` (anything with ``alive()``, ``returncode`` and ``log_tail()``,
        e.g. a ``lab.procs.CliProcess``), fails at once, with its log, if it exits first.
        """
        eventually(lambda: "online" in self.states(node)[after:], timeout=timeout,
                   message=f"{node} never published an online status", alive=[] if proc is None else [proc])

    def close(self) -> None:
        close(self.client)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def paced(messages: Iterable[tuple[str, bytes | str]], rate_per_s: float) -> Iterator[tuple[float, str, bytes | str]]:
    """A schedule for ``Publisher``: ``messages`` at a steady ``rate_per_s``."""
    for i, (topic, payload) in enumerate(messages):
        yield i / rate_per_s, topic, payload


class Publisher:
    """Publishes a schedule of (seconds after start, topic, payload) from a thread.

    An absolute schedule: a message that is late (the thread woke up late) goes
    at once, so the mean rate holds. The schedule is read lazily, in the
    thread, so a generator can stamp readings with the wall clock; the first
    ``published`` messages of it went out (after ``stop()`` one more may have
    been read but not sent). At QoS 1
    paho keeps every message until its PUBACK and resends it after
    reconnecting: a broker restart costs the publisher nothing.
    """

    def __init__(self, port: int, schedule: Iterable[tuple[float, str, bytes | str]], *, qos: int = 1,
                 host: str = HOST) -> None:
        self.schedule = schedule
        self.qos = qos
        self.published = 0
        self.started_at = 0.0  # wall clock when the schedule started
        self._acked: set[int] = set()
        self._mids: list[int] = []
        self._stop = threading.Event()
        self.client = connect(port, host=host, on_publish=lambda _c, _u, mid, _rc, _p: self._acked.add(mid))
        self._thread = threading.Thread(target=self._run, name="lab-publisher", daemon=True)

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        self.started_at = time.time()
        t0 = time.monotonic()
        for due, topic, payload in self.schedule:
            delay = t0 + due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            if self._stop.is_set():
                break
            self._mids.append(self.client.publish(topic, payload, qos=self.qos).mid)
            self.published += 1

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop publishing (what was published stays published)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_acked(self, timeout: float) -> None:
        """Until the schedule is done and the broker acknowledged every message (QoS 1)."""
        self._thread.join(timeout)
        eventually(lambda: not self._thread.is_alive() and self._acked.issuperset(self._mids), timeout=timeout,
                   interval=0.1, message="publisher: every message acknowledged by the broker")

    def close(self) -> None:
        self.stop()
        close(self.client)
