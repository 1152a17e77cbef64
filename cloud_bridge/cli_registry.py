"""``edgeloop model list|show|add|promote|rollback|deploy``: the registry and the deployer.

Why apart from ``edgeloop/bridge/cli.py``: it keeps that module small; it
calls :func:`register_registry`. Like it, this module imports argparse and the
core only: cryptography, the registry and paho are imported when a command runs.

Registry directory: ``--registry DIR``, else ``retrain.registry`` of the
bridge config given with ``-c``, else ``./registry``. Signing key likewise:
``--key FILE``, else ``retrain.signing_key_file``.

``promote`` and ``rollback`` move the registry's pointers only; with
``--deploy`` (or with ``model deploy``) the now-current version is also
published to the fleet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgeloop.commands import Group

DEFAULT_REGISTRY = Path("registry")


def _bridge_retrain(args: argparse.Namespace) -> Any:
    if not getattr(args, "config", None):
        return None
    from edgeloop.bridge.config import load_bridge_config

    return getattr(load_bridge_config(args.config, {}), "retrain", None)


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
    if not getattr(args, "config", None):
        return None
    from edgeloop.bridge.config import load_bridge_config
    from edgeloop.bridge.events import EventWriter
    from edgeloop.bridge.sinks import make_sink

    cfg = load_bridge_config(args.config, {})
    return EventWriter(make_sink(cfg), cfg.influx.tags)


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
    from edgeloop.modelfile import load_model_files

    content, meta = load_model_files(args.file)
    registry = _registry(args)
    try:
        # Tried in a child process first: a file that crashes or hangs the interpreter never enters the registry.
        selftest = tried_selftest(content, meta, timeout_s=args.trial_timeout)
    except TrialFailed as exc:
        return _fail(ValueError(f"{args.file} failed its trial in a child process and was not added: {exc}"))
    try:
        version = registry.add(meta.name, content, meta, parent=args.parent, selftest=selftest)
        if args.promote:
            registry.promote(meta.name, version, reason="edgeloop model add --promote")
    except RegistryError as exc:
        return _fail(exc)
    print(f"added {meta.name} {version} ({len(content)} bytes, sha256 {meta.sha256[:12]}...) to {registry.root}")
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    from edgeloop.bridge.registry import RegistryError

    registry = _registry(args)
    try:
        if args.force:
            registry.clear_refused(args.name, args.version)
        registry.promote(args.name, args.version, reason=args.reason)
    except RegistryError as exc:
        return _fail(exc)
    print(f"{args.name}: current {args.version}, previous {registry.previous(args.name)}")
    return _deploy(args, registry, args.version) if args.deploy else 0


def cmd_model_rollback(args: argparse.Namespace) -> int:
    from edgeloop.bridge.registry import RegistryError

    registry = _registry(args)
    try:
        dropped = registry.current(args.name)
        version = registry.rollback(args.name, reason=args.reason)
    except RegistryError as exc:
        return _fail(exc)
    print(f"{args.name}: current {version}")
    events = _events(args)
    if events is not None:
        events(args.name, "rollback", f"registry rolled back from {dropped} ({args.reason or 'edgeloop model rollback'})",
               version)
    return _deploy(args, registry, version) if args.deploy else 0


def cmd_model_deploy(args: argparse.Namespace) -> int:
    registry = _registry(args)
    version = args.version or registry.current(args.name)
    if version is None:
        return _fail(ValueError(f"model {args.name} has no current version; give one"))
    return _deploy(args, registry, version)


def _deploy(args: argparse.Namespace, registry: Any, version: str) -> int:
    from edgeloop.bridge.deployer import Deployer, DeployError
    from edgeloop.bridge.registry import RegistryError
    from edgeloop.mqtt import MqttSettings

    key = _signing_key(args)
    deployer = Deployer.connect(
        MqttSettings(url=args.broker), registry, key, client_id=f"edgeloop-deploy-cli-{int(time.time())}",
        canary_timeout_s=args.timeout, rollout_timeout_s=args.timeout, events=_events(args),
    )
    try:
        if args.canary or not args.no_wait:
            deployer.wait_for_fleet(args.discover_s)
        report = deployer.deploy(args.name, version, targets=args.targets or ["*"], canary=args.canary or None,
                                 wait=not args.no_wait)
    except (DeployError, RegistryError) as exc:
        return _fail(exc)
    finally:
        deployer.close()
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.outcome in ("deployed", "published") else 1


# --------------------------------------------------------------------------- parser


def register_registry(model: Group, needs: tuple[str, ...]) -> None:
    """The registry's commands in the shared ``model`` group."""

    def registry_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--registry", type=Path, help="registry directory (default: retrain.registry of -c, or ./registry)")
        p.add_argument("-c", "--config", help="bridge.yaml to take the registry and signing key from")

    def deploy_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
        p.add_argument("--key", help="Ed25519 private key (default: retrain.signing_key_file of -c)")
        p.add_argument("--targets", nargs="+", help="node ids or globs (default: every node)")
        p.add_argument("--canary", nargs="+", help="node ids or globs deployed first; the fleet follows only if healthy")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the canary, and for the rollout")
        p.add_argument("--discover-s", type=float, default=2.0, help="seconds to collect the retained node statuses")
        p.add_argument("--no-wait", action="store_true", help="publish and return without waiting for the fleet")

    p = model.command("list", cmd_model_list, needs=needs, help="versions in the registry")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true")
    registry_flags(p)

    p = model.command("show", cmd_model_show, needs=needs, help="one version: metadata, record, audit entries")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="default: the current version")
    registry_flags(p)

    p = model.command("add", cmd_model_add, needs=needs, help="put a .tflite (with its .json beside it) into the registry")
    p.add_argument("file")
    p.add_argument("--parent", help="the version it was derived from")
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
    p.add_argument("--deploy", action="store_true", help="and publish it to the fleet")
    registry_flags(p)
    deploy_flags(p)

    p = model.command("rollback", cmd_model_rollback, needs=needs, help="make the previous version current again")
    p.add_argument("name")
    p.add_argument("--reason")
    p.add_argument("--deploy", action="store_true", help="and publish it to the fleet")
    registry_flags(p)
    deploy_flags(p)

    p = model.command("deploy", cmd_model_deploy, needs=needs,
                      help="publish a signed version to the fleet over MQTT (canary first with --canary)")
    p.add_argument("name")
    p.add_argument("version", nargs="?", help="default: the current version")
    registry_flags(p)
    deploy_flags(p)
