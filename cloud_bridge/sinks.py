"""InfluxDB sinks: ``write(lines)`` one batch of line protocol, or raise a typed SinkError.

Why two: ``InfluxV1Sink`` speaks InfluxDB 1.x ``POST /write`` with urllib3
(pooled keep-alive connection, timeouts, Basic auth, optional gzip);
``InfluxV2Sink`` uses influxdb-client's synchronous write API against
``/api/v2/write`` (InfluxDB 2.x, or VictoriaMetrics which accepts the same
request). Both receive the same strings from ``edgeloop.bridge.schema`` so the
stored data does not depend on the API. Neither retries: the bridge owns
retries and batching (a sink is a Telegraf-style output: connect, write, close).

HTTP outcomes are translated here, once, with ``raise ... from exc``:
2xx ok; 400 PartialWrite; 429/503 Throttled; 401/403/404/413 and influxd's
500 "retention policy not found" Fatal; other 5xx, timeouts and connection
errors Unavailable.
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
from edgeloop.bridge.errors import Fatal, PartialWrite, SinkError, Throttled, Unavailable

_DROPPED_RE = re.compile(r"dropped=(\d+)")


class Sink(Protocol):
    def write(self, lines: list[str]) -> None: ...

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


def classify(status: int, body: bytes | str | None, retry_after: str | None = None) -> SinkError | None:
    """Map an HTTP status (+ body) to a SinkError; None means success."""
    if 200 <= status < 300:
        return None
    message = _server_message(body)
    if status == 400:
        match = _DROPPED_RE.search(message)
        return PartialWrite(message, dropped=int(match.group(1)) if match else None, status=status)
    if status in (429, 503):
        return Throttled(f"HTTP {status}: {message}", retry_after=_retry_after(retry_after), status=status)
    if status in (401, 403, 404, 405, 413) or (status == 500 and "retention policy not found" in message):
        return Fatal(f"HTTP {status}: {message}", status=status)
    if status >= 500:
        return Unavailable(f"HTTP {status}: {message}", status=status)
    return Fatal(f"unexpected HTTP {status}: {message}", status=status)


class InfluxV1Sink:
    """``POST {url}/write?db=..&rp=..&precision=ns`` (InfluxDB 1.x, also VictoriaMetrics)."""

    def __init__(self, influx: InfluxSettings) -> None:
        query = {"db": influx.db, "precision": "ns"}
        if influx.rp:
            query["rp"] = influx.rp
        self.url = f"{influx.url}/write?{urlencode(query)}"
        self._gzip = influx.gzip
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if influx.username:
            secret = influx.password.get_secret_value() if influx.password else ""
            raw = f"{influx.username}:{secret}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        if influx.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=2,
            retries=False,
            timeout=urllib3.Timeout(connect=min(influx.timeout_s, 5.0), read=influx.timeout_s),
        )

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        body = "\n".join(lines).encode("utf-8")
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
        try:
            resp = self._pool.request("POST", self.url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise Unavailable(f"POST /write failed: {exc}") from exc
        error = classify(resp.status, resp.data, resp.headers.get("Retry-After"))
        if error is not None:
            raise error

    def close(self) -> None:
        self._pool.clear()


class InfluxV2Sink:
    """influxdb-client ``write_api(SYNCHRONOUS).write(bucket, record=lines, write_precision=NS)``."""

    def __init__(self, influx: InfluxSettings) -> None:
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS

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
        from influxdb_client.rest import ApiException

        if not lines:
            return
        try:
            self._write_api.write(bucket=self._bucket, record=lines, write_precision=self._precision)
        except ApiException as exc:
            headers = exc.headers or {}
            error = classify(exc.status, exc.body, headers.get("Retry-After")) if exc.status else None
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
