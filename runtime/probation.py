"""Probation of a freshly deployed model: the proven model shadow-runs beside it, then the rules judge.

Why a shadow run: an anomaly rate alone cannot tell a good model from a bad
one. A model that never flags (threshold 1e9) looks healthier than any real
one, and a correct model looks "noisy" while the machines really are
faulty. So while a candidate is on probation, every window it scores is also
scored by the model it replaced (the last proven one), on the same windows
through that model's own pipeline, and the candidate is judged *against* it.
The cost is a second inference during probation only (docs/deployment.md).

Why per device and medians: one device (a faulty machine, a broken sensor, a
hostile peer) must not decide a rollout either way. Windows whose raw
features are not finite or absurdly large are *invalid input* (the engine
dead-letters them unscored: ``edgeloop.edge.engine.valid_inputs``) and do not
count for or against the candidate; rates and score shifts are taken per
device, and the rules read the median device (with three or more devices, no
single one moves it).

Rules (each names itself in the rollback detail and counts ``rollbacks_{rule}``):

``invalid_output``  the candidate gave a non-finite result on a window the proven model scored
``latency``         mean result latency > ``max_latency_ms``
``anomaly_rate``    median device's rate > max(``max_anomaly_rate``, ``anomaly_rate_factor`` x the
                    proven model's median-device rate on the same windows)
``blind``           on the median device, windows sit more than ``blind_score_factor`` times further
                    below the candidate's threshold than below the proven model's (median of
                    log(score / threshold), candidate minus proven)
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeloop.edge.config import DeploySettings
from edgeloop.errors import ModelError

if TYPE_CHECKING:
    from edgeloop.edge.engine import PipelineRunner  # the engine does not import this module: no cycle
    from edgeloop.edge.stages import Window

_FLOOR = 1e-12  # scores and thresholds are floored here before the logarithm (threshold 0 is legal)


def log_margin(scores: np.ndarray, threshold: float) -> np.ndarray:
    """log(score / threshold), both floored at 1e-12: how far below (< 0) or above its threshold a window sits."""
    return np.log(np.maximum(scores, _FLOOR)) - math.log(max(threshold, _FLOOR))


@dataclass
class DeviceFigures:
    """One device's windows on probation: flags of both models, candidate-minus-proven log margins."""

    windows: int = 0
    candidate_flags: int = 0
    proven_flags: int = 0
    shifts: list[float] = field(default_factory=list)


class ShadowRun:
    """Scores with the proven runner every window the candidate scored (the engine calls it per batch)."""

    def __init__(self, candidate: PipelineRunner, proven: PipelineRunner, max_windows: int) -> None:
        self.candidate = candidate
        self.proven = proven
        self.max_windows = max_windows  # bounds memory: the judge runs once this many windows were seen
        self.devices: dict[str, DeviceFigures] = {}
        self.invalid_outputs = 0  # candidate non-finite where the proven model was finite
        self.proven_failures = 0  # batches the proven model could not score
        self.seconds = 0.0  # spent here: the cost of probation
        self.windows = 0

    def __call__(self, windows: Sequence[Window], scores: np.ndarray, produced: Sequence[bool]) -> None:
        if self.windows >= self.max_windows:
            return
        started = time.perf_counter()
        proven = self.proven.model
        try:
            features = self.proven.pipeline.transform([w.data for w in windows])
            proven_scores = proven.run(features)[:, proven.score_output].astype(np.float64)
        except (ModelError, ValueError):
            proven_scores = np.full(len(windows), np.nan)
            self.proven_failures += 1
        scores = np.asarray(scores, dtype=np.float64)
        produced_ok = np.asarray(produced, dtype=bool) & np.isfinite(scores)
        proven_ok = np.isfinite(proven_scores)
        self.invalid_outputs += int(np.sum(proven_ok & ~produced_ok))
        with np.errstate(invalid="ignore"):
            shifts = log_margin(scores, self.candidate.model.threshold) - log_margin(proven_scores, proven.threshold)
        threshold, proven_threshold = self.candidate.model.threshold, proven.threshold
        for i, window in enumerate(windows):
            if not produced_ok[i]:
                continue
            device = self.devices.setdefault(window.key[0], DeviceFigures())
            device.windows += 1
            device.candidate_flags += bool(scores[i] > threshold)
            if proven_ok[i]:
                device.proven_flags += bool(proven_scores[i] > proven_threshold)
                device.shifts.append(float(shifts[i]))
        self.windows += len(windows)
        self.seconds += time.perf_counter() - started

    def median_rates(self) -> tuple[float, float]:
        """(candidate, proven) anomaly rate of the median device (0, 0 before any window)."""
        devices = [d for d in self.devices.values() if d.windows]
        if not devices:
            return 0.0, 0.0
        return (float(np.median([d.candidate_flags / d.windows for d in devices])),
                float(np.median([d.proven_flags / d.windows for d in devices])))

    def median_shift(self) -> float | None:
        """Median over devices of each device's median log-margin shift (None before any window)."""
        per_device = [float(np.median(d.shifts)) for d in self.devices.values() if d.shifts]
        return float(np.median(per_device)) if per_device else None


def judge(settings: DeploySettings, tally: Counter, shadow: ShadowRun) -> list[tuple[str, str]]:
    """(rule, detail) of every rule the candidate breaks; empty: healthy."""
    s = settings
    windows = max(tally["windows"], 1)
    problems: list[tuple[str, str]] = []
    if shadow.invalid_outputs:
        problems.append(("invalid_output", f"{shadow.invalid_outputs} invalid outputs on windows the proven model scored"))
    latency_ms = tally["latency_s"] / windows * 1000.0
    if latency_ms > s.max_latency_ms:
        problems.append(("latency", f"mean latency {latency_ms:.1f} ms > {s.max_latency_ms:g} ms"))
    rate, proven_rate = shadow.median_rates()
    bound = max(s.max_anomaly_rate, s.anomaly_rate_factor * proven_rate)
    if rate > bound:
        problems.append(("anomaly_rate", f"anomaly rate {rate:.3f} (median of {len(shadow.devices)} devices) > bound "
                                         f"{bound:.3f} (proven model {proven_rate:.3f} on the same windows)"))
    shift = shadow.median_shift()
    if shift is not None and shift < -math.log(s.blind_score_factor):
        problems.append(("blind", f"windows score {math.exp(-shift):.3g}x further below its threshold than below the "
                                  f"proven model's (median of {len(shadow.devices)} devices; limit "
                                  f"{s.blind_score_factor:g}x): it would not flag what the proven model flags"))
    return problems
