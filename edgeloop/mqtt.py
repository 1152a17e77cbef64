"""The MQTT link shared by every component: one supervised paho client behind a small, sealed API.

Why one place: the edge, the bridge and the device publishers all need the same
broker-URL parsing, TLS/credential handling, MQTT v5/3.1.1 selection, reconnect
policy and subscription bookkeeping. Nothing outside this module imports paho or
touches the client (tests/unit/test_mqtt_seam.py): callers see :class:`Message`,
:class:`PublishProperties` and :class:`Publication`, and the settings re-exported
from ``edgeloop.mqttconfig``.

What the link promises (docs/reliability.md, "The MQTT link"):

- **Subscriptions belong to the link.** ``subscribe()``/``unsubscribe()`` work at
  any time, connected or not; after every CONNACK -- clean or resumed session --
  all current subscriptions are made again, then ``on_connected`` runs.
- **Handlers cannot kill the network thread.** An exception in ``on_message``,
  ``on_connected`` or ``on_publish`` is caught, counted (``handler_errors``) and
  logged rate-limited. A QoS 1/2 message whose handler raised is *not*
  acknowledged: the link acknowledges a message only after its handler returned
  (or, with ``manual_ack``, when its owner calls :meth:`MqttLink.ack`). The broker
  sends it again after the next reconnect if the session persists; with a clean
  session it goes with the session, like anything else in flight. Until then it
  holds one slot of the broker's in-flight window for this client.
- **Reconnects back off** with full jitter and reset only after a stable
  connection (``edgeloop.backoff``), whether TCP failed, the broker refused the
  CONNECT, or it closed the connection.

Threads: handlers run on paho's network thread and must only hand off.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeloop.backoff import ReconnectBackoff
from edgeloop.errors import ConfigError, TransientError
from edgeloop.mqttconfig import (
    DEFAULT_BROKER,
    BrokerAddress,
    MqttSettings,
    TlsSettings,
    Will,
    _loopback,
    parse_broker_url,
    redact_url,
)
from edgeloop.ratelimit import RateLimitedLog

__all__ = [
    "DEFAULT_BROKER", "BrokerAddress", "Message", "MessageHandler", "MqttLink", "MqttSettings", "Publication",
    "PublishHandler", "PublishProperties", "TlsSettings", "Will", "parse_broker_url", "redact_url", "wait_for_all",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """A message as handlers see it. ``mid`` and ``qos`` are what :meth:`MqttLink.ack` needs."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    mid: int = 0
    #: MQTT v5 user properties, in the order they came; () without any (and always on 3.1.1).
    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None


# Building a Message on paho's thread for every message: a frozen dataclass's __init__ goes through
# object.__setattr__ per field (~1 us more than setting the slots directly), so the link sets them.
_set_topic, _set_payload, _set_qos, _set_retain, _set_mid, _set_user_properties, _set_content_type = (
    Message.__dict__[name].__set__ for name in Message.__slots__
)
_new_object = object.__new__


def _message(topic: str, payload: bytes, qos: int, retain: bool, mid: int,
             user_properties: tuple[tuple[str, str], ...], content_type: str | None) -> Message:
    m = _new_object(Message)
    _set_topic(m, topic)
    _set_payload(m, payload)
    _set_qos(m, qos)
    _set_retain(m, retain)
    _set_mid(m, mid)
    _set_user_properties(m, user_properties)
    _set_content_type(m, content_type)
    return m


@dataclass(frozen=True, slots=True)
class PublishProperties:
    """MQTT v5 properties of an outgoing message (what the camera frames contract needs)."""

    user_properties: tuple[tuple[str, str], ...] = ()
    content_type: str | None = None

    def __post_init__(self) -> None:
        pairs = tuple((str(k), str(v)) for k, v in self.user_properties)
        object.__setattr__(self, "user_properties", pairs)

    def _to_paho(self) -> Properties:
        props = Properties(PacketTypes.PUBLISH)
        if self.user_properties:
            props.UserProperty = list(self.user_properties)
        if self.content_type is not None:
            props.ContentType = self.content_type
        return props


