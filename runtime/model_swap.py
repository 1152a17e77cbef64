"""Worker side of a deployment: swap a prepared model in between batches, judge it, roll it back.

Why apart from the model manager: this is the only part that runs on the
inference worker's thread, and it must stay cheap -- a swap flushes the
pending windows with the old model, moves the stream state (window buffers,
last sequence numbers) to the new runner and replaces one dict entry; judging
reads a few counters. Everything slow (verification, loading, self-test)
happened before, on the model manager's thread.

Probation: a swapped-in model is judged once it has scored
``deploy.canary_windows`` windows. It is rolled back (the previous runner is
swapped in the same way) on any invalid output, on a mean result latency over
``max_latency_ms``, or on an anomaly rate over
``max(max_anomaly_rate, anomaly_rate_factor x the previous model's rate over its last ~1000 windows)``.
A second deployment arriving during probation falls back to the last proven
model, never to the unproven one.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeloop.edge.config import DeploySettings
from edgeloop.deploy_contract import ModelManifest
from edgeloop.edge.engine import Engine, PipelineRunner
from edgeloop.edge.inference import TfliteModel

log = logging.getLogger("edgeloop.deploy")

RATE_SNAPSHOT_EVERY = 100  # windows between samples of the running model's anomaly rate
RATE_SNAPSHOTS = 10  # so the "recent rate" spans the last ~1000 windows

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
    baseline_rate: float | None


@dataclass
class _RateTrack:
    runner: PipelineRunner
    snapshots: deque = field(default_factory=lambda: deque(maxlen=RATE_SNAPSHOTS))


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
        self._rates: dict[str, _RateTrack] = {}

    def service(self, engine: Engine, publish: Publish) -> None:
        """Swap in what is prepared, judge what is on probation. Cheap when there is nothing to do."""
        if self.handoff:
            self._swap_in(engine, publish, self.handoff.popleft())
        if self._probation:
            self._judge(engine, publish)
        self._sample_rates(engine)

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
        new.tally.clear()
        engine.runners[sensor] = new
        self.running[new.model.name] = (new.model.version, new.model.sha256)
        return old

    def _swap_in(self, engine: Engine, publish: Publish, prepared: PreparedModel) -> None:
        sensor = prepared.sensor
        baseline = self._recent_rate(sensor, engine.runners[sensor])
        old = self._swap(engine, publish, sensor, prepared.runner)
        on_probation = self._probation.pop(sensor, None)
        previous = on_probation.previous if on_probation else old  # never keep an unproven model as the fallback
        self._probation[sensor] = _Probation(prepared, previous, baseline)
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
            manifest = probation.prepared.manifest
            rate = tally["anomalies"] / windows
            latency_ms = tally["latency_s"] / windows * 1000.0
            bound = max(s.max_anomaly_rate, s.anomaly_rate_factor * (probation.baseline_rate or 0.0))
            problems = []
            if tally["invalid"]:
                problems.append(f"{tally['invalid']} invalid outputs")
            if rate > bound:
                base = "n/a" if probation.baseline_rate is None else f"{probation.baseline_rate:.3f}"
                problems.append(f"anomaly rate {rate:.3f} over {windows} windows > bound {bound:.3f} (previous model {base})")
            if latency_ms > s.max_latency_ms:
                problems.append(f"mean latency {latency_ms:.1f} ms > {s.max_latency_ms:g} ms")
            if problems:
                self._swap(engine, publish, sensor, probation.previous)
                self.counters["rollbacks"] += 1
                detail = "; ".join(problems)
                log.warning("rolled back %s %s to %s: %s", manifest.model, manifest.version,
                            probation.previous.model.version, detail)
                self.report(manifest.model, manifest, "rolled_back", reason="unhealthy", detail=detail, windows=windows)
            else:
                self.counters["deploys_healthy"] += 1
                log.info("%s %s healthy after %d windows (anomaly rate %.3f, mean latency %.1f ms)",
                         manifest.model, manifest.version, windows, rate, latency_ms)
                self.report(manifest.model, manifest, "healthy", windows=windows)
                if self.keep is not None:
                    self.keep(probation.prepared, probation.previous.model)

    def _sample_rates(self, engine: Engine) -> None:
        for sensor, runner in engine.runners.items():
            track = self._rates.get(sensor)
            if track is None or track.runner is not runner:
                track = self._rates[sensor] = _RateTrack(runner)
            windows = runner.tally["windows"]
            if not track.snapshots or windows - track.snapshots[-1][0] >= RATE_SNAPSHOT_EVERY:
                track.snapshots.append((windows, runner.tally["anomalies"]))

    def _recent_rate(self, sensor: str, runner: PipelineRunner) -> float | None:
        """Anomaly rate of ``runner`` over roughly its last 1000 windows (None before any)."""
        track = self._rates.get(sensor)
        w0, a0 = track.snapshots[0] if track is not None and track.runner is runner and track.snapshots else (0, 0)
        windows = runner.tally["windows"] - w0
        return (runner.tally["anomalies"] - a0) / windows if windows > 0 else None
