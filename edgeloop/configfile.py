"""Load YAML config files into pydantic models with useful errors.

Why here: the edge and the bridge validate their whole configuration before
any connection opens, and a bad file must exit with a message that names the
file and the field (``bridge.yaml: influx.batch_size: Input should be greater
than 0``), never a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from edgeloop.errors import ConfigError
from edgeloop.secrets import ENV_REFERENCE, refuse_world_readable_inline_secrets

M = TypeVar("M", bound=BaseModel)


def expand_env(value: Any, source: str, path: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a YAML tree.

    Every variable that is missing (and has no default) is reported at once, in
    one ConfigError naming each field, so a forgotten secret fails at startup
    rather than as an auth error later -- and a new deployment learns all it
    must set in one go.
    """
    problems: list[str] = []
    expanded = _expand(value, path, problems)
    if problems:
        raise ConfigError(source, problems)
    return expanded


def _expand(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(f"{path}: environment variable ${{{name}}} is not set")
            return match.group(0)

        return ENV_REFERENCE.sub(sub, value)
    return value


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; unknown keys are rejected)"
        problems.append(f"{loc}: {msg}")
    return problems


def read_yaml(path: str | Path, expand: bool = True) -> dict[str, Any]:
    """The YAML mapping in ``path``, ``${ENV}`` expanded unless ``expand`` is false."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [f"not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    except RecursionError:
        raise ConfigError(source, ["(top level): nested too deeply"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): must be a mapping of keys to values"])
    if not expand:
        return data
    try:
        return expand_env(data, source)
    except RecursionError:
        raise ConfigError(source, ["(top level): nested too deeply"]) from None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` recursively (flags override the file)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(model: type[M], path: str | Path | None, overrides: dict[str, Any] | None = None) -> M:
    """Read ``path`` (optional), apply ``overrides`` from flags, validate as ``model``."""
    raw = read_yaml(path, expand=False) if path else {}
    try:
        data = expand_env(raw, str(path)) if path else {}
    except RecursionError:
        raise ConfigError(str(path), ["(top level): nested too deeply"]) from None
    source = str(path) if path else "defaults"
    if overrides:
        data = deep_merge(data, overrides)
        source += " + command line"
    try:
        config = model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None
    except RecursionError:
        raise ConfigError(source, ["(top level): nested too deeply"]) from None
    if path:
        # A token spelled out in a file anyone can read is refused (edgeloop.secrets).
        problems = refuse_world_readable_inline_secrets(config, raw, path)
        if problems:
            raise ConfigError(str(path), problems)
    return config


def redacted(config: BaseModel) -> dict[str, Any]:
    """The effective config as plain data with every secret masked."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return "********" if value.get_secret_value() else ""
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, str) and "@" in value and "://" in value:
            return _mask_url_password(value)
        return value

    return walk(config)


def _mask_url_password(url: str) -> str:
    """``mqtt://user:pass@host`` -> ``mqtt://user:********@host``; anything else unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{password}@", ":********@", 1)).geturl()