_PUBLISH_OK = (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_AGAIN)


class Publication:
    """What :meth:`MqttLink.publish` returns: ``mid``, ``wait(timeout)``, ``is_published()``, ``error``.

    Published means: QoS 0 written to the socket, QoS 1/2 acknowledged by the
    broker. A QoS 1/2 message published while disconnected is held by the client
    and sent after the reconnect, so waiting for it can still succeed.
    """

    __slots__ = ("_info", "qos")

    def __init__(self, info: paho.MQTTMessageInfo, qos: int) -> None:
        self._info = info
        self.qos = qos

    @property
    def mid(self) -> int:
        return self._info.mid

    @property
    def error(self) -> str | None:
        """None when the client took the message on a live connection; else why not (it may still be held)."""
        rc = self._info.rc
        return None if rc in _PUBLISH_OK else paho.error_string(rc)

    def _lost(self) -> bool:
        rc = self._info.rc
        return rc not in _PUBLISH_OK and not (self.qos and rc == paho.MQTT_ERR_NO_CONN)

    def is_published(self) -> bool:
        # paho's own is_published() raises for a held QoS 1 message (rc NO_CONN) that will still go out.
        return self._info._published and not self._lost()

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the message to be published; True if it was."""
        info = self._info
        deadline = time.monotonic() + timeout_s
        with info._condition:
            while not info._published and not self._lost():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                info._condition.wait(min(remaining, 0.1))  # paho notifies one waiter only
        return self.is_published()


def wait_for_all(publications: Iterable[Publication], timeout_s: float) -> bool:
    """Wait until every publication is published (QoS 1: acknowledged), or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    for pub in publications:
        if not pub.wait(max(0.0, deadline - time.monotonic())):
            return False
    return True


MessageHandler = Callable[[Message], None]
#: ``(mid, refusal)``: refusal is None when the broker accepted the message (PUBACK; QoS 0: written),
#: else its v5 reason ("Not authorized", "Quota exceeded", ...).
PublishHandler = Callable[[int, "str | None"], None]


