"""MQTT connection settings: broker URL, credentials, TLS, MQTT version, reconnect policy, session.

Why separate from the link (``edgeloop.mqtt``): these are plain pydantic models, so the config
modules load and check them without the MQTT client, and one module stays one concern.
``edgeloop.mqtt`` re-exports them.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from edgeloop.secrets import read_secret_file

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
    """How to reach the broker. ``url`` is ``mqtt://[user:pass@]host[:port]`` or ``mqtts://``.

    Reconnects back off with full jitter up to ``reconnect_max_s`` and reset only
    after a stable connection (``reconnect_stable_s``): see ``edgeloop.backoff``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = DEFAULT_BROKER
    client_id: str | None = Field(default=None, max_length=128)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(default=None, description="file holding the password; read at startup")
    protocol: Literal["5", "3.1.1"] = "5"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls: TlsSettings | None = None
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = Field(
        default=1.0,
        description="base of the reconnect backoff: after the n-th failure in a row (n = 0, 1, ...) the link "
        "waits uniform(0, min(reconnect_max_s, reconnect_min_s * 2^n)) seconds (full jitter); docs/reliability.md",
    )
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="cap of the reconnect backoff window; at least reconnect_min_s"
    )
    reconnect_stable_s: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=10.0,
        description="a connection counts as stable once the broker accepted it (CONNACK success) and it stayed up "
        "this long; only a stable connection resets the backoff (refused or dropped-at-once connections keep "
        "growing it)",
    )
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
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
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
