"""The InfluxDB schema of edgeloop, and a fast line-protocol encoder for it.

Measurement ``inference`` (name configurable: ``influx.measurements.results``),
one point per InferenceResult:

| kind      | key            | type                  | from / notes                                   |
|-----------|----------------|-----------------------|------------------------------------------------|
| tag       | device         | string                | result.device (= topic level)                  |
| tag       | sensor         | string                | result.sensor                                  |
| tag       | model          | string                | result.model (= topic level)                   |
| tag       | model_version  | string                | result.model_version                           |
| tag       | node           | string, if present    | edge runtime that produced the result          |
| tag       | site           | string, if present    | result.site                                    |
| tag       | (static)       | string                | ``influx.tags`` from the config, e.g. env=prod |
| tag       | (result tags)  | string, if present    | result.tags, e.g. area=north (a static tag of the same name wins) |
| field     | score          | float                 | result.score                                   |
| field     | anomaly        | boolean               | result.anomaly                                 |
| field     | label          | string                | result.label                                   |
| field     | latency_ms     | float                 | result.latency_ms                              |
| field     | seq            | integer (``i``)       | result.seq                                     |
| field     | model_sha256   | string                | result.model_sha256                            |
| field     | out_0..out_N-1 | float (always ``1.0``, never ``1``) | result.outputs[i]                |
| timestamp |                | ns, whole µs          | ``round(result.ts * 1e6) * 1000``: device time |

Measurement ``node_status`` (``influx.measurements.status``), one point per NodeStatus:

| kind      | key             | type               | from / notes                                    |
|-----------|-----------------|--------------------|-------------------------------------------------|
| tag       | node            | string             | status.node (= topic level)                     |
| tag       | site            | string, if present | status.site                                     |
| tag       | (static)        | string             | ``influx.tags``                                 |
| field     | online          | boolean            | status.state == "online"                        |
| field     | models          | string             | ``"name=version,..."`` sorted by name ("" if none) |
| field     | runtime_version | string, if present | status.runtime_version                          |
| field     | readings_in, results_out, rejected, dropped_queue_full, queue_depth, reconnects, outbox_depth, outbox_dropped_overflow | integer (``i``), each if present | status.counters[...] (a fixed list: a peer cannot add fields) |
| timestamp |                 | ns, whole µs       | ``round(status.ts * 1e6) * 1000``               |

Why this shape: a point's identity in InfluxDB is measurement + tag set +
timestamp, and the timestamp is the device's time of the window, so a
redelivered result (QoS 1, edge outbox replay) overwrites itself instead of
adding a point. Tags are only bounded things (devices, sensors, models,
versions, nodes, sites); ``seq``, scores and labels are fields, so the series
count does not grow with traffic. The timestamp is rounded to the microsecond
because a float of unix seconds resolves only ~0.2 µs today: ``round(ts * 1e9)``
would turn ``ts=1795740561.25`` into ``...561249999872`` (and VictoriaMetrics,
which keeps milliseconds, into ``.249``), while ``round(ts * 1e6) * 1000`` keeps
``...561250000000``; windows that differ by 1 µs (see docs/INTERFACES.md) stay apart. Outputs are always floats so the first
integral value never fixes the field type to integer (a later ``0.5`` would
then be a type conflict).

Escaping (checked against influxd 1.6.7 and VictoriaMetrics 1.79): measurement
names escape ``,`` and space; tag keys and values escape ``,``, ``=`` and space;
string fields escape ``"`` and ``\\``. Line protocol has no escape for a
newline and influxd 1.6 has none for a trailing backslash in a tag value, so
values that cannot be represented faithfully are refused with
``ContractError("unencodable")`` instead of being altered: control characters
or a backslash in a tag value, CR/LF in a string field.

The encoder caches the escaped ``measurement,tags `` prefix per tag set (a
bounded dict), so the hot path is one f-string per point.
"""

from __future__ import annotations

import re
import threading

from edgeloop.contract import MAX_OUTPUTS, ContractError, InferenceResult, NodeStatus

from edgeloop.bridge.config import BridgeConfig, InfluxSettings

_CACHE_MAX = 4096

#: NodeStatus counters stored as integer fields of ``node_status`` (dashboards plot them). A fixed
#: list, so the number of fields stays bounded whatever a node puts into ``counters``.
STATUS_COUNTERS = (
    "readings_in",
    "results_out",
    "rejected",
    "dropped_queue_full",
    "queue_depth",
    "reconnects",
    "outbox_depth",
    "outbox_dropped_overflow",
)

_MEASUREMENT_ESCAPE = str.maketrans({",": r"\,", " ": r"\ "})
_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_TAG_UNSAFE = re.compile(r"[\\\x00-\x1f\x7f]")
_STRING_UNSAFE = re.compile(r"[\r\n]")

_OUT_KEYS = tuple(f",out_{i}=" for i in range(MAX_OUTPUTS))


def escape_measurement(name: str) -> str:
    return name.translate(_MEASUREMENT_ESCAPE)