class MqttLink:
    """A paho client with a supervised network thread (see the module docstring for the guarantees).

    ``start()`` connects in the background; ``subscribe``/``unsubscribe``/``publish``/``ack``
    from any thread; ``barrier()`` and ``unsubscribe_all()`` mark drain points; ``stop()``.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        on_message: MessageHandler | None = None,
        subscriptions: Iterable[tuple[str, int]] = (),
        will: Will | None = None,
        on_connected: Callable[[], None] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        on_publish: PublishHandler | None = None,
        backoff: ReconnectBackoff | None = None,
    ) -> None:
        self.settings = settings
        self.address = parse_broker_url(settings.url)
        self.connected = threading.Event()
        #: Set once the subscriptions made again at the latest CONNACK are acknowledged (SUBACK).
        self.subscribed = threading.Event()
        self.reconnects = 0
        #: Connection attempts so far (TCP connect + CONNECT), whatever their outcome.
        self.connect_attempts = 0
        #: Exceptions raised by on_message / on_connected / on_publish (caught; see the module docstring).
        self.handler_errors = 0
        #: Incremented on every accepted CONNACK: an ack for a message received on an older
        #: connection must not be sent (its packet id may name another message by now).
        self.generation = 0
        #: The broker resumed our session (MQTT v5 clean_start=false / 3.1.1 clean_session=false).
        self.session_present = False
        #: Why the last connection attempt failed ("Not authorized", a TLS error), for start()'s error.
        self.last_failure: str | None = None
        self.backoff = backoff or ReconnectBackoff(
            settings.reconnect_min_s, settings.reconnect_max_s, settings.reconnect_stable_s
        )
        self.v5 = settings.protocol == "5"
        self._on_message = on_message
        self._on_connected = on_connected
        self._on_publish = on_publish
        self._manual_ack = manual_ack
        self._ever_connected = False
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._stopping = False
        self._connack_refused = False
        self._last_io_error: str | None = None
        self._subs: dict[str, int] = {}
        self._sub_lock = threading.Lock()
        #: mid of a SUBSCRIBE/UNSUBSCRIBE in flight -> (what it was for, set on its ack)
        self._pending: dict[int, tuple[str, threading.Event]] = {}
        for topic, qos in subscriptions:
            self._check_filter(topic, qos)
            self._subs[topic] = qos
        self._fail_log = RateLimitedLog(log, interval_s=60.0, per_interval=3)
        self._handler_log = RateLimitedLog(log)

        # Acks are always the link's decision (manual_ack at the paho level): see _deliver.
        self._client = client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else clean_start,
            manual_ack=True,
        )
        client.suppress_exceptions = True  # backstop: the link's own callbacks catch what they call
        client.max_inflight_messages_set(settings.max_inflight)
        client.max_queued_messages_set(0)
        username = settings.username or self.address.username
        password = settings.password or self.address.password
        if username:
            client.username_pw_set(username, password.get_secret_value() if password else None)
        if self.address.tls or settings.tls:
            self._configure_tls(settings.tls or TlsSettings())
        elif password is not None and not _loopback(self.address.host):
            log.warning("sending MQTT credentials to %s without TLS: use mqtts://", self.address.host)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        client.on_pre_connect = self._handle_pre_connect
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_connect_fail = self._handle_connect_fail
        client.on_subscribe = self._handle_suback
        client.on_unsubscribe = self._handle_suback
        client.on_message = self._deliver
        if on_publish is not None:
            client.on_publish = self._handle_publish
        # Only while not connected (no cost on the message path): paho reports socket and TLS
        # errors through its log callback alone.
        client.on_log = self._capture_io_error

    def _configure_tls(self, tls: TlsSettings) -> None:
        try:
            ctx = tls.ssl_context()
        except ValueError as exc:  # files changed since the config was validated
            raise ConfigError("mqtt.tls", [str(exc)]) from None
        self._client.tls_set_context(ctx)

    # ------------------------------------------------------------------ messages (network thread)

    def _deliver(self, client: paho.Client, _userdata: object, m: paho.MQTTMessage) -> None:
        """paho's on_message: convert, run the handler guarded, then acknowledge (unless manual_ack)."""
        try:
            topic = m.topic
        except UnicodeDecodeError:  # a broker that does not check UTF-8: the handler rejects it by topic
            topic = m._topic.decode("utf-8", "replace")
        props = m.properties
        user_properties, content_type = (), None
        if props is not None and len(props.__dict__) > 4:  # paho keeps 4 own attributes; more = properties
            found = props.__dict__
            user_properties = tuple(found.get("UserProperty", ()))
            content_type = found.get("ContentType")
        handler = self._on_message
        if handler is not None:
            try:
                handler(_message(topic, m.payload, m.qos, m.retain, m.mid, user_properties, content_type))
            except Exception as exc:  # noqa: BLE001 -- the network thread must live on
                self.handler_errors += 1
                self._handler_log.warning(
                    "on_message", "message handler failed on %r: %r; the message is not acknowledged",
                    topic[:128], exc, exc_info=True,
                )
                return
        if m.qos and not self._manual_ack:
            client.ack(m.mid, m.qos)

    def _handle_publish(self, _client, _userdata, mid, reason_code, _props) -> None:  # noqa: ANN001
        try:
            self._on_publish(mid, str(reason_code) if reason_code.is_failure else None)
        except Exception as exc:  # noqa: BLE001
            self.handler_errors += 1
            self._handler_log.warning("on_publish", "on_publish handler failed: %r", exc, exc_info=True)

    # ------------------------------------------------------------------ connection (network thread)

    def _handle_pre_connect(self, _client, _userdata) -> None:  # noqa: ANN001
        self.connect_attempts += 1

    def _handle_connect(self, client, _userdata, flags, reason_code, _props) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self.last_failure = f"broker refused the connection: {reason_code}"
            self._connack_refused = True
            return  # paho closes the connection next: _handle_disconnect picks the delay and logs
        self.backoff.connected()
        self.last_failure = None
        self._last_io_error = None
        client.on_log = None
        self.generation += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        if self._ever_connected:
            self.reconnects += 1
            log.info("reconnected to %s%s", redact_url(self.settings.url), " (session resumed)" if self.session_present else "")
        self._ever_connected = True
        # Every subscription, on every CONNACK: a clean session has none, and a resumed one may
        # predate subscriptions added while we were away.
        self.subscribed.clear()
        with self._sub_lock:
            subs = list(self._subs.items())
            if subs:
                _, mid = client.subscribe(subs)
                self._pending[mid] = ("restore", self.subscribed)
        if not subs:
            self.subscribed.set()
        self.connected.set()
        if self._on_connected is not None:
            try:
                self._on_connected()
            except Exception as exc:  # noqa: BLE001
                self.handler_errors += 1
                self._handler_log.warning("on_connected", "on_connected handler failed: %r", exc, exc_info=True)

    def _handle_disconnect(self, client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        with self._sub_lock:
            self._pending.clear()  # no ack comes for those any more; waiters time out
        if self._stopping:
            return
        delay = self._next_delay(client)
        if was_connected:
            log.warning("disconnected from %s: %s; reconnecting in %.1fs", redact_url(self.settings.url),
                        reason_code, delay)
        elif self._connack_refused:
            self._connack_refused = False
            self._fail_log.warning(
                "refused", "broker %s refused connection: %s; retrying in %.1fs (attempt %d)",
                redact_url(self.settings.url), self.last_failure.rsplit(": ", 1)[-1], delay, self.backoff.attempt,
            )
        else:
            # e.g. TLS 1.3: a broker refusing our certificate ends the session after the handshake.
            self.last_failure = f"connection closed before CONNACK: {self._last_io_error or reason_code}"
            self._log_retry(delay)
        client.on_log = self._capture_io_error

    def _handle_connect_fail(self, client, _userdata) -> None:  # noqa: ANN001
        # paho calls this from inside its `except OSError` block: the exception is the reason
        # (connection refused, a TLS handshake error such as an unknown CA).
        exc = sys.exc_info()[1]
        self.last_failure = f"{type(exc).__name__}: {exc}" if exc is not None else "connection failed"
        self._log_retry(self._next_delay(client))

    def _next_delay(self, client: paho.Client) -> float:
        """Steer paho's loop: it calls on_disconnect / on_connect_fail right before it waits
        (``_reconnect_wait``), and with min == max that wait is exactly this delay."""
        delay = self.backoff.next_delay()
        client.reconnect_delay_set(delay, delay)
        return delay

    def _log_retry(self, delay: float) -> None:
        self._fail_log.warning(
            "connect_fail", "cannot connect to broker %s (%s); retrying in %.1fs (attempt %d)",
            redact_url(self.settings.url), self.last_failure, delay, self.backoff.attempt,
        )

    def _capture_io_error(self, _client, _userdata, level, buf) -> None:  # noqa: ANN001
        if level == paho.MQTT_LOG_ERR:
            self._last_io_error = buf

    def _handle_suback(self, _client, _userdata, mid, reason_codes, _props) -> None:  # noqa: ANN001
        with self._sub_lock:
            what, done = self._pending.pop(mid, (None, None))
        if what == "restore" or what == "subscribe":
            for code in reason_codes:
                if code.is_failure:
                    self._handler_log.warning("suback", "broker refused a subscription: %s", code)
        if done is not None:
            done.set()

    # ------------------------------------------------------------------ subscriptions (any thread)

    @staticmethod
    def _check_filter(topic: str, qos: int) -> None:
        if not isinstance(topic, str) or not topic or qos not in (0, 1, 2):
            raise ValueError(f"subscription needs a topic filter and qos 0, 1 or 2, got {topic!r}, {qos!r}")

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        """The link's subscriptions: made again after every reconnect."""
        with self._sub_lock:
            return list(self._subs.items())

    def _send(self, what: str, request: Callable[[], tuple[int, int]]) -> threading.Event | None:
        """Send a (UN)SUBSCRIBE now if connected; the event is set on its ack. Hold _sub_lock."""
        if not self.connected.is_set():
            return None
        rc, mid = request()
        if rc != paho.MQTT_ERR_SUCCESS:
            return None  # the connection just went: the next CONNACK restores the subscriptions
        done = threading.Event()
        self._pending[mid] = (what, done)
        return done

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe now (if connected) and after every reconnect. Safe from any thread, at any time."""
        self._check_filter(topic, qos)
        with self._sub_lock:
            self._subs[topic] = qos
            self._send("subscribe", lambda: self._client.subscribe(topic, qos=qos))

    def unsubscribe(self, topic: str) -> None:
        """Forget a subscription: unsubscribed now (if connected) and not made again after a reconnect."""
        with self._sub_lock:
            if self._subs.pop(topic, None) is None:
                return
            self._send("unsubscribe", lambda: self._client.unsubscribe(topic))

    def unsubscribe_all(self, timeout_s: float = 2.0) -> bool:
        """Drop every subscription and wait for UNSUBACK.

        After UNSUBACK the broker sends nothing more, and everything it routed
        before has already arrived: the point at which a drain can begin.
        """
        with self._sub_lock:
            topics = list(self._subs)
            self._subs.clear()
            done = self._send("unsubscribe", lambda: self._client.unsubscribe(topics)) if topics else None
        return done is not None and done.wait(timeout_s)

    def barrier(self, timeout_s: float = 2.0) -> bool:
        """Subscribe again to every subscription (no change, no retained resend) and wait for SUBACK.

        The drain point for a persistent session, where unsubscribing would stop
        the broker from queueing for us while we are away: like UNSUBACK, the
        SUBACK comes after every message the broker had already sent us.
        """
        with self._sub_lock:
            subs = list(self._subs.items())
            if not subs:
                return False
            if self.v5:
                keep = SubscribeOptions.RETAIN_DO_NOT_SEND
                request = [(t, SubscribeOptions(qos=q, retainHandling=keep)) for t, q in subs]
            else:
                request = subs
            done = self._send("barrier", lambda: self._client.subscribe(request))
        return done is not None and done.wait(timeout_s)

    # ------------------------------------------------------------------ publishing and acks (any thread)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                properties: PublishProperties | None = None) -> Publication:
        """Hand a message to the client; ValueError if it can never be sent (bad topic, oversize, v5-only properties)."""
        props = None
        if properties is not None:
            if not self.v5:
                raise ValueError("message properties need MQTT 5 (mqtt.protocol: \"5\")")
            props = properties._to_paho()
        return Publication(self._client.publish(topic, payload, qos=qos, retain=retain, properties=props), qos)

    def set_max_inflight(self, limit: int) -> None:
        """How many QoS 1/2 publishes the client itself lets wait for their ack (0: no limit of its own)."""
        self._client.max_inflight_messages_set(limit)

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message received with ``manual_ack`` on connection ``generation``.

        Skipped (False) if the connection changed since: the broker sends the
        message again on the new connection (persistent session) or has forgotten it.
        Without ``manual_ack`` the link acknowledges by itself, and this does nothing.
        """
        if not self._manual_ack or qos == 0 or generation != self.generation or not self.connected.is_set():
            return False
        self._client.ack(mid, qos)
        return True

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background; with ``wait_s`` raise TransientError if no CONNACK by then."""
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            if self._receive_maximum:
                props.ReceiveMaximum = min(65535, self._receive_maximum)
        self._client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self._clean_start if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self._client.loop_start()
        if wait_s is not None and not self.connected.wait(wait_s):
            self.stop()
            why = f" ({self.last_failure})" if self.last_failure else ""
            raise TransientError(
                f"no connection to broker {redact_url(self.settings.url)} within {wait_s:.0f}s{why}"
            )

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        """Optionally publish ``final`` (retained, e.g. an offline status), then disconnect."""
        self._stopping = True
        if final is not None and self.connected.is_set():
            self.publish(final[0], final[1], qos=1, retain=True).wait(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
