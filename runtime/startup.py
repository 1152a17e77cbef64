"""What the edge loads before any I/O: every model, and every pipeline built against its model.

Why a module of its own: ``edgeloop edge run`` (``EdgeApp``) and the pre-flight
of ``edgeloop config check`` call the same :func:`prepare`, so a pipeline that
does not fit its model, or a missing model file, fails in the check with the
message and exit code it would fail with at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgeloop.errors import ConfigError
from edgeloop.rejects import Rejects
from edgeloop.edge.config import EdgeConfig
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.sampling import Sampler
from edgeloop.edge.stages import PipelineError
from edgeloop.edge.stages.features import limit_blas_threads
from edgeloop.edge.vision.opencv import require_opencv

if TYPE_CHECKING:
    from edgeloop.edge.vision.engine import VisionEngine


@dataclass
class Prepared:
    engine: Engine
    vision: VisionEngine | None  # None without ``vision:``


def build_engine(cfg: EdgeConfig, rejects: Rejects, source: str = "edge config") -> Engine:
    """The sensor pipelines: each model loaded, each pipeline's stages built against it.

    A model that cannot load raises ModelError; stages that do not fit the
    stream or the model raise ConfigError naming the pipeline and stage.
    """
    limit_blas_threads()  # multi-threaded BLAS costs ~20x CPU on the batch FFT (runtime/stages/features.py)
    runners = []
    for index, settings in enumerate(cfg.pipelines):
        model = TfliteModel(settings.model.path, num_threads=settings.model.num_threads, max_batch=cfg.batching.max_batch)
        try:
            runners.append(PipelineRunner.build(settings, model))
        except PipelineError as exc:
            raise ConfigError(source, [f"pipelines.{index}.{exc}"]) from None
    return Engine(
        runners,
        rejects,
        node_id=cfg.node_id,
        site=cfg.site,
        max_payload_bytes=cfg.input.max_payload_bytes,
        batch_results=cfg.output.batch_results,
        sampler=Sampler(cfg.sampling) if cfg.sampling.enabled else None,
    )


def prepare(cfg: EdgeConfig, rejects: Rejects, source: str = "edge config") -> Prepared:
    """Sensor pipelines and (with ``vision:``) camera pipelines, every model loaded and checked."""
    engine = build_engine(cfg, rejects, source)
    vision = None
    if cfg.vision is not None:
        require_opencv(source)
        from edgeloop.edge.vision.engine import VisionEngine

        vision = VisionEngine.build(cfg.vision, rejects, node_id=cfg.node_id, site=cfg.site, source=source)
    return Prepared(engine, vision)
