"""MQTT connection settings and a supervised paho client shared by all components.

Why one place: the edge, the bridge and the simulators all need the same
broker-URL parsing, TLS/credential handling, MQTT v5/3.1.1 selection, and a
reconnect policy that does not make a fleet stampede a restarted broker.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edgeloop.errors import ConfigError, TransientError
from edgeloop.ratelimit import RateLimitedLog
from edgeloop.secrets import read_secret_file

log = logging.getLogger(__name__)

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


class TlsSettings(BaseModel):
    """TLS to the broker (docs/security.md).

    ``ca_file`` authenticates the server (default: the system trust store);
    ``cert_file`` + ``key_file`` add a client certificate (mutual TLS), with
    ``key_password`` or ``key_password_file`` if the key is encrypted. The files
    are loaded while the config is validated, so a missing file, a key that
    does not match its certificate or a wrong key password is a ConfigError
    naming the field, not a connection failure later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: SecretStr | None = None
    key_password_file: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    insecure_skip_verify: bool = Field(
        default=False,
        description="skip the hostname check only (the certificate chain is still verified); testing only",
    )

    @field_validator("min_version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        # YAML reads `min_version: 1.2` as a float.
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _load_files(self) -> "TlsSettings":
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if self.key_password is not None and self.key_password_file is not None:
            raise ValueError("set 'key_password' or 'key_password_file', not both")
        if self.key_password_file is not None:
            value = read_secret_file(self.key_password_file, "key_password_file")
            object.__setattr__(self, "key_password", SecretStr(value))
        self.ssl_context()
        return self

    def ssl_context(self) -> ssl.SSLContext:
        """A client context: verify the server (and its name), present our certificate if any.

        Raises ValueError naming the field whose file cannot be used.
        """
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            try:
                usable = path is None or Path(path).is_file()
            except OSError:  # e.g. a name too long: is_file() raises instead of saying False
                usable = False
            if not usable:
                raise ValueError(f"{name} {str(path)[:200]!r} does not exist or is not a file")
        # With a ca_file, trust that CA alone (not the system store as well): a private
        # broker must not be impersonable by anyone holding a public certificate for its name.
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None)
        except (ssl.SSLError, OSError, ValueError):
            what = f"ca_file {str(self.ca_file)!r} holds no PEM CA certificate" if self.ca_file else "no system CA store"
            raise ValueError(what) from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if self.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            password = self.key_password.get_secret_value() if self.key_password else ""
            try:
                # A callable, never None: with None, OpenSSL would prompt on the terminal for the
                # pass phrase of an encrypted key and block a service that has no terminal.
                ctx.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None, password=lambda: password
                )
            except (ssl.SSLError, OSError, ValueError):
                raise ValueError(
                    f"cert_file {str(self.cert_file)!r} and key_file {str(self.key_file)!r} are not a PEM "
                    "certificate and its private key (or the key is encrypted and key_password is wrong or missing)"
                ) from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
        return ctx


