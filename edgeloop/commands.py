"""What a component's ``register(cli)`` receives: a place for its commands and its config kinds.

Why: the core never imports a component to list its commands (Telegraf's
plugin registry, Python entry points). Each component names a ``register``
function in the entry point group ``edgeloop.commands`` (pyproject.toml); the
dispatcher (``edgeloop.cli``) calls it with a :class:`Commands`. ``register``
and the module holding it import nothing heavy (argparse and the core only): a
command's function imports what it needs when it runs, after the dispatcher
has checked that the extras it declares are installed.

Groups are shared: ``model`` holds the edge's ``model info`` and the bridge's
``model list|show|...``; ``config`` holds the core's ``config check``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENTRY_POINT_GROUP = "edgeloop.commands"

Run = Callable[[argparse.Namespace], int]
#: Extras a command needs: fixed, or decided from its arguments (``model retrain --request`` trains nothing).
Needs = tuple[str, ...] | Callable[[argparse.Namespace], tuple[str, ...]]

#: Help of the groups several components add to, whichever registers first.
SHARED_GROUPS = {
    "model": "model files (edge) and the model registry (bridge)",
    "config": "configuration files",
}

log = logging.getLogger("edgeloop")


@dataclass(frozen=True)
class ConfigKind:
    """A kind of config file ``edgeloop config check`` knows.

    ``schema()`` returns the pydantic model (its top-level fields tell the kinds
    apart); ``check(path)`` loads the file and runs its pre-flight, raising
    ConfigError or ModelError as the component's start-up would; ``needs``: the
    extras the check imports.
    """

    name: str
    schema: Callable[[], Any]
    check: Callable[[str], Any]
    needs: tuple[str, ...] = ()


class Group:
    """``edgeloop NAME ...``: commands under one name."""

    def __init__(self, name: str, sub: argparse._SubParsersAction) -> None:
        self.name = name
        self._sub = sub
        self.commands: dict[str, str] = {}  # name -> help, for the top-level help

    def command(self, name: str, run: Run, *, help: str, needs: Needs = (), **kwargs: Any) -> argparse.ArgumentParser:
        """Add ``edgeloop GROUP NAME``; returns its parser for the flags."""
        parser = self._sub.add_parser(name, help=help, **kwargs)
        self.commands[name] = help
        parser.set_defaults(func=run, _needs=needs, _command=f"edgeloop {self.name} {name}")
        return parser


class Commands:
    """The registrar the dispatcher hands to each component's ``register``."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self._sub = sub
        self.groups: dict[str, Group] = {}
        self.kinds: dict[str, ConfigKind] = {}

    def group(self, name: str, help: str | None = None) -> Group:
        """The group ``name``, created on first use (shared groups keep their common help)."""
        if name not in self.groups:
            parser = self._sub.add_parser(name, help=SHARED_GROUPS.get(name, help))
            self.groups[name] = Group(name, parser.add_subparsers(dest="action", required=True, metavar="COMMAND"))
        return self.groups[name]

    def overview(self) -> str:
        """Every command with its help, for ``edgeloop --help``."""
        rows = [(f"{g.name} {name}", text) for g in self.groups.values() for name, text in g.commands.items()]
        width = max((len(r[0]) for r in rows), default=0)
        return "commands:\n" + "\n".join(f"  {cmd:<{width}}  {text}" for cmd, text in rows)

    def config_kind(self, name: str, *, schema: Callable[[], Any], check: Callable[[str], Any],
                    needs: tuple[str, ...] = ()) -> None:
        """Teach ``config check`` a kind of file (see :class:`ConfigKind`)."""
        if name in self.kinds:
            raise ValueError(f"config kind {name!r} is registered twice")
        self.kinds[name] = ConfigKind(name, schema, check, needs)


# ------------------------------------------------------------------ helpers for commands


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so services drain instead of dying mid-batch."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s, draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def broker_flags(parser: argparse.ArgumentParser) -> None:
    """``--broker`` and ``--mqtt-protocol``, overriding ``mqtt:`` of the config file."""
    parser.add_argument("--broker", help="mqtt://[user:pass@]host[:port] or mqtts://... (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], help="MQTT protocol version (default 5)")


def mqtt_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of :func:`broker_flags`."""
    out: dict[str, Any] = {}
    if getattr(args, "broker", None):
        out["url"] = args.broker
    if getattr(args, "mqtt_protocol", None):
        out["protocol"] = args.mqtt_protocol
    return {"mqtt": out} if out else {}
