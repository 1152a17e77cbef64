"""The start-up check of the database: refuse to start on what no retry can fix.

Why: a bridge started against the wrong API, a missing database or refused
credentials would hold every batch unacknowledged (``edgeloop.bridge.batching``
never drops data for that) while its operator believes it runs. Checking
first turns that into exit code 2 and one line naming the fix.

    1. ``GET /ping``: is the server there, and which version is it
       (``X-Influxdb-Version``; VictoriaMetrics sends none). A v2 client
       facing InfluxDB 1.x before 1.8 (no ``/api/v2/write``) is refused with
       "use --influx-api v1".
    2. ``sink.probe()``: the configured write request with an empty body. The
       server checks the endpoint, the credentials, the write permission and
       the database/bucket before it reads the body, and stores nothing.
    3. v1 only, database missing and ``influx.create_database``:
       ``CREATE DATABASE`` (needs an admin user), then probe again.

A server that cannot be reached (connection refused, timeout, 5xx, 429/503)
is not a reason to refuse: the bridge starts, says so, and its writer retries
with backoff while the broker keeps the results (unacknowledged); whatever
the server answers once it is back, nothing is acknowledged before it is
written.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlencode

import urllib3

from edgeloop.bridge.config import InfluxSettings
from edgeloop.bridge.errors import InfluxSetupError, Misconfigured, PartialWrite, SinkError, Throttled, Unavailable
from edgeloop.bridge.sinks import Sink, basic_auth_header, influxql_ident

log = logging.getLogger("cloud_bridge")

_V1_VERSION = re.compile(r"^v?1\.(\d+)")


def check_influx(influx: InfluxSettings, sink: Sink) -> str:
    """Raise InfluxSetupError if the server cannot take our writes as configured; else say what was found."""
    pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=min(influx.timeout_s, 5.0),
                                                                      read=influx.timeout_s))
    try:
        try:
            resp = pool.request("GET", f"{influx.url}/ping")
        except urllib3.exceptions.HTTPError as exc:
            return _unreachable(influx, f"GET /ping failed: {exc}")
        version = resp.headers.get("X-Influxdb-Version")
        server = f"InfluxDB {version}" if version else "a server without a version header (e.g. VictoriaMetrics)"
        old_v1 = _V1_VERSION.match(version or "")
        if influx.api == "v2" and old_v1 and int(old_v1.group(1)) < 8:
            raise InfluxSetupError(influx.url, f"{server} has no /api/v2/write: use --influx-api v1 "
                                               f"(influx.api: v1, influx.db: {influx.db or 'edgeloop'})")
        try:
            sink.probe()
        except Misconfigured as exc:
            if not (exc.cause == "not_found" and influx.api == "v1" and influx.create_database):
                raise InfluxSetupError(influx.url, f"{server} refused the write ({exc}): {exc.fix}") from None
            _create_database(pool, influx, server)
            try:
                sink.probe()
            except Misconfigured as again:
                raise InfluxSetupError(influx.url, f"{server} refused the write after CREATE DATABASE "
                                                   f"({again}): {again.fix}") from None
        except (Unavailable, Throttled) as exc:
            return _unreachable(influx, str(exc))
        except PartialWrite:
            pass  # an empty body parsed as bad: the server got past credentials and database to the body
        except SinkError as exc:  # TooLarge for an empty body: a proxy in front that we cannot judge
            log.warning("start-up check of %s inconclusive (%s); starting", influx.url, exc)
        what = f"{influx.api} /write db={influx.db}" if influx.api == "v1" else \
            f"v2 bucket={influx.bucket} org={influx.org}"
        return f"{server} at {influx.url} takes writes ({what})"
    finally:
        pool.clear()


def _unreachable(influx: InfluxSettings, why: str) -> str:
    log.warning("InfluxDB at %s is not reachable at start (%s): starting anyway; results stay on the broker, "
                "unacknowledged, and are written once it answers (the API, database and credentials are "
                "checked by the first write: a problem is then logged with its fix and the data held)",
                influx.url, why)
    return f"InfluxDB at {influx.url} not reachable yet"


def _create_database(pool: urllib3.PoolManager, influx: InfluxSettings, server: str) -> None:
    statement = f"CREATE DATABASE {influxql_ident(influx.db)}"
    headers = {"Content-Type": "application/x-www-form-urlencoded", **basic_auth_header(influx)}
    try:
        resp = pool.request("POST", f"{influx.url}/query", body=urlencode({"q": statement}), headers=headers)
    except urllib3.exceptions.HTTPError as exc:
        raise InfluxSetupError(influx.url, f"{statement} failed ({exc}); create the database by hand") from None
    text = resp.data.decode("utf-8", "replace").strip()
    if resp.status != 200 or '"error"' in text:
        hint = " (the user must be an admin)" if resp.status in (401, 403) or "admin" in text else ""
        raise InfluxSetupError(influx.url, f"{server} refused {statement}{hint}: HTTP {resp.status}: {text[:300]}")
    log.info("created database %s on %s (influx.create_database)", influx.db, influx.url)
