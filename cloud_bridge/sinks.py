"""InfluxDB sinks: ``write(lines)`` one batch of line protocol, or raise a typed SinkError.

Why two: ``InfluxV1Sink`` speaks InfluxDB 1.x ``POST /write`` with urllib3
(pooled keep-alive connection, timeouts, Basic auth, optional gzip);
``InfluxV2Sink`` uses influxdb-client's synchronous write API against
``/api/v2/write`` (InfluxDB 2.x, or VictoriaMetrics which accepts the same
request). Both receive the same strings from ``edgeloop.bridge.schema`` so the
stored data does not depend on the API. Neither retries: the bridge owns
retries and batching (a sink is a Telegraf-style output: connect, write, close).

``probe()`` sends the same request with an empty body: the server checks
the endpoint, the credentials and the database/bucket before it reads the
body, so the start-up check (``edgeloop.bridge.preflight``) learns all three
without writing a point.

HTTP outcomes are translated here, once, with ``raise ... from exc``:
2xx ok; 400 PartialWrite; 413 TooLarge; 429/503 Throttled;
401/403/404/405, influxd's 500 "retention policy not found" and any other
4xx Misconfigured (with the fix, worded for this config); other 5xx,
timeouts and connection errors Unavailable.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import json
import re
import time
from typing import Protocol
from urllib.parse import urlencode

import urllib3

from edgeloop.bridge.config import BridgeConfig, InfluxSettings
from edgeloop.bridge.errors import Misconfigured, PartialWrite, SinkError, Throttled, TooLarge, Unavailable

_DROPPED_RE = re.compile(r"dropped=(\d+)")


class Sink(Protocol):
    def write(self, lines: list[str]) -> None: ...

    def probe(self) -> None:
        """The write request with an empty body (the start-up check); raises what ``write`` would."""

    def close(self) -> None: ...


def _retry_after(value: str | None) -> float | None:
    """Retry-After is delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(body: bytes | str | None) -> str:
    """The ``error`` (1.x) or ``message`` (2.x) of a JSON error body, else the text."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:1000]
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or text)[:1000]
    return text.strip()[:1000]


def classify(status: int, body: bytes | str | None, retry_after: str | None = None,
             influx: InfluxSettings | None = None) -> SinkError | None:
    """Map an HTTP status (+ body) to a SinkError; None means success. ``influx`` words the fix."""
    if 200 <= status < 300:
        return None
    message = _server_message(body)
    if status == 400:
        match = _DROPPED_RE.search(message)
        return PartialWrite(message, dropped=int(match.group(1)) if match else None, status=status)
    if status == 413:
        return TooLarge(f"HTTP 413: {message}", status=status)
    if status in (429, 503):
        return Throttled(f"HTTP {status}: {message}", retry_after=_retry_after(retry_after), status=status)
    if 400 <= status < 500 or (status == 500 and "retention policy not found" in message):
        cause = _cause(status, message)
        return Misconfigured(f"HTTP {status}: {message}", cause, fix_for(cause, influx), status=status)
    if status >= 500:
        return Unavailable(f"HTTP {status}: {message}", status=status)
    return Misconfigured(f"unexpected HTTP {status}: {message}", f"http_{status}", fix_for("", influx), status=status)


def _cause(status: int, message: str) -> str:
    if status == 401:
        return "unauthorized"
    if status == 403:
        return "forbidden"
    if status == 404:
        # Go's default mux: the path itself does not exist (a 1.x server asked for /api/v2/write).
        return "no_endpoint" if message.strip() == "404 page not found" else "not_found"
    if status == 405:
        return "no_endpoint"
    if status == 500:
        return "retention_policy"
    return f"http_{status}"


_BARE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def influxql_ident(name: str) -> str:
    """``name`` as an InfluxQL identifier: bare when it may be, else double-quoted."""
    return name if _BARE_IDENT.match(name) else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def fix_for(cause: str, influx: InfluxSettings | None) -> str:
    """One sentence: what a person changes so that the server takes the writes."""
    if influx is None:
        return "check influx.url, influx.api and the credentials"
    v1 = influx.api == "v1"
    if cause == "unauthorized":
        if v1:
            return ("check influx.username / influx.password" if influx.username
                    else "the server requires authentication: set influx.username and influx.password")
        return ("check the API token (influx.token or influx.token_file, --influx-token-file)" if influx.token
                else "the server requires a token: set influx.token_file (--influx-token-file)")
    if cause == "forbidden":
        if v1:
            who = influx.username or "the user"
            return f"give {who} write access: GRANT WRITE ON {influxql_ident(influx.db)} TO {influxql_ident(who)}"
        return f"give the token write permission on bucket {influx.bucket!r} of org {influx.org!r}"
    if cause == "not_found":
        if v1:
            db = influxql_ident(influx.db)
            return (f"create the database (CREATE DATABASE {db}, e.g. influx -execute 'CREATE DATABASE {db}') "
                    f"or start the bridge with --influx-create-db (influx.create_database: true)")
        return (f"create bucket {influx.bucket!r} in org {influx.org!r} "
                f"(influx bucket create -n {influx.bucket} -o {influx.org}) or fix influx.bucket / influx.org")
    if cause == "no_endpoint":
        if v1:
            return "this server has no /write: check influx.url (the InfluxDB HTTP API, usually port 8086)"
        return ("this server has no /api/v2/write: for InfluxDB 1.x use --influx-api v1 "
                "(influx.api: v1, influx.db)")
    if cause == "retention_policy":
        return (f"create retention policy {influx.rp!r} on database {influx.db!r} "
                f"(CREATE RETENTION POLICY ...) or fix influx.rp")
    return "check influx.url and influx.api"


def basic_auth_header(influx: InfluxSettings) -> dict[str, str]:
    """``Authorization: Basic`` for influx.username/password (v1), or nothing."""
    if not influx.username:
        return {}
    secret = influx.password.get_secret_value() if influx.password else ""
    raw = f"{influx.username}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


class InfluxV1Sink:
    """``POST {url}/write?db=..&rp=..&precision=ns`` (InfluxDB 1.x, also VictoriaMetrics)."""

    def __init__(self, influx: InfluxSettings) -> None:
        self.influx = influx
        query = {"db": influx.db, "precision": "ns"}
        if influx.rp:
            query["rp"] = influx.rp
        self.url = f"{influx.url}/write?{urlencode(query)}"
        self._gzip = influx.gzip
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **basic_auth_header(influx)}
        if influx.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=2,
            retries=False,
            timeout=urllib3.Timeout(connect=min(influx.timeout_s, 5.0), read=influx.timeout_s),
        )

    def write(self, lines: list[str]) -> None:
        if lines:
            self._post("\n".join(lines).encode("utf-8"))

    def probe(self) -> None:
        """An empty write: influxd checks credentials, permission and database, and stores nothing."""
        self._post(b"")

    def _post(self, body: bytes) -> None:
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
        try:
            resp = self._pool.request("POST", self.url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"POST /write failed: {exc}") from exc
        error = classify(resp.status, resp.data, resp.headers.get("Retry-After"), self.influx)
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.clear()


class InfluxV2Sink:
    """influxdb-client ``write_api(SYNCHRONOUS).write(bucket, record=lines, write_precision=NS)``."""

    def __init__(self, influx: InfluxSettings) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.influx = influx
        token = influx.token.get_secret_value() if influx.token else None
        self._bucket = influx.bucket
        self._precision = WritePrecision.NS
        self._client = InfluxDBClient(
            url=influx.url,
            token=token,
            org=influx.org,
            timeout=int(influx.timeout_s * 1000),
            enable_gzip=influx.gzip,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        self._call(lambda: self._write_api.write(bucket=self._bucket, record=lines, write_precision=self._precision))

    def probe(self) -> None:
        """An empty ``/api/v2/write`` through the client's own write service (same auth header and URL)."""
        from influxdb_client.service.write_service import WriteService

        service = WriteService(self._client.api_client)
        self._call(lambda: service.post_write(org=self.influx.org, bucket=self._bucket, body="",
                                              precision=self._precision))

    def _call(self, request) -> None:
        from influxdb_client.rest import ApiException

        try:
            request()
        except ApiException as exc:
            headers = exc.headers or {}
            error = classify(exc.status, exc.body, headers.get("Retry-After"), self.influx) if exc.status else None
            raise (error or Unavailable(f"POST /api/v2/write failed: {exc.reason}")) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unavailable(f"POST /api/v2/write failed: {exc}") from exc

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


def make_sink(cfg: BridgeConfig | InfluxSettings) -> InfluxV1Sink | InfluxV2Sink:
    """The sink for ``influx.api``."""
    influx = cfg.influx if isinstance(cfg, BridgeConfig) else cfg
    return InfluxV1Sink(influx) if influx.api == "v1" else InfluxV2Sink(influx)
