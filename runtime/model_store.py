"""The deployed and the previous model on disk (``deploy.state_dir``), so a restarted edge comes back on them.

Layout: ``{state_dir}/{model}/current/{model}.tflite + .json`` and the same
under ``previous/``. A model is written only once it has passed probation;
the new ``current`` is staged in a temporary directory and renamed into
place, so a crash never leaves a half-written ``current``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from edgeloop.errors import ModelError
from edgeloop.edge.config import EdgeConfig
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ModelMetadata, load_model_files, write_model_files
from edgeloop.edge.stages import PipelineError

log = logging.getLogger("edgeloop.deploy")


def keep(state_dir: Path, content: bytes, metadata: ModelMetadata, deploy_id: str, previous: TfliteModel) -> None:
    """``current`` <- the new model; the old ``current`` (or, the first time, the model it replaced) -> ``previous``."""
    root = Path(state_dir) / metadata.name
    root.mkdir(parents=True, exist_ok=True)
    current, prev = root / "current", root / "previous"
    staged = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
    write_model_files(staged, content, metadata)
    (staged / "manifest.json").write_text(json.dumps({"deploy_id": deploy_id}) + "\n")
    if current.exists():
        shutil.rmtree(prev, ignore_errors=True)
        current.rename(prev)
    elif previous.path.is_file():
        old_content, old_meta = load_model_files(previous.path)
        shutil.rmtree(prev, ignore_errors=True)
        write_model_files(prev, old_content, old_meta)
    staged.rename(current)


def restore(state_dir: Path, cfg: EdgeConfig, engine: Engine) -> dict[str, tuple[str, str]]:
    """Serve the kept model (current, else previous) instead of the configured one; return what now runs.

    A kept model that does not load or does not fit the pipeline is skipped
    with a warning: the edge then serves the next candidate, finally the
    configured model.
    """
    running = {}
    pipelines = {p.sensor: p for p in cfg.pipelines}
    for sensor, runner in list(engine.runners.items()):
        name = runner.model.name
        for slot in ("current", "previous"):
            path = Path(state_dir) / name / slot / f"{name}.tflite"
            if not path.is_file():
                continue
            settings = pipelines[sensor]
            try:
                model = TfliteModel(path, num_threads=settings.model.num_threads, max_batch=cfg.batching.max_batch)
                engine.runners[sensor] = PipelineRunner.build(settings, model)
            except (ModelError, PipelineError) as exc:
                log.warning("cannot serve the kept %s model %s: %s", slot, path, exc)
                continue
            running[name] = (model.version, model.sha256)
            log.info("serving %s %s kept in %s", name, model.version, path.parent)
            break
    return running
