"""The bridge's commands: ``bridge run``, ``keys generate``, ``model retrain``, the registry's
``model list|show|add|promote|rollback|deploy`` (``edgeloop.bridge.cli_registry``), and the
``bridge`` config kind.

Registered through the ``edgeloop.commands`` entry point (pyproject.toml); this
module imports argparse and the core only -- paho, influxdb-client, pyarrow and
TensorFlow are imported when a command runs, after the dispatcher has checked
that the ``bridge`` extra (and for training, ``train``) is installed.

``model retrain NAME`` two ways:
- ``--request``: publish ``{"model": NAME}`` on the running bridge's command
  topic; the bridge retrains in its worker, gates, registers and deploys, and
  writes every step as an event (the usual way in production). The broker is
  reached through the whole ``mqtt:`` section of ``-c`` (``--broker`` overrides);
  without either the command refuses;
- otherwise this process runs the same flow itself (``edgeloop.bridge.retrainflow``),
  with the sample store, the registry, the signing key and InfluxDB taken from
  the bridge config (``-c``): retrain, gate, register, and (unless
  ``--no-deploy``) deploy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeloop.commands import Commands, broker_flags, mqtt_overrides
from edgeloop.bridge.cli_registry import register_registry

NEEDS = ("bridge",)


# --------------------------------------------------------------------------- bridge run


def cmd_bridge_run(args: argparse.Namespace) -> int:
    from edgeloop.commands import stop_on_signals
    from edgeloop.bridge.app import run_bridge
    from edgeloop.bridge.config import load_bridge_config

    overrides = mqtt_overrides(args)
    influx: dict[str, Any] = {}
    for flag, key in [
        ("influx_url", "url"),
        ("influx_api", "api"),
        ("influx_db", "db"),
        ("influx_bucket", "bucket"),
        ("influx_org", "org"),
        ("influx_token_file", "token_file"),
    ]:
        value = getattr(args, flag)
        if value is not None:
            influx[key] = value
    if args.influx_create_db:
        influx["create_database"] = True
    if influx:
        overrides["influx"] = influx
    cfg = load_bridge_config(args.config, overrides)
    return run_bridge(cfg, stop_on_signals())


# --------------------------------------------------------------------------- keys


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from edgeloop.errors import ConfigError
    from edgeloop.signing import generate_keypair

    try:
        private, public, key_id = generate_keypair(args.out, overwrite=args.force)
    except ConfigError as exc:
        if args.force:
            raise
        raise ConfigError(exc.source, [*exc.problems, "--force overwrites them (every edge then needs the new "
                                       "deploy.pub: manifests signed with the new key are refused by the old one)"]) from None
    print(f"private key {private} (mode 0600: keep it on the deploying host only)")
    print(f"public key  {public} (deploy.public_key_file on every edge)")
    print(f"key id      {key_id}")
    return 0


# --------------------------------------------------------------------------- model retrain


def cmd_model_retrain(args: argparse.Namespace) -> int:
    from edgeloop.bridge.config import load_bridge_config
    from edgeloop.commands import fleet_mqtt

    cfg = load_bridge_config(args.config, mqtt_overrides(args))
    if args.request:
        from edgeloop.bridge.loop import publish_retrain_request
        from edgeloop.mqtt import redact_url

        mqtt = fleet_mqtt(cfg.mqtt, args, "retrain-request")
        publish_retrain_request(mqtt, args.name, args.since_s, cfg.retrain.command_topic)
        print(f"asked the bridge at {redact_url(mqtt.url)} to retrain {args.name} (topic {cfg.retrain.command_topic})")
        return 0
    store_dir = _sample_store(args, cfg)

    from edgeloop.bridge.events import EventWriter
    from edgeloop.bridge.registry import Registry
    from edgeloop.bridge.retrainflow import RetrainRun, connect_deployer, retrain_and_deploy
    from edgeloop.bridge.sinks import make_sink

    settings = cfg.retrain
    registry = Registry(args.registry or settings.registry)
    events = EventWriter(make_sink(cfg) if args.config else None, cfg.influx.tags)
    since = time.time() - args.since_s if args.since_s else None
    deploy = not args.no_deploy and settings.signing_key_file is not None
    # Connected before training: an unreachable broker fails now (exit 4), not after the training.
    deployer = connect_deployer(cfg, registry, events, mqtt=fleet_mqtt(cfg.mqtt, args, "retrain-deploy")) \
        if deploy else None
    try:
        events(args.name, "retrain", "retrain requested (cli)", None, trigger="cli")
        with tempfile.TemporaryDirectory(prefix="edgeloop-retrain-") as tmp:
            if deployer is not None:
                deployer.wait_for_fleet(args.discover_s)  # the retained node statuses
            run = retrain_and_deploy(RetrainRun(args.name, "cli"), since, settings=settings,
                                     store_dir=store_dir, registry=registry,
                                     workdir=Path(tmp), events=events, deployer=deployer, worker_output=sys.stderr)
    finally:
        if deployer is not None:
            deployer.close()
    if run.result is not None:
        print(json.dumps(run.result.model_dump(mode="json"), indent=2))
    if run.state == "failed":
        print(f"edgeloop: retrain of {args.name} failed: {run.error}", file=sys.stderr)
        return 1
    if run.state == "refused":
        return 1
    if deployer is None:
        print(f"registered {args.name} {run.result.version} (not deployed: "
              f"{'--no-deploy' if args.no_deploy else 'no retrain.signing_key_file'}); "
              f"`edgeloop model promote {args.name} {run.result.version} --deploy` rolls it out")
        return 0
    print(json.dumps(run.deploy.as_dict(), indent=2, default=str))
    return 0 if run.state == "deployed" else 1


def _sample_store(args: argparse.Namespace, cfg: Any) -> Path:
    """The sample store to train on; a ConfigError saying how to turn it on when there is none."""
    from edgeloop.errors import ConfigError

    if args.samples is not None:
        store = Path(args.samples)
    elif not cfg.samples.enabled:
        where = f"{args.config}: samples.enabled is false" if args.config else "no -c bridge.yaml was given"
        raise ConfigError(args.config or "command line", [
            f"{where}, so there is no sample store to retrain {args.name} on: retraining uses the field samples "
            "the bridge keeps. Give -c with the bridge's own file, whose samples: {enabled: true, dir: DIR} the "
            "running bridge fills, or --samples DIR"])
    else:
        store = Path(cfg.samples.dir)
    if not store.is_dir():
        raise ConfigError(args.config or "command line", [
            f"the sample store {store} does not exist: no field samples have been stored there yet (the bridge "
            "writes them with samples.enabled: true, once edges send samples: sampling in edge.yaml)"])
    return store


def _retrain_needs(args: argparse.Namespace) -> tuple[str, ...]:
    return NEEDS if args.request else (*NEEDS, "train")  # --request only asks the bridge


# --------------------------------------------------------------------------- config kind


def check_bridge_config(path: str) -> Any:
    """``config check`` of a bridge file: what ``bridge run`` validates before it connects."""
    from edgeloop.bridge.config import load_bridge_config

    return load_bridge_config(path, {})


def bridge_schema() -> Any:
    from edgeloop.bridge.config import BridgeConfig

    return BridgeConfig


def register(cli: Commands) -> None:
    p = cli.group("bridge", help="the cloud side").command(
        "run", cmd_bridge_run, help="validate results and status, write them to InfluxDB", needs=NEEDS)
    p.add_argument("-c", "--config", help="bridge.yaml")
    broker_flags(p)
    p.add_argument("--influx-url")
    p.add_argument("--influx-api", choices=["v1", "v2"])
    p.add_argument("--influx-db", help="v1: database")
    p.add_argument("--influx-bucket", help="v2: bucket")
    p.add_argument("--influx-org", help="v2: organisation")
    p.add_argument("--influx-token-file", help="v2: file holding the API token")
    p.add_argument("--influx-create-db", action="store_true",
                   help="v1: create the database at start if it does not exist (influx.create_database)")

    p = cli.group("keys", help="Ed25519 keys for signed model deployment").command(
        "generate", cmd_keys_generate, needs=NEEDS,
        help="write deploy.key (private, 0600) and deploy.pub into a directory")
    p.add_argument("--out", required=True, help="directory for deploy.key and deploy.pub")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")

    model = cli.group("model")
    register_registry(model, NEEDS)  # model list|show|add|promote|rollback|deploy

    p = model.command("retrain", cmd_model_retrain, needs=_retrain_needs,
                      help="retrain a model on recent field samples (gate, register, deploy)")
    p.add_argument("name")
    p.add_argument("-c", "--config", help="bridge.yaml: sample store, registry, signing key, gate, InfluxDB")
    p.add_argument("--request", action="store_true", help="ask the running bridge to do it (MQTT command)")
    broker_flags(p, fleet=True)
    p.add_argument("--since-s", type=float, help="train on samples of the last N seconds (default retrain.lookback_s)")
    p.add_argument("--registry", type=Path, help="registry directory (default retrain.registry of -c)")
    p.add_argument("--samples", type=Path, help="sample store directory (default samples.dir of -c)")
    p.add_argument("--no-deploy", action="store_true", help="register the candidate, do not roll it out")
    p.add_argument("--discover-s", type=float, default=2.0, help="seconds to collect node statuses before deploying")

    cli.config_kind("bridge", schema=bridge_schema, check=check_bridge_config)