class MqttSettings(BaseModel):
    """How to reach the broker. ``url`` is ``mqtt://[user:pass@]host[:port]`` or ``mqtts://``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = DEFAULT_BROKER
    client_id: str | None = Field(default=None, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="file holding the password; read at startup")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: TlsSettings | None = None
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_inflight: Annotated[int, Field(ge=1, le=65535)] = 100
    session_expiry_s: Annotated[int, Field(ge=0, le=4294967295)] | None = Field(
        default=None,
        description="persistent session lifetime after a disconnect (v5 session expiry; 3.1.1: >0 means "
        "clean_session=false); 0 = clean session; default: the component's (edge and bridge: 3600)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parse_broker_url(url)
        return url

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol(cls, value: object) -> object:
        # YAML reads `protocol: 5` as an int and `3.1.1` as a string.
        return str(value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _secrets_and_tls(self) -> "MqttSettings":
        if self.password is not None and self.password_file is not None:
            raise ValueError("set 'password' or 'password_file', not both")
        in_url = parse_broker_url(self.url)
        if in_url.password is not None:
            # Move it out of the URL (a plain string that reprs and logs would show) into the SecretStr.
            if self.password is not None or self.password_file is not None:
                raise ValueError("the password is given twice: in 'url' and in 'password'/'password_file'")
            object.__setattr__(self, "password", in_url.password)
            object.__setattr__(self, "url", _without_password(self.url))
            if self.username is None:
                object.__setattr__(self, "username", in_url.username)
        if self.password_file is not None:
            # Frozen model: the file is read once here, at startup.
            object.__setattr__(self, "password", SecretStr(read_secret_file(self.password_file, "password_file")))
        if self.tls is not None and not parse_broker_url(self.url).tls:
            raise ValueError("'tls' is set but 'url' is mqtt:// (plain TCP): use mqtts://host (default port 8883)")
        return self


class BrokerAddress(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: SecretStr | None = None


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://user:pass@host:1883`` -> BrokerAddress; ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"broker URL scheme must be mqtt:// or mqtts://, got {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("broker URL has no host")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError("broker URL must not have a path or query")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError("broker URL port must be a number 1-65535") from None
    password = SecretStr(unquote(parts.password)) if parts.password else None
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=password,
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return parts._replace(netloc=netloc).geturl()


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
    return parts._replace(netloc=netloc).geturl()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Will(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MessageHandler = Callable[[paho.MQTTMessage], None]


class MqttLink:
    """A paho client with a supervised network thread.

    - MQTT v5 (default) or 3.1.1, TLS and credentials from :class:`MqttSettings`.
    - Subscriptions are (re)made on every CONNACK, then ``on_connected`` runs
      (for birth messages).
    - Reconnects back off exponentially up to ``reconnect_max_s``; the first
      delay of each outage is drawn at random from [min/2, 2*min] so a fleet
      that lost the same broker does not return in lock-step.
    - ``on_message`` runs on paho's network thread: it must only hand off.
    """

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        on_message: MessageHandler | None = None,
        subscriptions: list[tuple[str, int]] | None = None,
        will: Will | None = None,
        on_connected: Callable[[], None] | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        manual_ack: bool = False,
        receive_maximum: int | None = None,
        on_publish: Callable[[int, bool], None] | None = None,
    ) -> None:
        self.settings = settings
        self.address = parse_broker_url(settings.url)
        self.subscriptions = list(subscriptions or [])
        self.connected = threading.Event()
        self.reconnects = 0
        self._on_connected = on_connected
        self._ever_connected = False
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        #: Incremented on every accepted CONNACK: an ack for a message received on an older
        #: connection must not be sent (its packet id may name another message by now).
        self.generation = 0
        #: The broker resumed our session (MQTT v5 clean_start=false / 3.1.1 clean_session=false).
        self.session_present = False
        self._rng = random.Random()
        self._stopping = False
        #: Why the last connection attempt failed ("Not authorized", a TLS error), for start()'s error.
        self.last_failure: str | None = None
        self._connack_refused = False
        self._last_io_error: str | None = None

        self.v5 = settings.protocol == "5"
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id or client_id,
            protocol=paho.MQTTv5 if self.v5 else paho.MQTTv311,
            clean_session=None if self.v5 else clean_start,
            manual_ack=manual_ack,
        )
        self.client.max_inflight_messages_set(settings.max_inflight)
        self.client.max_queued_messages_set(0)
        username = settings.username or self.address.username
        password = settings.password or self.address.password
        if username:
            self.client.username_pw_set(username, password.get_secret_value() if password else None)
        if self.address.tls or settings.tls:
            self._configure_tls(settings.tls or TlsSettings())
        elif password is not None and not _loopback(self.address.host):
            log.warning("sending MQTT credentials to %s without TLS: use mqtts://", self.address.host)
        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._jitter_reconnect()
        self.client.on_connect = self._handle_connect
        self.client.on_disconnect = self._handle_disconnect
        self.client.on_connect_fail = self._handle_connect_fail
        self._fail_log = RateLimitedLog(log, interval_s=60.0, per_interval=3)
        if on_message is not None:
            self.client.on_message = lambda _c, _u, msg: on_message(msg)
        if on_publish is not None:
            # (mid, accepted): PUBACK for QoS 1 (a v5 reason code >= 0x80 is a refusal), written for QoS 0.
            self.client.on_publish = lambda _c, _u, mid, rc, _p: on_publish(mid, not rc.is_failure)
        # Only while not connected (no cost on the message path): paho reports socket and TLS
        # errors through its log callback alone.
        self.client.on_log = self._capture_io_error

    def _configure_tls(self, tls: TlsSettings) -> None:
        try:
            ctx = tls.ssl_context()
        except ValueError as exc:  # files changed since the config was validated
            raise ConfigError("mqtt.tls", [str(exc)]) from None
        self.client.tls_set_context(ctx)

    def _jitter_reconnect(self) -> None:
        base = self.settings.reconnect_min_s
        first = self._rng.uniform(base / 2, base * 2)
        self.client.reconnect_delay_set(
            min_delay=max(1, round(first)), max_delay=max(1, round(self.settings.reconnect_max_s))
        )

    def _handle_connect(self, client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self.last_failure = f"broker refused the connection: {reason_code}"
            self._connack_refused = True
            log.warning("broker %s refused connection: %s", redact_url(self.settings.url), reason_code)
            return
        self.last_failure = None
        self._last_io_error = None
        client.on_log = None
        self.generation += 1
        self.session_present = bool(getattr(_flags, "session_present", False))
        if self._ever_connected:
            self.reconnects += 1
            log.info("reconnected to %s%s", redact_url(self.settings.url), " (session resumed)" if self.session_present else "")
        self._ever_connected = True
        for topic, qos in self.subscriptions:
            client.subscribe(topic, qos=qos)
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _handle_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:  # noqa: ANN001
        was_connected = self.connected.is_set()
        self.connected.clear()
        if was_connected and not self._stopping:
            log.warning("disconnected from %s: %s", redact_url(self.settings.url), reason_code)
        elif not was_connected and not self._stopping:
            if self._connack_refused:
                self._connack_refused = False  # last_failure already says why
            else:
                # e.g. TLS 1.3: a broker refusing our certificate ends the session after the handshake.
                self.last_failure = f"connection closed before CONNACK: {self._last_io_error or reason_code}"
                self._fail_log.warning(
                    "connect_fail",
                    "cannot connect to broker %s (%s); retrying with backoff",
                    redact_url(self.settings.url),
                    self.last_failure,
                )
        self.client.on_log = self._capture_io_error
        self._jitter_reconnect()

    def _capture_io_error(self, _client, _userdata, level, buf) -> None:  # noqa: ANN001
        if level == paho.MQTT_LOG_ERR:
            self._last_io_error = buf

    def _handle_connect_fail(self, _client, _userdata) -> None:  # noqa: ANN001
        # paho calls this from inside its `except OSError` block: the exception is the reason
        # (connection refused, a TLS handshake error such as an unknown CA).
        exc = sys.exc_info()[1]
        self.last_failure = f"{type(exc).__name__}: {exc}" if exc is not None else "connection failed"
        self._fail_log.warning(
            "connect_fail",
            "cannot connect to broker %s (%s); retrying with backoff",
            redact_url(self.settings.url),
            self.last_failure,
        )

    def start(self, wait_s: float | None = 10.0) -> None:
        """Connect in the background; with ``wait_s`` raise TransientError if no CONNACK by then."""
        props = None
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
            if self._receive_maximum:
                props.ReceiveMaximum = min(65535, self._receive_maximum)
        self.client.connect_async(
            self.address.host,
            self.address.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self._clean_start if self.v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()
        if wait_s is not None and not self.connected.wait(wait_s):
            self.stop()
            why = f" ({self.last_failure})" if self.last_failure else ""
            raise TransientError(
                f"no connection to broker {redact_url(self.settings.url)} within {wait_s:.0f}s{why}"
            )

    def unsubscribe_all(self, timeout_s: float = 2.0) -> bool:
        """Unsubscribe from every subscription and wait for UNSUBACK.

        After UNSUBACK the broker sends nothing more, and everything it routed
        before has already arrived: the point at which a drain can begin.
        """
        if not self.subscriptions or not self.connected.is_set():
            return False
        done = threading.Event()
        self.client.on_unsubscribe = lambda *_args: done.set()
        self.client.unsubscribe([topic for topic, _ in self.subscriptions])
        return done.wait(timeout_s)

    def barrier(self, timeout_s: float = 2.0) -> bool:
        """Subscribe again to every subscription (no change, no retained resend) and wait for SUBACK.

        The drain point for a persistent session, where unsubscribing would stop
        the broker from queueing for us while we are away: like UNSUBACK, the
        SUBACK comes after every message the broker had already sent us.
        """
        if not self.subscriptions or not self.connected.is_set():
            return False
        done = threading.Event()
        acked: set[int] = set()
        ours: list[int] = []

        def on_subscribe(_c, _u, mid, *_rest) -> None:  # noqa: ANN001 -- only our own SUBACK counts
            acked.add(mid)
            if ours and ours[0] in acked:
                done.set()

        self.client.on_subscribe = on_subscribe
        if self.v5:
            keep = SubscribeOptions.RETAIN_DO_NOT_SEND
            _, mid = self.client.subscribe([(t, SubscribeOptions(qos=q, retainHandling=keep)) for t, q in self.subscriptions])
        else:
            _, mid = self.client.subscribe(list(self.subscriptions))
        ours.append(mid)
        if mid in acked:
            done.set()
        return done.wait(timeout_s)

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge a message received with ``manual_ack`` on connection ``generation``.

        Skipped (False) if the connection changed since: the broker sends the
        message again on the new connection (persistent session) or has forgotten it.
        """
        if qos == 0 or generation != self.generation or not self.connected.is_set():
            return False
        self.client.ack(mid, qos)
        return True

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self, final: tuple[str, bytes] | None = None, timeout_s: float = 5.0) -> None:
        """Optionally publish ``final`` (retained, e.g. an offline status), then disconnect."""
        self._stopping = True
        if final is not None and self.connected.is_set():
            info = self.client.publish(final[0], final[1], qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        self.client.loop_stop()


def wait_for_all(infos: list[paho.MQTTMessageInfo], timeout_s: float) -> bool:
    """Wait until every QoS>0 publish in ``infos`` is acknowledged, or the timeout passes."""
    deadline = time.monotonic() + timeout_s
    for info in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            info.wait_for_publish(remaining)
        except (RuntimeError, ValueError):
            return False
        if not info.is_published():
            return False
    return True
