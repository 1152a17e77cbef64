"""Secrets in configuration: read from files, refused when written where anyone can read them.

Why one place: the MQTT password, the TLS key password and the InfluxDB token
all follow the same policy, and the policy is easy to get subtly wrong.

Policy (docs/security.md, "Secrets"):

- A secret comes from ``${ENV}`` expansion or from a ``*_file`` (one line,
  stripped). Secret files must be regular files of at most
  ``MAX_SECRET_FILE_BYTES``; a world-readable one is used but logged as a
  warning, because Docker and Kubernetes mount secrets 0444/0644 by default and
  refusing them would break the normal container setup.
- A secret written literally into a config file that every local user can
  read (mode ``o+r``) is a ConfigError naming the file and the field: that is
  how tokens leak (a config copied into a ticket, a world-readable /etc file).
  "Literally" means any part the file spells out: ``x${NOPE:-}`` and
  ``${NOPE:-pw}`` (an unset variable's default) count, ``${PW}`` does not.
- Secret values never appear in logs, error messages or ``config check``.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

log = logging.getLogger("edgeloop.config")

MAX_SECRET_FILE_BYTES = 64 * 1024

#: ``${NAME}`` or ``${NAME:-default}`` in a config string (expanded by ``edgeloop.configfile``).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def written_in_file(value: str) -> str:
    """The part of a config string that the file itself spells out: the text around ``${...}``
    references, and the default of each reference to a variable that is not set (``"x${NOPE:-}"`` -> ``"x"``)."""
    return ENV_REFERENCE.sub(lambda m: "" if m.group(1) in os.environ else (m.group(2) or ""), value)


def world_readable(path: str | Path) -> bool:
    """True if every local user may read ``path`` (POSIX mode o+r)."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def read_secret_file(path: str | Path, what: str, warn: bool = True) -> str:
    """The stripped first-line-or-more content of a secret file; ValueError says what is wrong.

    ``what`` names the field for messages (``"token file"``). The value itself
    never appears in an error. A world-readable file is logged as a warning
    (unless ``warn`` is false, for a second read of the same file).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} {str(path)!r} is not a regular file")
    if st.st_size > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{what} {str(path)!r} is larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SECRET_FILE_BYTES + 1)
        value = raw.decode("utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text") from None
    if not value:
        raise ValueError(f"{what} {str(path)!r} is empty")
    if warn and st.st_mode & stat.S_IROTH:
        log.warning(
            "%s %s is readable by every user (mode %04o); restrict it: chmod 600 %s",
            what, path, stat.S_IMODE(st.st_mode), path,
        )
    return value


def literal_secrets(config: BaseModel, raw: Any) -> list[str]:
    """Dotted names of the secrets in ``config`` that ``raw`` (the unexpanded YAML) spells out literally.

    A secret is literal when the file spells out any of it (:func:`written_in_file`:
    ``"x${NOPE:-}"`` and ``${NOPE:-pw}`` are literal, ``${PW}`` is not); broker
    URLs count when they carry a literal password (``mqtt://user:pass@host``).
    Values from ``*_file`` or from set ``${ENV}`` variables are fine.
    """
    found: list[str] = []

    def raw_at(node: Any, key: str | int) -> Any:
        if isinstance(node, dict):
            return node.get(key)
        if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            return node[key]
        return None

    def literal(value: Any) -> bool:
        return isinstance(value, str) and bool(written_in_file(value))

    def walk(value: Any, node: Any, path: str) -> None:
        if node is None:
            return
        if isinstance(value, SecretStr):
            if literal(node):
                found.append(path)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                child = raw_at(node, name)
                sub = f"{path}.{name}" if path else name
                if name == "url" and isinstance(getattr(value, name), str) and isinstance(child, str):
                    try:
                        password = urlsplit(child).password
                    except ValueError:
                        password = None
                    if password is not None and literal(password):
                        found.append(f"{sub} (password in the URL)")
                    continue
                walk(getattr(value, name), child, sub)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, raw_at(node, i), f"{path}.{i}")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, raw_at(node, key), f"{path}.{key}")

    walk(config, raw, "")
    return found


def refuse_world_readable_inline_secrets(config: BaseModel, raw: Any, path: str | Path) -> list[str]:
    """Problems (for a ConfigError on ``path``) if ``path`` is world-readable and spells out a secret."""
    if not world_readable(path):
        return []
    mode = stat.S_IMODE(os.stat(path).st_mode)
    return [
        f"{name}: secret written inline in a file every user can read (mode {mode:04o}); "
        f"use ${{ENV_VAR}}, the matching *_file setting, or chmod 600 {path}"
        for name in literal_secrets(config, raw)
    ]
