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


def broker_flags(parser: argparse.ArgumentParser, fleet: bool = False) -> None:
    """``--broker`` and ``--mqtt-protocol``, overriding ``mqtt:`` of the config file.

    ``fleet``: a command that must reach the fleet (see :func:`fleet_mqtt`): it has no default broker.
    """
    default = "required unless -c gives mqtt:" if fleet else "default: mqtt.url of -c, else mqtt://127.0.0.1:1883"
    parser.add_argument("--broker", help=f"mqtt://[user:pass@]host[:port] or mqtts://... ({default})")
    parser.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], help="MQTT protocol version (default 5)")


def mqtt_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of :func:`broker_flags`."""
    out: dict[str, Any] = {}
    if getattr(args, "broker", None):
        out["url"] = args.broker
    if getattr(args, "mqtt_protocol", None):
        out["protocol"] = args.mqtt_protocol
    return {"mqtt": out} if out else {}


def fleet_mqtt(settings: Any, args: argparse.Namespace, purpose: str) -> Any:
    """The MqttSettings for a one-shot command that must reach the fleet (deploy, retrain request).

    ``settings``: the whole ``mqtt:`` section of the ``-c`` file (URL, TLS,
    credentials, protocol) with :func:`mqtt_overrides` already merged in, as
    the services load it -- so a command reaches the broker exactly as the
    bridge does. Refuses when neither ``-c`` nor ``--broker`` was given: the
    default ``mqtt://127.0.0.1:1883`` is right for a service on a laptop but a
    deployment sent there silently reaches no fleet. The client id is the
    command's own (``mqtt.client_id`` + ``-{purpose}-{random}`` when the file
    sets one, so a broker policy on the prefix still holds), never the
    file's: a second connection under the running bridge's id would log it off.
    """
    import uuid

    from edgeloop.errors import ConfigError
    from edgeloop.mqttconfig import redact_url

    if not getattr(args, "broker", None) and not getattr(args, "config", None):
        command = getattr(args, "_command", "this command")
        raise ConfigError("command line", [
            f"{command} talks to the fleet over MQTT: give -c bridge.yaml (its whole mqtt: section is used: "
            "url, tls, username/password) or --broker mqtt[s]://[user:pass@]host[:port]"])
    prefix = settings.client_id or "edgeloop"
    client_id = f"{prefix[:100]}-{purpose[:16]}-{uuid.uuid4().hex[:8]}"
    config, broker = getattr(args, "config", None), getattr(args, "broker", None)
    origin = " + ".join(x for x in (config and f"mqtt: of {config}", broker and "--broker") if x)
    tls = "" if settings.tls is None else ", TLS" + (" with client certificate" if settings.tls.cert_file else "")
    log.info("%s: broker %s (%s%s), client id %s", purpose, redact_url(settings.url), origin, tls, client_id)
    return settings.model_copy(update={"client_id": client_id})
