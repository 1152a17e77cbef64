"""The edge's commands: ``edgeloop edge run``, ``edgeloop model info``, and the ``edge`` config kind.

Registered through the ``edgeloop.commands`` entry point (pyproject.toml);
this module imports argparse and the core only -- the runtime, numpy and the
interpreter are imported when a command runs, after the dispatcher has checked
that the ``edge`` extra (any TFLite interpreter) is installed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgeloop.commands import Commands, broker_flags, mqtt_overrides

NEEDS = ("edge",)


def cmd_edge_run(args: argparse.Namespace) -> int:
    from edgeloop.commands import stop_on_signals
    from edgeloop.edge.app import run_edge
    from edgeloop.edge.config import load_edge_config

    overrides = mqtt_overrides(args)
    if args.node_id:
        overrides["node_id"] = args.node_id
    cfg = load_edge_config(args.config, overrides)
    if args.model:
        pipelines = [p.model_copy(update={"model": p.model.model_copy(update={"path": Path(args.model)})}) for p in cfg.pipelines[:1]]
        cfg = cfg.model_copy(update={"pipelines": pipelines + list(cfg.pipelines[1:])})
    return run_edge(cfg, stop_on_signals(), source=args.config or "defaults")


def cmd_model_info(args: argparse.Namespace) -> int:
    from edgeloop.errors import ModelError
    from edgeloop.edge.modelinfo import describe, summary

    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    elif "bytes" in info:  # a file that could not be read has nothing to summarise
        print("\n".join(summary(info)))
    if info["problems"]:
        raise ModelError("; ".join(info["problems"]))
    return 0


def check_edge_config(path: str) -> Any:
    """``config check`` of an edge file: validate, then load its models and build its pipelines as ``edge run`` does."""
    import logging

    from edgeloop.rejects import Rejects
    from edgeloop.edge.config import load_edge_config
    from edgeloop.edge.startup import prepare

    cfg = load_edge_config(path)
    prepare(cfg, Rejects("edge", logging.getLogger("edgeloop.edge")), source=path)
    return cfg


def edge_schema() -> Any:
    from edgeloop.edge.config import EdgeConfig

    return EdgeConfig


def register(cli: Commands) -> None:
    p = cli.group("edge", help="the on-device runtime").command(
        "run", cmd_edge_run, help="subscribe to sensors, infer, publish results", needs=NEEDS)
    p.add_argument("-c", "--config", help="edge.yaml (optional: defaults run the bundled model)")
    broker_flags(p)
    p.add_argument("--model", help="path to a .tflite (with its .json metadata beside it)")
    p.add_argument("--node-id", help="this runtime's id in status/{node} (default edge-<hostname>)")

    p = cli.group("model").command(
        "info", cmd_model_info, needs=NEEDS,
        help="a model file's summary: version, size, sha256 check, tensors (exit 3 if it cannot be used)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="the full document: metadata, tensors, problems")

    cli.config_kind("edge", schema=edge_schema, check=check_edge_config, needs=NEEDS)
