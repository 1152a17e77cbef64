"""Worker side of a deployment: swap a prepared model in between batches, judge it, roll it back.

Why apart from the model manager: this is the only part that runs on the
inference worker's thread, and it must stay cheap -- a swap flushes the
pending windows with the old model, moves the stream state (window buffers,
last sequence numbers) to the new runner and replaces one dict entry; judging
reads a few counters. Everything slow (verification, loading, self-test)
happened before, on the model manager's thread.

Probation: a swapped-in model is judged once it has scored
``deploy.canary_windows`` valid windows, with the previous (proven) model
shadow-running on the same windows (edgeloop.edge.probation: the rules, and
why). A failed rule swaps the previous runner back in the same way and is
reported as ``rolled_back`` / ``unhealthy`` with the rules named in the detail
(``blind: ...; latency: ...``) and counted as ``rollbacks_{rule}``. A second
deployment arriving during probation falls back to the last proven model,
never to the unproven one.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

from edgeloop.edge.config import DeploySettings
from edgeloop.deploy_contract import ModelManifest
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.probation import ShadowRun, judge

log = logging.getLogger("edgeloop.deploy")

Publish = Callable[[list[tuple[str, bytes]]], None]
#: ``report(model, manifest, state, reason=None, detail=None, windows=None)``
Report = Callable[..., None]
#: ``keep(prepared, previous_model)``: a model passed probation (write it to state_dir)
Keep = Callable[["PreparedModel", TfliteModel], None]


@dataclass
class PreparedModel:
    """A verified, loaded and self-tested model with its pipeline, waiting for the worker."""

    sensor: str
    runner: PipelineRunner
    manifest: ModelManifest
    content: bytes


@dataclass
class _Probation:
    prepared: PreparedModel
    previous: PipelineRunner
    shadow: ShadowRun


class ModelSwapper:
    """``handoff`` receives prepared models (any thread); ``service`` runs on the worker between batches."""

    def __init__(self, settings: DeploySettings, counters: Counter, report: Report, keep: Keep | None,
                 running: dict[str, tuple[str, str]]) -> None:
        self.settings = settings
        self.counters = counters
        self.report = report
        self.keep = keep
        self.running = running  # model -> (version, sha256) now serving; read by the manager thread
        self.handoff: deque[PreparedModel] = deque()
        self._probation: dict[str, _Probation] = {}

    def service(self, engine: Engine, publish: Publish) -> None:
        """Swap in what is prepared, judge what is on probation. Cheap when there is nothing to do."""
        if self.handoff:
            self._swap_in(engine, publish, self.handoff.popleft())
        if self._probation:
            self._judge(engine, publish)

    def _swap(self, engine: Engine, publish: Publish, sensor: str, new: PipelineRunner) -> PipelineRunner:
        """Flush with the old model, carry the stream state over, install ``new``; return the old runner."""
        if engine.pending:
            publish(engine.flush())
        old = engine.runners[sensor]
        src, dst = old.pipeline.windower, new.pipeline.windower
        if src is not None and dst is not None and (src.size, src.hop, src.channels) == (dst.size, dst.hop, dst.channels):
            new.pipeline.windower = src
        new.last_seq = old.last_seq
        new.last_seen = old.last_seen
        new.stream_tags = old.stream_tags
        new.tally.clear()
        old.shadow = None
        engine.runners[sensor] = new
        self.running[new.model.name] = (new.model.version, new.model.sha256)
        return old

    def _swap_in(self, engine: Engine, publish: Publish, prepared: PreparedModel) -> None:
        sensor = prepared.sensor
        old = self._swap(engine, publish, sensor, prepared.runner)
        on_probation = self._probation.pop(sensor, None)
        previous = on_probation.previous if on_probation else old  # never keep an unproven model as the fallback
        shadow = ShadowRun(prepared.runner, previous, self.settings.canary_windows)
        prepared.runner.shadow = shadow
        self._probation[sensor] = _Probation(prepared, previous, shadow)
        self.counters["deploys_swapped"] += 1
        manifest = prepared.manifest
        log.info("now serving %s %s (sha256 %s...) on probation for %d windows", manifest.model,
                 manifest.version, manifest.sha256[:12], self.settings.canary_windows)
        self.report(manifest.model, manifest, "canary", windows=0)

    def _judge(self, engine: Engine, publish: Publish) -> None:
        s = self.settings
        for sensor, probation in list(self._probation.items()):
            runner = engine.runners[sensor]
            tally = runner.tally
            windows = tally["windows"]
            if windows < s.canary_windows:
                continue
            del self._probation[sensor]
            runner.shadow = None
            manifest = probation.prepared.manifest
            shadow = probation.shadow
            self.counters["probation_shadow_windows"] += shadow.windows
            problems = judge(s, tally, shadow)
            if problems:
                self._swap(engine, publish, sensor, probation.previous)
                self.counters["rollbacks"] += 1
                for rule, _ in problems:
                    self.counters[f"rollbacks_{rule}"] += 1
                detail = "; ".join(f"{rule}: {text}" for rule, text in problems)
                log.warning("rolled back %s %s to %s: %s", manifest.model, manifest.version,
                            probation.previous.model.version, detail)
                self.report(manifest.model, manifest, "rolled_back", reason="unhealthy", detail=detail, windows=windows)
            else:
                self.counters["deploys_healthy"] += 1
                rate, proven_rate = shadow.median_rates()
                log.info("%s %s healthy after %d windows (anomaly rate %.3f, proven model %.3f; shadow run %.0f us "
                         "per window)", manifest.model, manifest.version, windows, rate, proven_rate,
                         shadow.seconds / max(shadow.windows, 1) * 1e6)
                self.report(manifest.model, manifest, "healthy", windows=windows)
                if self.keep is not None:
                    self.keep(probation.prepared, probation.previous.model)
