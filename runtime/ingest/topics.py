"""Topic templates: which MQTT topics a pipeline takes, and the names their levels bind.

A template is an MQTT topic filter whose levels may be named: ``zigbee2mqtt/{device}``,
``tele/{device}/SENSOR``, ``plant/{area}/{line}/{device}/{sensor}``. A named level
subscribes as ``+`` and binds the level's value on match; ``+`` and a final ``#``
work as in MQTT. What the names mean:

- ``{device}`` is the stream's identity and the results' ``device`` tag (required,
  unless the codec reads identity from the message itself);
- ``{sensor}`` names the stream within the device (default: the pipeline's ``sensor``),
  so one pipeline can serve several sensors of one kind on a device;
- ``{site}`` sets the results' ``site`` (default: the edge's ``site``);
- any other name (``{area}``, ``{line}``) becomes an extra tag of the results (at
  most :data:`MAX_TAGS`); the other fields of a result (``model``, ``node``, ``ts``...)
  are reserved and refused as names.

Why strict at config time: a template that can never match, or two pipelines whose
templates can both claim one topic, would silently lose or double-count readings; both
are configuration errors naming the field. Values bound from a topic are untrusted:
the engine checks them (``edgeloop.contract.check_level``) for every message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeloop.contract import MAX_RESULT_TAGS, MAX_TOPIC_BYTES, RESERVED_TAG_NAMES

#: Extra tags a result carries at most (template names plus codec tags).
MAX_TAGS = MAX_RESULT_TAGS

#: Names with their own meaning (see the module docstring).
IDENTITY = "device"
BOUND_FIELDS = frozenset({"device", "sensor", "site"})
#: InferenceResult fields a template may not bind: they are the edge's, not the device's.
RESERVED_NAMES = RESERVED_TAG_NAMES - BOUND_FIELDS
#: First levels of edgeloop's own topics: an edge subscribing to them would eat its own output.
RESERVED_ROOTS = frozenset({"results", "samples", "status", "deadletter", "models", "frames", "deploy"})

_NAME_RE = re.compile(r"^\{([a-z][a-z0-9_]{0,31})\}$")
_LITERAL_BAD = re.compile(r"[+#{}\x00]")


class TemplateError(ValueError):
    """A template that cannot be used; the message says why (the config layer adds the field)."""


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    """A parsed template: match topics and bind their named levels."""

    text: str
    levels: tuple[str, ...]
    #: (index, literal) pairs a topic must equal.
    literals: tuple[tuple[int, str], ...]
    #: (index, name) pairs bound on match.
    names: tuple[tuple[int, str], ...]
    multi: bool  # ends in '#'

    @classmethod
    def parse(cls, text: str) -> "TopicTemplate":
        if not text:
            raise TemplateError("empty topic template")
        if len(text.encode()) > MAX_TOPIC_BYTES:
            raise TemplateError(f"longer than {MAX_TOPIC_BYTES} bytes")
        levels = tuple(text.split("/"))
        literals, names, seen = [], [], set()
        for i, level in enumerate(levels):
            if level == "":
                raise TemplateError(f"level {i + 1} is empty ('//' or a leading/trailing '/')")
            if level == "#":
                if i != len(levels) - 1:
                    raise TemplateError("'#' must be the last level")
                continue
            if level == "+":
                continue
            named = _NAME_RE.match(level)
            if named:
                name = named.group(1)
                if name in seen:
                    raise TemplateError(f"{{{name}}} appears twice")
                if name in RESERVED_NAMES:
                    raise TemplateError(f"{{{name}}} is reserved (a field every result has); choose another name")
                seen.add(name)
                names.append((i, name))
                continue
            if "{" in level or "}" in level:
                raise TemplateError(
                    f"level {level!r}: a named level is a whole level of lowercase letters, digits and '_' "
                    "(e.g. {device}); no text around it and no wildcards in it")
            if _LITERAL_BAD.search(level):
                raise TemplateError(f"level {level!r}: '+' and '#' must be whole levels")
            literals.append((i, level))
        if levels[0].startswith("$"):
            raise TemplateError("topics starting with '$' belong to the broker")
        if levels[0] in RESERVED_ROOTS:
            raise TemplateError(f"'{levels[0]}/...' is edgeloop's own output, not sensor input")
        extra = [n for _, n in names if n not in BOUND_FIELDS]
        if len(extra) > MAX_TAGS:
            raise TemplateError(f"{len(extra)} tag levels, at most {MAX_TAGS}")
        return cls(text, levels, tuple(literals), tuple(names), levels[-1] == "#")

    @property
    def filter(self) -> str:
        """The MQTT subscription: named levels become ``+``."""
        return "/".join("+" if _NAME_RE.match(level) else level for level in self.levels)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.names)

    def match(self, levels: list[str]) -> dict[str, str] | None:
        """Bound names if ``levels`` (a topic split on '/') matches, else None."""
        n = len(self.levels)
        if self.multi:
            if len(levels) < n - 1:
                return None
        elif len(levels) != n:
            return None
        for i, literal in self.literals:
            if levels[i] != literal:
                return None
        if levels and levels[0].startswith("$"):
            return None  # MQTT: wildcards never match '$' topics; literals cannot start with '$'
        return {name: levels[i] for i, name in self.names}

    def overlaps(self, other: "TopicTemplate") -> bool:
        return filters_overlap(self.filter, other.filter)


def filters_overlap(a: str, b: str) -> bool:
    """True if some topic matches both MQTT filters (``a/#`` also matches ``a``)."""
    la, lb = a.split("/"), b.split("/")
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


class Router:
    """Finds the pipeline a topic belongs to: the first template that matches (they do not overlap)."""

    def __init__(self, templates: list[TopicTemplate]) -> None:
        self.templates = templates

    def route(self, topic: str) -> tuple[int, dict[str, str]] | None:
        if len(topic) > MAX_TOPIC_BYTES:  # chars <= bytes: a cheap pre-check, exact below
            return None
        levels = topic.split("/")
        for index, template in enumerate(self.templates):
            fields = template.match(levels)
            if fields is not None:
                return index, fields
        return None
