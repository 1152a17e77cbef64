"""Error hierarchy shared by every edgeloop component.

    EdgeloopError
    ├── ConfigError      fatal at startup: the process exits with a message
    │   │                naming the file and the field
    │   └── MissingExtra an optional dependency ('extra') a command needs is not installed
    ├── TransientError   a peer is unavailable: retry with jittered backoff
    ├── PayloadError     one message is bad: count it, log it (rate-limited),
    │                    dead-letter it, carry on (see edgeloop.contract.ContractError)
    └── ModelError       a model cannot be used: refuse it, keep the old one

Library exceptions (paho, urllib3, influxdb-client, LiteRT) are translated
into these at the boundary that calls the library, with ``raise ... from exc``.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base class of every error edgeloop raises on purpose."""


class ConfigError(EdgeloopError):
    """Invalid configuration. ``source`` names the file (or "command line")."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = [f"invalid configuration in {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class TransientError(EdgeloopError):
    """A dependency (broker, database) is temporarily unavailable."""


class PayloadError(EdgeloopError):
    """One message cannot be processed; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class ModelError(EdgeloopError):
    """A model file, its metadata or its tensor spec cannot be used."""


class MissingExtra(ConfigError):
    """A command needs an extra that is not installed: one line saying which and how to install it."""

    def __init__(self, what: str, extra: str, missing: list[str], hint: str | None = None,
                 install: str | None = None) -> None:
        """``install``: the extras to put on the install line when ``extra`` alone is not enough."""
        self.what, self.extra, self.missing = what, extra, missing
        install = f"pip install 'edgeloop[{install or extra}]'" + (f" ({hint})" if hint else "")
        super().__init__("command line", [f"{what} needs the '{extra}' extra (missing: {', '.join(missing)}): {install}"])

    def __str__(self) -> str:
        return self.problems[0]
