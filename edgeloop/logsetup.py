"""Process-wide logging for the ``edgeloop`` command: text for people, JSON lines for collectors.

Why a flag and not a config key: logging starts before any config file is
read (a bad config must be reported in the chosen format too), and the choice
belongs to where the process runs (a terminal, journald, a container log
shipper), not to what it does.

``--log-format json`` writes one object per line with ``time`` (ISO 8601,
UTC), ``level``, ``logger``, ``message`` and, for errors, ``exc_info``;
python-json-logger does the formatting (escaping, exceptions, extras). What
gets logged is the same in both formats, and secrets never are: credentials
are SecretStr and broker URLs are logged through ``redact_url``.
"""

from __future__ import annotations

import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
FORMATS = ("text", "json")

#: (level, format) of the last ``configure_logging``: what child processes (edge workers) repeat.
_current = ("INFO", "text")


def current() -> tuple[str, str]:
    return _current


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",  # ISO 8601 in UTC with microseconds
    )


def configure_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Replace the root logger's handlers with one stream handler in ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    global _current
    _current = (level, fmt)
