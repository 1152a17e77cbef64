"""Preprocessing stages declared in config (see docs/INTERFACES.md).

One file per stage family: ``sample`` (per reading), ``window`` (stateful, per
stream), ``features`` (vectorised over a micro-batch of windows).
"""

from edgeloop.edge.stages.pipeline import Pipeline, PipelineError, StageConfig, build_pipeline, parse_stages
from edgeloop.edge.stages.window import StreamKey, Window

__all__ = ["Pipeline", "PipelineError", "StageConfig", "StreamKey", "Window", "build_pipeline", "parse_stages"]
