"""``edgeloop model list|show|add|promote|rollback|deploy``: the registry and the deployer.

Why apart from ``edgeloop/bridge/cli.py``: it keeps that module small; it
calls :func:`register_registry`. Like it, this module imports argparse and the
core only: cryptography, the registry and paho are imported when a command runs.

Registry directory: ``--registry DIR``, else ``retrain.registry`` of the
bridge config given with ``-c``, else ``./registry``. Signing key likewise:
``--key FILE``, else ``retrain.signing_key_file``.

``promote`` and ``rollback`` move the registry's pointers only; with
``--deploy`` they publish the version to the fleet first, and the registry
follows what the fleet accepted (``edgeloop.bridge.deployer``): a version no
node accepts leaves ``current`` where it was. Every command that publishes
to the fleet reaches the broker through the whole ``mqtt:`` section of ``-c``
(URL, TLS, credentials), ``--broker``/``--mqtt-protocol`` overriding it
(``edgeloop.commands.fleet_mqtt``); without either it refuses.

``add NAME FILE --version V`` registers the model in FILE as version V: its
metadata is rewritten with the new version (the bytes, and so the sha256 the
registry and the edge verify, are unchanged).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgeloop.commands import Group, broker_flags

DEFAULT_REGISTRY = Path("registry")


def _bridge_config(args: argparse.Namespace) -> Any:
    """The bridge config of ``-c`` (flags such as ``--broker`` merged in), loaded once; None without ``-c``."""
    if not getattr(args, "config", None):
        return None
    if getattr(args, "_bridge_cfg", None) is None:
        from edgeloop.bridge.config import load_bridge_config
        from edgeloop.commands import mqtt_overrides

        args._bridge_cfg = load_bridge_config(args.config, mqtt_overrides(args))
    return args._bridge_cfg


def _bridge_retrain(args: argparse.Namespace) -> Any:
    return getattr(_bridge_config(args), "retrain", None)


def _registry(args: argparse.Namespace):
    from edgeloop.bridge.registry import Registry

    root = args.registry
    if root is None:
        retrain = _bridge_retrain(args)
        root = getattr(retrain, "registry", None) or DEFAULT_REGISTRY
    return Registry(root)


def _signing_key(args: argparse.Namespace):
    from edgeloop.errors import ConfigError
    from edgeloop.signing import SigningKey

    path = args.key or getattr(_bridge_retrain(args), "signing_key_file", None)
    if path is None:
        raise ConfigError("command line", ["--key FILE (the Ed25519 private key from `edgeloop keys generate`) is required"])
    return SigningKey.load(path)


def _events(args: argparse.Namespace):  # an EventWriter to the bridge's InfluxDB with -c, else None
    cfg = _bridge_config(args)
    if cfg is None:
        return None
    from edgeloop.bridge.events import EventWriter
    from edgeloop.bridge.sinks import make_sink

    return EventWriter(make_sink(cfg), cfg.influx.tags)


def _fleet_mqtt(args: argparse.Namespace) -> Any:
    """MqttSettings to reach the fleet: ``mqtt:`` of ``-c`` with the flags over it; refuses without either."""
    from edgeloop.commands import fleet_mqtt, mqtt_overrides

    cfg = _bridge_config(args)
    if cfg is None:
        from edgeloop.bridge.config import load_bridge_config

        cfg = load_bridge_config(None, mqtt_overrides(args))
    return fleet_mqtt(cfg.mqtt, args, "deploy")


def _fail(exc: Exception) -> int:
    print(f"edgeloop: {exc}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- registry


def cmd_model_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    names = [args.name] if args.name else registry.names()
    rows = [info.as_dict() for name in names for info in registry.list(name)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {registry.root}")
        return 0
    print(f"{'model':<20} {'version':<20} {'':<9} {'sha256':<14} {'bytes':>9}  {'parent':<12} added")
    for r in rows:
        mark = "current" if r["current"] else "previous" if r["previous"] else "refused" if r["refused"] else ""
        added = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["added"]))
        print(f"{r['name']:<20} {r['version']:<20} {mark:<9} {r['sha256'][:12]:<14} {r['size']:>9}  "
              f"{(r['parent'] or '-'):<12} {added}")
    return 0


def cmd_model_show(args: argparse.Namespace) -> int:
    from edgeloop.bridge.registry import RegistryError

    registry = _registry(args)
    try:
        version = args.version or registry.current(args.name)
        if version is None:
            raise RegistryError(f"model {args.name} has no current version; give one")
        path, meta = registry.get(args.name, version)
        out = {
            "model": args.name,
            "version": version,
            "file": str(path),
            "current": registry.current(args.name) == version,
            "refused": registry.refused(args.name).get(version),
            "record": registry.record(args.name, version),
            "metadata": meta.model_dump(mode="json", exclude_none=True, exclude={"reference"}),
            "audit": [e for e in registry.audit(args.name) if e.get("version") == version or e.get("rolled_back") == version],
        }
    except RegistryError as exc:
        return _fail(exc)
    print(json.dumps(out, indent=2, default=str))
    return 0


def cmd_model_add(args: argparse.Namespace) -> int:
    from edgeloop.bridge.registry import RegistryError
    from edgeloop.bridge.training.selftest import TrialFailed, tried_selftest
    from edgeloop.errors import ConfigError
    from edgeloop.modelfile import ModelMetadata, load_model_files
    from pydantic import ValidationError

    content, meta = load_model_files(args.file)
    name = args.name or meta.name
    if name != meta.name:
        raise ConfigError("command line", [
            f"{args.file} holds model {meta.name!r} (metadata name), not {name!r}: the edges subscribe to the "
            "name their model carries, so a model cannot be renamed here"])
    registry = _registry(args)
    parent, detail = args.parent, {}
    if args.version and args.version != meta.version:
        # A new version of the same bytes: only the metadata's version changes (sha256 and spec stay valid).
        detail["from_version"] = meta.version
        if parent is None and meta.version in registry.versions(name) \
                and registry.record(name, meta.version)["sha256"] == meta.sha256:
            parent = meta.version  # the registry already holds these bytes as that version
        try:
            meta = ModelMetadata.model_validate({**meta.model_dump(mode="json", exclude_none=True),
                                                 "version": args.version})
        except ValidationError as exc:
            raise ConfigError("command line", [f"--version {args.version[:80]!r}: {exc.errors()[0]['msg']}"]) from None
    try:
        # Tried in a child process first: a file that crashes or hangs the interpreter never enters the registry.
        selftest = tried_selftest(content, meta, timeout_s=args.trial_timeout)
    except TrialFailed as exc:
        return _fail(ValueError(f"{args.file} failed its trial in a child process and was not added: {exc}"))
    try:
        version = registry.add(name, content, meta, parent=parent, detail=detail, selftest=selftest)
        if args.promote:
            registry.promote(name, version, reason="edgeloop model add --promote")
    except RegistryError as exc:
        return _fail(exc)
    print(f"added {name} {version} ({len(content)} bytes, sha256 {meta.sha256[:12]}...) to {registry.root}"
          + (f", parent {parent}" if parent else "") + (" (current)" if args.promote else ""))
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    """Without ``--deploy``: move the pointer. With it: deploy first; the deployer promotes once the fleet runs it."""
    from edgeloop.bridge.registry import RegistryError

    registry = _registry(args)
    try:
        if args.force:
            registry.clear_refused(args.name, args.version)
        if args.deploy:
            registry.get(args.name, args.version)
            if args.reason:
                registry.note(args.name, args.version, "promote_requested", reason=args.reason)
        else:
            registry.promote(args.name, args.version, reason=args.reason)
    except RegistryError as exc:
        return _fail(exc)
    if args.deploy:
        return _deploy(args, registry, args.version)
    print(f"{args.name}: current {args.version}, previous {registry.previous(args.name)}")
    return 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    """Without ``--deploy``: drop the current version from the history. With it: deploy the previous version
    first; the registry rolls back once the fleet runs it."""
    from edgeloop.bridge.registry import RegistryError

    registry = _registry(args)
    dropped = registry.current(args.name)
    try:
        if args.deploy:
            version = registry.previous(args.name)
            if version is None:
                raise RegistryError(f"model {args.name} has no previous version to roll back to")
            code = _deploy(args, registry, version, rollback=True)
            if registry.current(args.name) != version:
                return code or 1
        else:
            version = registry.rollback(args.name, reason=args.reason)
            print(f"{args.name}: current {version}")
            code = 0
    except RegistryError as exc:
        return _fail(exc)
    events = _events(args)
    if events is not None:
        events(args.name, "rollback", f"registry rolled back from {dropped} ({args.reason or 'edgeloop model rollback'})",
               version)
    return code


def cmd_model_deploy(args: argparse.Namespace) -> int:
    registry = _registry(args)
    version = args.version or registry.current(args.name)
    if version is None:
        return _fail(ValueError(f"model {args.name} has no current version; give one"))
    return _deploy(args, registry, version)


def _deploy(args: argparse.Namespace, registry: Any, version: str, rollback: bool = False) -> int:
    """Publish ``version`` to the fleet; the report on stdout (JSON), one line on stderr saying what the
    fleet and the registry hold now. Exit 0 only when the rollout reached every targeted node (or was
    not waited for)."""
    from edgeloop.bridge.deployer import Deployer, DeployError
    from edgeloop.bridge.registry import RegistryError

    mqtt = _fleet_mqtt(args)
    key = _signing_key(args)
    deployer = Deployer.connect(
        mqtt, registry, key, client_id=mqtt.client_id,
        canary_timeout_s=args.timeout, rollout_timeout_s=args.timeout, events=_events(args),
    )
    try:
        # Always collect the retained statuses: a rollout matching no node publishes nothing, even with --no-wait.
        deployer.wait_for_fleet(args.discover_s)
        report = deployer.deploy(args.name, version, targets=args.targets or ["*"], canary=args.canary or None,
                                 wait=not args.no_wait, rollback=rollback, verdict=args.wait_healthy)
    except (DeployError, RegistryError) as exc:
        return _fail(exc)
    finally:
        deployer.close()
    print(json.dumps(report.as_dict(), indent=2))
    print(("" if report.ok else "edgeloop: ") + report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- parser


def register_registry(model: Group, needs: tuple[str, ...]) -> None:
    """The registry's commands in the shared ``model`` group."""

    def registry_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", type=Path, help="registry directory (default: retrain.registry of -c, or ./registry)")
        p.add_argument("-c", "--config", help="bridge.yaml to take the registry, signing key and mqtt: from")

    def deploy_flags(p: argparse.ArgumentParser) -> None:
        broker_flags(p, fleet=True)  # -c's whole mqtt: section (URL, TLS, credentials), these override it
        p.add_argument("--key", help="Ed25519 private key (default: retrain.signing_key_file of -c)")
        p.add_argument("--targets", nargs="+", help="node ids or globs (default: every node)")
        p.add_argument("--canary", nargs="+", help="node ids or globs deployed first; the fleet follows only if healthy")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the canary, and for the rollout")
        p.add_argument("--discover-s", type=float, default=2.0, help="seconds to collect the retained node statuses")
        p.add_argument("--no-wait", action="store_true", help="publish and return without waiting for the fleet")
        p.add_argument("--wait-healthy", action="store_true",
                       help="wait (up to --timeout) for each node's probation verdict: a node that rolls the version "
                            "back counts as refusing it (default: a node running it on probation counts as accepting)")

    p = model.command("list", cmd_model_list, needs=needs, help="versions in the registry")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    registry_flags(p)

    p = model.command("show", cmd_model_show, needs=needs, help="one version: metadata, record, audit entries")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="default: the current version")
    registry_flags(p)

    p = model.command("add", cmd_model_add, needs=needs,
                      help="put a .tflite (with its .json beside it) into the registry, as --version V if given")
    p.add_argument("name", nargs="?", help="the model's name (default: the one in FILE's metadata; must match it)")
    p.add_argument("file", help="NAME.tflite with NAME.json beside it")
    p.add_argument("--version", help="register it as this version (its metadata is rewritten; bytes unchanged)")
    p.add_argument("--parent", help="the version it was derived from (default with --version: FILE's own version, "
                                    "when the registry holds the same bytes under it)")
    p.add_argument("--promote", action="store_true", help="also make it current")
    p.add_argument("--trial-timeout", type=float, default=60.0,
                   help="seconds allowed to load and self-test it in a child process")
    registry_flags(p)

    p = model.command("promote", cmd_model_promote, needs=needs,
                      help="make a version current (the old current becomes previous)")
    p.add_argument("name")
    p.add_argument("version")
    p.add_argument("--reason")
    p.add_argument("--force", action="store_true", help="also promote a version that was refused")
    p.add_argument("--deploy", action="store_true",
                   help="publish it to the fleet; it becomes current once a node runs it")
    registry_flags(p)
    deploy_flags(p)

    p = model.command("rollback", cmd_model_rollback, needs=needs, help="make the previous version current again")
    p.add_argument("name")
    p.add_argument("--reason")
    p.add_argument("--deploy", action="store_true",
                   help="publish the previous version to the fleet; the registry rolls back once a node runs it")
    registry_flags(p)
    deploy_flags(p)

    p = model.command("deploy", cmd_model_deploy, needs=needs,
                      help="publish a signed version to the fleet over MQTT (canary first with --canary)")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="default: the current version")
    registry_flags(p)
    deploy_flags(p)
