"""``edgeloop`` command line: the dispatcher.

It owns the argparse tree, the global flags, logging, exit codes, the signal
stop event and ``config check``; every other command belongs to a component
and is found through the entry point group ``edgeloop.commands``
(pyproject.toml; ``edgeloop.commands`` documents the registration API). The
core never imports a component: an edge-only install lists the edge's commands
and the core's, and a command whose extra is missing says which one to install.

argparse (standard library) rather than click/typer: the edge install stays
small, and commands import their heavy modules (numpy, LiteRT, influxdb-client,
TensorFlow) only when they run.

Exit codes: 0 ok (also when the reader of stdout goes away: ``| head``),
1 runtime failure (e.g. a drain that did not finish, a deployment the fleet did
not accept), 2 configuration error (a missing extra too), 3 model error, 4 no
broker within 10 s (a TransientError: ``bridge run`` at startup and the
one-shot commands that publish; ``edge run`` never exits for it, it retries).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import entry_points
from typing import Any

from edgeloop import __version__
from edgeloop.commands import ENTRY_POINT_GROUP, Commands, ConfigKind, stop_on_signals
from edgeloop.errors import ConfigError, MissingExtra, ModelError, TransientError
from edgeloop.extras import require

__all__ = ["build_parser", "detect_kind", "main", "stop_on_signals"]


# --------------------------------------------------------------------- config


def detect_kind(source: str, doc: dict[str, Any], kinds: dict[str, set[str]]) -> str:
    """The kind whose schema alone has some of ``doc``'s top-level keys (``kinds``: kind -> its keys).

    A file with only keys several kinds share (``mqtt:``), with keys of
    several kinds, or with no known key is a ConfigError asking for ``--kind``.
    """
    keys = {k if isinstance(k, str) else repr(k) for k in doc}  # YAML keys may be null or numbers
    owned = {
        kind: sorted(keys & (fields - set().union(*(f for k, f in kinds.items() if k != kind))))
        for kind, fields in kinds.items()
    }
    found = {kind: own for kind, own in owned.items() if own}
    if len(found) == 1:
        return next(iter(found))
    ask = f"give --kind {'|'.join(kinds)}"
    if found:
        which = "; ".join(f"{kind}: {', '.join(own)}" for kind, own in found.items())
        problem = f"it has keys of several kinds ({which}): {ask}"
    elif not keys:
        problem = f"it is empty, so its kind cannot be told: {ask}"
    elif keys & set().union(*kinds.values()):
        shared = ", ".join(sorted(keys & set().union(*kinds.values())))
        problem = f"it could be either kind (its keys {shared} are in more than one): {ask}"
    else:
        problem = f"none of its keys ({', '.join(sorted(keys))}) belongs to a known kind: {ask}"
    raise ConfigError(source, [f"(top level): {problem}"])


def _top_level_keys(schema: Any) -> set[str]:
    return {field.alias or name for name, field in schema.model_fields.items()}


def cmd_config_check(args: argparse.Namespace) -> int:
    from edgeloop.configfile import read_yaml, redacted

    kinds: dict[str, ConfigKind] = args._kinds
    name = args.kind
    if name == "auto":
        doc = read_yaml(args.file, expand=False)  # the kind first: ${VARS} are reported by the check, all at once
        name = detect_kind(args.file, doc, {k.name: _top_level_keys(k.schema()) for k in kinds.values()})
    kind = kinds[name]
    require(f"edgeloop config check ({name} config)", *kind.needs)
    cfg = kind.check(args.file)
    print(f"# {args.file}: valid {name} configuration (effective values, secrets masked)")
    print(json.dumps(redacted(cfg), indent=2, default=str))
    return 0


# ---------------------------------------------------------------------- parse


def _components() -> list[Any]:
    """The ``edgeloop.commands`` entry points, once each (in the installed distributions' order)."""
    unique: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        unique.setdefault(ep.name, ep)
    return list(unique.values())


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree: the core's commands and every installed component's."""
    parser = argparse.ArgumentParser(prog="edgeloop", description="Edge-ML runtime for MQTT IoT fleets.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgeloop {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text for people (default) or JSON lines for log collectors")
    cli = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))

    check = cli.group("config").command(
        "check", cmd_config_check,
        help="validate a config file, load its models, build its pipelines; print it, secrets masked",
    )
    check.add_argument("file")
    for ep in _components():
        try:
            ep.load()(cli)
        except Exception as exc:  # noqa: BLE001 -- a broken component must not take the others' commands away
            print(f"edgeloop: the {ep.name} commands are unavailable ({ep.value}: {type(exc).__name__}: {exc})",
                  file=sys.stderr)
    check.add_argument("--kind", choices=["auto", *cli.kinds], default="auto",
                       help="the kind of file (default: told by its top-level keys)")
    check.set_defaults(_kinds=dict(cli.kinds))
    parser.epilog = cli.overview() + "\n\nexit codes: 0 ok, 1 runtime failure, 2 configuration error " \
        "(or a missing extra), 3 model error, 4 no broker within 10 s (bridge run and the one-shot commands; " \
        "edge run keeps retrying)"
    return parser


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from edgeloop.logsetup import configure_logging

    configure_logging(args.log_level, args.log_format)
    try:
        needs = args._needs(args) if callable(args._needs) else args._needs
        require(args._command, *needs)
        return args.func(args)
    except MissingExtra as exc:
        print(exc, file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"edgeloop: model error: {exc}", file=sys.stderr)
        return 3
    except TransientError as exc:
        print(f"edgeloop: {exc}", file=sys.stderr)
        return 4


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader that closes stdout early (``| head``) ends it quietly with 0."""
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is ours to handle
    except BrokenPipeError:
        # What is still buffered goes nowhere; Python's own flush at exit must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
