"""Typed errors of the InfluxDB sinks, so the bridge knows what to do with a batch.

    EdgeloopError                        (edgeloop.errors)
    └── SinkError                        the database did not take (all of) a batch
        ├── Throttled    + TransientError  429, 503: keep the batch, retry after
        │                                  ``retry_after`` seconds (Retry-After) or backoff
        ├── Unavailable  + TransientError  connection refused/reset, timeout, other 5xx:
        │                                  keep the batch, retry with capped backoff + jitter
        ├── PartialWrite                   400: the server refused some lines and wrote the
        │                                  rest; do not retry, dead-letter a summary
        └── Fatal                          401/403/404/413, missing retention policy:
                                           configuration is wrong; log loudly, drop the batch

Why PartialWrite is not retried: influxd 1.x answers 400 ``{"error": "partial
write: field type conflict: ... dropped=N"}`` (or ``"partial write: unable to
parse '<first bad line>': ..."``) *after* writing every good point of the
batch; when no line at all could be parsed it answers 400 ``"unable to parse
..."`` without the prefix. Either way a retry would only be refused again.

Payloads that cannot be encoded as line protocol are not sink errors: the
encoder raises ``edgeloop.contract.ContractError("unencodable", ...)`` and the
message is dead-lettered like any other contract violation.

Library exceptions (urllib3, ``influxdb_client.rest.ApiException``) are
translated into these in ``edgeloop.bridge.sinks`` with ``raise ... from exc``.
"""

from __future__ import annotations

from edgeloop.errors import EdgeloopError, TransientError


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


class PartialWrite(SinkError):
    """The server refused some lines (``reason`` is its message) and stored the others.

    ``dropped`` is the server's count of refused points when it reports one
    (influxd's ``dropped=N`` counts only type conflicts, not parse errors).
    """

    def __init__(self, reason: str, dropped: int | None = None, status: int | None = 400) -> None:
        super().__init__(f"partial write: {reason}", status)
        self.reason = reason
        self.dropped = dropped


class Fatal(SinkError):
    """Retrying cannot help (credentials, database, bucket or endpoint are wrong)."""