def escape_tag(value: str, what: str = "tag value") -> str:
    """Escape a tag key or value; refuse what influxd would store altered or reject."""
    if not value:
        raise ContractError("unencodable", f"{what} is empty")
    if _TAG_UNSAFE.search(value):
        raise ContractError(
            "unencodable", f"{what} {value[:80]!r} contains a backslash or control character"
        )
    return value.translate(_TAG_ESCAPE)


def escape_string(value: str, what: str = "string field") -> str:
    """The inside of a quoted string field value."""
    if _STRING_UNSAFE.search(value):
        raise ContractError("unencodable", f"{what} {value[:80]!r} contains a line break")
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return value


def _tagset(pairs: list[tuple[str, str | None]], what: str) -> str:
    """``,k=v,...`` sorted by key (InfluxDB's preferred order), skipping None values."""
    parts = [
        f",{escape_tag(key, 'tag key')}={escape_tag(value, f'{what} tag {key!r}')}"
        for key, value in sorted(pairs)
        if value is not None
    ]
    return "".join(parts)


class LineEncoder:
    """Encodes results and statuses for one InfluxSettings; safe to share between threads."""

    def __init__(self, influx: InfluxSettings) -> None:
        self._results = escape_measurement(influx.measurements.results)
        self._status = escape_measurement(influx.measurements.status)
        self._static = list(influx.tags.items())
        self._result_prefixes: dict[tuple, str] = {}
        self._status_prefixes: dict[tuple, str] = {}
        self._labels: dict[str, str] = {}

    def result(self, r: InferenceResult) -> str:
        """One line (no trailing newline); raises ContractError("unencodable")."""
        key = (r.device, r.sensor, r.model, r.model_version, r.node, r.site,
               tuple(sorted(r.tags.items())) if r.tags else None)
        prefix = self._result_prefixes.get(key)
        if prefix is None:
            prefix = self._result_prefix(key)
        label = self._labels.get(r.label)
        if label is None:
            label = escape_string(r.label, "label")
            if len(self._labels) >= _CACHE_MAX:
                self._labels.clear()
            self._labels[r.label] = label
        outputs = r.outputs
        outs = "".join(map(str.__add__, _OUT_KEYS, map(repr, outputs))) if outputs else ""
        return (
            f"{prefix}score={r.score!r},anomaly={'true' if r.anomaly else 'false'},"
            f'label="{label}",latency_ms={r.latency_ms!r},seq={r.seq}i,'
            f'model_sha256="{r.model_sha256}"{outs} {round(r.ts * 1e6) * 1000}'
        )

    def _result_prefix(self, key: tuple) -> str:
        device, sensor, model, model_version, node, site, extra = key
        static = dict(self._static)
        tags = _tagset(
            [
                ("device", device),
                ("sensor", sensor),
                ("model", model),
                ("model_version", model_version),
                ("node", node),
                ("site", site),
                *self._static,
                *(pair for pair in extra or () if pair[0] not in static),
            ],
            "result",
        )
        prefix = f"{self._results}{tags} "
        if len(self._result_prefixes) >= _CACHE_MAX:
            self._result_prefixes.clear()
        self._result_prefixes[key] = prefix
        return prefix

    def status(self, s: NodeStatus) -> str:
        key = (s.node, s.site)
        prefix = self._status_prefixes.get(key)
        if prefix is None:
            prefix = f"{self._status}{_tagset([('node', s.node), ('site', s.site), *self._static], 'status')} "
            if len(self._status_prefixes) >= _CACHE_MAX:
                self._status_prefixes.clear()
            self._status_prefixes[key] = prefix
        models = ",".join(f"{name}={ref.version}" for name, ref in sorted(s.models.items()))
        fields = f'online={"true" if s.state == "online" else "false"},models="{escape_string(models, "models")}"'
        if s.runtime_version is not None:
            fields += f',runtime_version="{escape_string(s.runtime_version, "runtime_version")}"'
        if s.counters:
            fields += "".join(f",{key}={s.counters[key]}i" for key in STATUS_COUNTERS if key in s.counters)
        return f"{prefix}{fields} {round(s.ts * 1e6) * 1000}"


_encoders: dict[int, tuple[InfluxSettings, LineEncoder]] = {}
_encoders_lock = threading.Lock()


def encoder_for(cfg: BridgeConfig | InfluxSettings) -> LineEncoder:
    """The (cached) encoder of a config; the config object is kept alive with it."""
    influx = cfg.influx if isinstance(cfg, BridgeConfig) else cfg
    entry = _encoders.get(id(influx))
    if entry is None or entry[0] is not influx:
        with _encoders_lock:
            if len(_encoders) >= 64:
                _encoders.clear()
            entry = _encoders[id(influx)] = (influx, LineEncoder(influx))
    return entry[1]


def result_line(result: InferenceResult, cfg: BridgeConfig | InfluxSettings) -> str:
    """Line protocol for one result; raises ContractError("unencodable") if it cannot be stored."""
    return encoder_for(cfg).result(result)


def status_line(status: NodeStatus, cfg: BridgeConfig | InfluxSettings) -> str:
    """Line protocol for one node status."""
    return encoder_for(cfg).status(status)
