"""The one interface between a payload format and the engine.

Why an interface of its own: the engine (windows, sequence checks, stream caps,
inference) must not know whether a reading came as edgeloop JSON, a Tasmota
object, a SenML pack, a line of line protocol or a Sparkplug B protobuf. A codec
turns one MQTT message into zero or more ``Reading`` rows for named streams;
everything after that is shared.

A codec is built once from its settings (a pydantic model with a ``codec``
literal that discriminates the union in ``edgeloop.edge.config``) and then
called for every message that matched its input's topic template. It never
raises anything but ``PayloadError`` for a bad message (reason: a short stable
code such as ``invalid_json``, ``missing_field``, ``unknown_alias``), which the
engine counts, logs (rate-limited) and dead-letters; arbitrary bytes must never
crash it (each codec has a property test saying so).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeloop.errors import PayloadError


@dataclass(frozen=True, slots=True)
class Reading:
    """What a codec makes of one message for one stream.

    ``samples`` is float32 ``(n_samples, n_channels)`` with the channels in the
    order the input's mapping declares them. ``ts`` is the device's unix time
    of the first sample, or None when the device sends none (the engine then
    uses the arrival time). ``seq`` is the stream's per-message sequence, or
    None when the format has none: the engine then counts arrivals itself and
    can detect neither gaps nor redeliveries (documented per codec).
    ``device`` becomes the stream identity and the ``device`` tag; the engine
    checks it is a valid topic level. ``tags`` are further names bound by the
    topic template (``{site}``, ``{line}``) or the format (Sparkplug group and
    edge node); the engine bounds them.
    """

    device: str
    samples: np.ndarray
    ts: float | None = None
    seq: int | None = None
    rate_hz: float | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Decoded:
    """Everything one message means to the edge.

    ``ended`` lists devices whose streams end now (Sparkplug DDEATH/NDEATH):
    their window state is dropped. ``replies`` are messages the edge publishes
    in answer (QoS 0), e.g. a Sparkplug ``NCMD`` with ``Node Control/Rebirth``
    when a DATA message uses an alias no BIRTH defined.
    """

    readings: list[Reading] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)


class RejectWithReplies(PayloadError):
    """A message refused (counted, dead-lettered like any PayloadError) and yet answered.

    Why: a Sparkplug DATA message whose alias no BIRTH defined is skipped, and the
    edge asks the node for a rebirth (``NCMD``); the engine publishes ``replies``.
    """

    def __init__(self, reason: str, detail: str, replies: list[tuple[str, bytes]]) -> None:
        super().__init__(reason, detail)
        self.replies = replies


class Codec(Protocol):
    """Decodes one message. ``fields`` are the topic template's named levels
    (always ``device`` unless the codec reads identity from the topic itself,
    as Sparkplug does); ``arrival`` is ``time.time()`` when it was received."""

    name: ClassVar[str]

    def decode(self, topic: str, fields: Mapping[str, str], payload: bytes, arrival: float) -> Decoded: ...


class InputBase(BaseModel):
    """Keys every pipeline input has, whatever its codec.

    A pipeline's ``input:`` section is one codec's settings model (a subclass of
    this with ``codec: Literal["<name>"]`` and its own mapping keys), picked by
    ``codec`` from a discriminated union in ``edgeloop.edge.config``; a
    ``preset:`` key expands to ``topic`` + ``codec`` + mapping before validation.
    Subclasses implement ``n_channels`` and ``build()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The topic template used when ``topic`` is not set (None: the engine's default for the codec).
    default_topic: ClassVar[str | None] = None
    #: False for a codec that reads device identity from the message (Sparkplug): then the
    #: template need not name ``{device}``.
    needs_device: ClassVar[bool] = True

    topic: str | None = Field(
        default=None,
        description="topic template: MQTT levels, '+' and a final '#', and named levels such as {device} "
        "(required: the device identity and tag), {sensor}, {site}, or any other name (a tag of the results)",
    )

    @property
    def n_channels(self) -> int | None:
        """Channels one message fills (checked against the pipeline's ``in_channels``); None: any."""
        return None

    def build(self) -> Codec:
        raise NotImplementedError
