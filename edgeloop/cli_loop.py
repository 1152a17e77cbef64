"""``edgeloop model retrain NAME``: retrain a model on the field samples now, or ask the bridge to.

Why apart from ``edgeloop/cli.py``: it belongs to the closed loop (cloud side);
``cli.py`` only calls :func:`add_loop_commands`. Everything heavy (pyarrow,
TensorFlow, the registry) is imported when the command runs.

Two ways:
- ``--request``: publish ``{"model": NAME}`` on the running bridge's command
  topic; the bridge retrains in its worker, gates, registers and deploys, and
  writes every step as an event (the usual way in production);
- otherwise this process does the same itself, with the sample store, the
  registry, the signing key and InfluxDB taken from the bridge config (``-c``):
  retrain, gate, register, and (unless ``--no-deploy``) deploy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def cmd_model_retrain(args: argparse.Namespace) -> int:
    from edgeloop.bridge.config import load_bridge_config

    overrides: dict = {}
    if args.broker:
        overrides["mqtt"] = {"url": args.broker}
    cfg = load_bridge_config(args.config, overrides)
    if args.request:
        from edgeloop.bridge.loop import publish_retrain_request

        publish_retrain_request(cfg.mqtt.url, args.name, args.since_s, cfg.retrain.command_topic)
        print(f"asked the bridge at {cfg.mqtt.url} to retrain {args.name} (topic {cfg.retrain.command_topic})")
        return 0

    from edgeloop.bridge.events import EventWriter
    from edgeloop.bridge.registry import Registry
    from edgeloop.bridge.sinks import make_sink
    from edgeloop.bridge.training.retrain import RetrainJob, retrain
    from edgeloop.modelfile import load_model_files

    settings = cfg.retrain
    registry_dir = args.registry or settings.registry
    store_dir = args.samples or cfg.samples.dir
    events = EventWriter(make_sink(cfg) if args.config else None, cfg.influx.tags)
    since = time.time() - args.since_s if args.since_s else None
    events(args.name, "retrain", "retrain requested (cli)", None, trigger="cli")
    with tempfile.TemporaryDirectory(prefix="edgeloop-retrain-") as tmp:
        job = RetrainJob(model=args.name, store_dir=store_dir, registry_dir=registry_dir, out_dir=Path(tmp),
                         since=since, trigger="cli", settings=settings)
        result = retrain(job)
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        if not result.passed:
            events(args.name, "refused", result.reason, result.version, trigger="cli", **result.metrics)
            return 1
        events(args.name, "retrain", f"candidate {result.version} from {result.parent} (cli): {result.reason}",
               result.version, trigger="cli", **result.metrics)
        registry = Registry(registry_dir)
        content, meta = load_model_files(result.candidate)
        registry.add(args.name, content, meta, parent=result.parent, actor="retrain:cli")
    if args.no_deploy or not settings.signing_key_file:
        print(f"registered {args.name} {result.version} (not deployed: "
              f"{'--no-deploy' if args.no_deploy else 'no retrain.signing_key_file'}); "
              f"`edgeloop model promote {args.name} {result.version} --deploy` rolls it out")
        return 0
    from edgeloop.bridge.deployer import Deployer
    from edgeloop.signing import SigningKey

    deployer = Deployer.connect(cfg.mqtt.model_copy(update={"client_id": "edgeloop-cli-deployer"}), registry,
                                SigningKey.load(settings.signing_key_file), client_id="edgeloop-cli-deployer",
                                chunk_size=settings.chunk_size, canary_timeout_s=settings.canary_timeout_s,
                                rollout_timeout_s=settings.rollout_timeout_s, events=events)
    try:
        time.sleep(args.discover_s)  # retained node statuses arrive
        report = deployer.deploy(args.name, result.version, settings.targets, settings.canary or None)
    finally:
        deployer.close()
    print(json.dumps(report.as_dict(), indent=2, default=str))
    return 0 if report.outcome == "deployed" else 1


def add_loop_commands(model: argparse._SubParsersAction) -> None:
    """``model retrain`` under the ``model`` subcommands."""
    p = model.add_parser("retrain", help="retrain a model on recent field samples (gate, register, deploy)")
    p.add_argument("name")
    p.add_argument("-c", "--config", help="bridge.yaml: sample store, registry, signing key, gate, InfluxDB")
    p.add_argument("--request", action="store_true", help="ask the running bridge to do it (MQTT command)")
    p.add_argument("--broker", help="MQTT broker URL (default: mqtt.url of -c)")
    p.add_argument("--since-s", type=float, help="train on samples of the last N seconds (default retrain.lookback_s)")
    p.add_argument("--registry", type=Path, help="registry directory (default retrain.registry of -c)")
    p.add_argument("--samples", type=Path, help="sample store directory (default samples.dir of -c)")
    p.add_argument("--no-deploy", action="store_true", help="register the candidate, do not roll it out")
    p.add_argument("--discover-s", type=float, default=2.0, help="seconds to collect node statuses before deploying")
    p.set_defaults(func=cmd_model_retrain)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: edgeloop model retrain NAME")
