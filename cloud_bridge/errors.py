"""Typed errors of the InfluxDB sinks, so the bridge knows what to do with a batch.

    EdgeloopError                        (edgeloop.errors)
    ├── SinkError                        the database did not take (all of) a batch
    │   ├── Throttled    + TransientError  429, 503: keep the batch, retry after
    │   │                                  ``retry_after`` seconds (Retry-After) or backoff
    │   ├── Unavailable  + TransientError  connection refused/reset, timeout, other 5xx:
    │   │                                  keep the batch, retry with capped backoff + jitter
    │   ├── Misconfigured                  401/403/404/405, influxd's 500 "retention policy not
    │   │                                  found", any other 4xx: the server refuses every write
    │   │                                  until someone fixes the config, the credentials or the
    │   │                                  database; keep the batch unacknowledged and retry with
    │   │                                  capped backoff (the broker holds the backlog). ``fix``
    │   │                                  says what to do.
    │   ├── TooLarge                       413: the request is over the server's size limit; send
    │   │                                  the batch in halves
    │   └── PartialWrite                   400: the server refused some lines (or all of them)
    └── ConfigError                      (edgeloop.errors)
        └── InfluxSetupError             the start-up check found the server unusable as
                                         configured (wrong API, no database, credentials):
                                         the bridge exits 2 with one line naming the fix

Why no error drops a batch: a config, credential or database problem is
fixed by a person, and until then the data is safest where it is -- on the
broker, unacknowledged. Only points the server itself refuses (400) leave the
bridge without being written, and they are dead-lettered and counted.

Why PartialWrite is not retried as is: influxd 1.x answers 400 ``{"error":
"partial write: field type conflict: ... dropped=N"}`` (or ``"partial write:
unable to parse '<first bad line>': ..."``) after writing *some* of the good
points; when no line at all could be parsed it answers 400 ``"unable to parse
..."`` without the prefix. Its ``dropped=N`` cannot be trusted to say how
many were written, let alone which (influxd 1.6.7 with ``max-values-per-tag``
reports ``dropped=10`` and stores 10 of the 20 good points of the same
request). ``edgeloop.bridge.batching`` therefore resends the batch in halves
to find out, point by point, what the server takes.

Payloads that cannot be encoded as line protocol are not sink errors: the
encoder raises ``edgeloop.contract.ContractError("unencodable", ...)`` and the
message is dead-lettered like any other contract violation.

Library exceptions (urllib3, ``influxdb_client.rest.ApiException``) are
translated into these in ``edgeloop.bridge.sinks`` with ``raise ... from exc``.
"""

from __future__ import annotations

from edgeloop.errors import ConfigError, EdgeloopError, TransientError


class SinkError(EdgeloopError):
    """A write to the database failed; ``status`` is the HTTP status if there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Throttled(SinkError, TransientError):
    """The server asked us to slow down; ``retry_after`` is in seconds, or None."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unavailable(SinkError, TransientError):
    """The server could not be reached or failed; the batch may be retried as is."""


class Misconfigured(SinkError):
    """The server refuses writes as configured; retrying helps only once a person fixed it.

    ``cause`` is a short stable code (``unauthorized``, ``forbidden``,
    ``not_found``, ``no_endpoint``, ``retention_policy``, ``http_<status>``) used
    as a metric label; ``fix`` is one sentence saying what to change.
    """

    def __init__(self, message: str, cause: str, fix: str = "", status: int | None = None) -> None:
        super().__init__(message, status)
        self.cause = cause
        self.fix = fix


class TooLarge(SinkError):
    """413: the request body is over the server's limit; a smaller request may pass."""


class PartialWrite(SinkError):
    """The server refused some lines (``reason`` is its message) and may have stored others.

    ``dropped`` is the server's count of refused points when it reports one.
    ``none_written`` is True when the server says it stored nothing (influxd's
    400 ``unable to parse`` without the ``partial write:`` prefix: no line parsed).
    """

    def __init__(self, reason: str, dropped: int | None = None, status: int | None = 400) -> None:
        super().__init__(f"partial write: {reason}", status)
        self.reason = reason
        self.dropped = dropped
        self.none_written = reason.startswith("unable to parse")


class InfluxSetupError(ConfigError):
    """The start-up check found the database unusable as configured; one line with the fix."""

    def __init__(self, url: str, problem: str) -> None:
        super().__init__(f"InfluxDB at {url}", [problem])

    def __str__(self) -> str:
        return f"{self.source}: {self.problems[0]}"
