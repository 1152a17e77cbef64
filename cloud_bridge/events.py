"""Loop events (deploy, rollback, refused, drift, retrain, ...) as InfluxDB points and log lines.

Why one small shared writer: the deployer and the drift monitor both record
what the loop did, in one measurement that Grafana shows as annotations::

    events,model=<model>,kind=<kind>[,<static tags>] message="...",version="..."[,<extra fields>] <ts ns>

``kind`` is a short code: ``deploy``, ``rollback``, ``refused`` (deployer);
``drift``, ``retrain``, ... (drift monitor). Extra fields are numbers
(statistic values as evidence), booleans or strings.

A failed write is logged and swallowed: an event is a record of what
happened, never a reason to stop the thing that happened.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from edgeloop.bridge.schema import escape_measurement, escape_string, escape_tag
from edgeloop.errors import EdgeloopError
from edgeloop.contract import ContractError

log = logging.getLogger("edgeloop.bridge.events")

EVENTS_MEASUREMENT = "events"

#: ``emit(model, kind, message, version=None, **fields)`` -- what producers of events call.
EventSink = Callable[..., None]


def _field(key: str, value: Any) -> str | None:
    name = escape_tag(key, "field key")
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{name}={value}i"
    if isinstance(value, float):
        return f"{name}={value!r}" if math.isfinite(value) else None
    if value is None:
        return None
    return f'{name}="{escape_string(str(value).replace(chr(10), " ").replace(chr(13), " "), key)}"'


def event_line(
    model: str,
    kind: str,
    message: str,
    version: str | None = None,
    *,
    ts: float | None = None,
    static_tags: dict[str, str] | None = None,
    measurement: str = EVENTS_MEASUREMENT,
    **fields: Any,
) -> str:
    """One line of line protocol for an event; ContractError if a tag cannot be encoded."""
    tags = {"model": model, "kind": kind, **(static_tags or {})}
    tagset = "".join(f",{escape_tag(k, 'tag key')}={escape_tag(v, f'tag {k!r}')}" for k, v in sorted(tags.items()))
    parts = [_field("message", message[:4000]), _field("version", version)]
    parts += [_field(k, v) for k, v in sorted(fields.items())]
    body = ",".join(p for p in parts if p is not None)
    stamp = round((ts if ts is not None else time.time()) * 1e9)
    return f"{escape_measurement(measurement)}{tagset} {body} {stamp}"


class EventWriter:
    """``writer(model, kind, message, version=None, **fields)``: log it, and write it if a sink is set.

    ``sink`` is anything with ``write(lines)`` (``edgeloop.bridge.sinks.make_sink(cfg)``).
    """

    def __init__(self, sink: Any | None = None, static_tags: dict[str, str] | None = None) -> None:
        self.sink = sink
        self.static_tags = static_tags or {}
        self.written = 0
        self.failed = 0

    def __call__(self, model: str, kind: str, message: str, version: str | None = None, **fields: Any) -> None:
        log.info("event %s %s %s: %s %s", kind, model, version or "-", message, fields or "")
        if self.sink is None:
            return
        try:
            self.sink.write([event_line(model, kind, message, version, static_tags=self.static_tags, **fields)])
            self.written += 1
        except (EdgeloopError, ContractError, OSError) as exc:
            self.failed += 1
            log.warning("could not write event %s/%s: %s", model, kind, exc)
