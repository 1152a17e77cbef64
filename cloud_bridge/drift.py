"""The drift monitor: decides, from field samples, when a model no longer fits its fleet.

Input: the random-fraction rows of ``SampleBatch`` messages (flagged rows are
not an unbiased picture of the fleet and are ignored here). Every
``interval_s`` each (model, cohort) is evaluated over the last ``window_s``
(see ``DriftSettings`` for every knob).

Why the trigger compares each device with *its own* baseline: measured on the
simulator, a fleet of 3-8 machines differs from the reference statistics in
the model metadata (48 other machines) about as much as a regime change does
(score PSI 0.1-0.9 before drift, 0.9-6 after), because windows of one machine
are alike and the fleet is a handful of machines. A device's recent windows
against its first windows under the same model version, however, separate
the two cleanly (two-sample KS, ``scipy.stats.ks_2samp``, on the score and on
every raw feature). Requiring that change on a ``fleet_fraction`` of the
cohort's devices is what keeps a single device's burst of faults (a real
fault, not drift) from triggering a retrain, and ``consecutive`` evaluations
in a row is what makes the drift *sustained*.

Why one device cannot steer it (issue 11): the closed loop hands the monitor
only samples of known versions, within each device's row and byte budget
(``edgeloop.bridge.loop``). Every known version in the window is judged, and
``fleet_fraction`` counts devices -- each device once, whatever the number of
its rows or versions -- over every device of the cohort with at least
``min_device_samples`` random windows, so one device is one vote. The version
reported is the one most devices run, not the one with most rows. Baselines
are kept for at most ``_BASELINES_PER_DEVICE`` versions per device and
``max_devices`` (device, version) pairs per cohort, least recently fed
forgotten first, so a device making up versions cannot keep another device's
baseline out. The second way to drift,
*mismatch*, catches a fleet that already ran in a new regime when the model
arrived: more than ``mismatch_rate`` (default half) of its random windows
flagged, on a ``fleet_fraction`` of the devices.

Evidence against the model's metadata reference is computed on every
evaluation and travels with the trigger (Grafana annotation fields): PSI and
one-sample KS of the score against the reference score quantiles, PSI of every
raw feature against the reference feature quantiles, the anomaly rate against
the rate the threshold was set for, and a Page-Hinkley detector (``river``)
on the stream of log-scores (its detections are reported; it does not gate).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeloop.bridge.loopconfig import DriftSettings
from edgeloop.contract import SampleBatch
from edgeloop.modelfile import ModelMetadata

log = logging.getLogger("edgeloop.bridge.drift")

_EPS = 1e-4
_LOG_FLOOR = 1e-3
_MAX_RECENT = 500_000
_BASELINE_MAX = 2000
_BASELINES_PER_DEVICE = 3
_PH_VERSIONS = 16
_MAX_COHORTS = 1024


# --------------------------------------------------------------------------- statistics


def psi(expected: np.ndarray, actual_counts: np.ndarray, eps: float = _EPS) -> float:
    """Population stability index of observed counts against expected bin proportions."""
    total = float(np.sum(actual_counts))
    if total <= 0:
        return 0.0
    a = np.maximum(np.asarray(actual_counts, dtype=np.float64) / total, eps)
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi_against_quantiles(values: np.ndarray, levels: np.ndarray, edges: np.ndarray) -> float:
    """PSI of ``values`` in the bins a reference cuts at ``edges`` (its values at cumulative ``levels``)."""
    expected = np.diff(np.concatenate([[0.0], levels, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected))
    return psi(expected, counts)


def ks_against_quantiles(values: np.ndarray, levels: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """One-sample KS (statistic, p-value) against the piecewise-linear CDF through (edges, levels)."""
    from scipy import stats

    res = stats.kstest(values, lambda x: np.interp(x, edges, levels, left=0.0, right=1.0))
    return float(res.statistic), float(res.pvalue)


def changed(
    base_scores: np.ndarray,
    base_features: np.ndarray,
    scores: np.ndarray,
    features: np.ndarray,
    alpha: float,
    min_effect: float,
    feature_fraction: float,
) -> tuple[bool, float, float]:
    """Whether recent windows of one device differ from its baseline; (changed, score D, features share)."""
    from scipy import stats

    score = stats.ks_2samp(base_scores, scores)
    feats = stats.ks_2samp(base_features, features, axis=0)
    n_feat = max(1, features.shape[1])
    d_feat = np.nan_to_num(np.atleast_1d(feats.statistic))
    p_feat = np.nan_to_num(np.atleast_1d(feats.pvalue), nan=1.0)
    share = float(np.mean((p_feat < alpha / n_feat) & (d_feat >= min_effect)))
    by_score = score.pvalue < alpha and score.statistic >= min_effect
    return bool(by_score or share >= feature_fraction), float(score.statistic), share


# --------------------------------------------------------------------------- state


@dataclass
class Trigger:
    """Sustained drift of one model in one cohort: retrain on samples received since ``since``."""

    model: str
    cohort: str
    version: str
    at: float
    since: float
    message: str
    evidence: dict[str, float]


@dataclass
class Evaluation:
    model: str
    cohort: str
    version: str | None
    at: float
    status: str  # "insufficient", "stable", "drifted"
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class _Baseline:
    """A device's first ``window_s`` of random samples under one version (reservoir of at most
    ``_BASELINE_MAX``): spanning a whole window, it holds the device's slow cycles as well."""

    scores: list[float] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)  # float32 rows: a quarter of a list's memory
    started: float | None = None
    seen: int = 0
    complete_at: float | None = None


@dataclass
class _Cohort:
    recent: deque = field(default_factory=lambda: deque(maxlen=_MAX_RECENT))
    baselines: OrderedDict[tuple[str, str], _Baseline] = field(default_factory=OrderedDict)  # LRU first
    device_versions: dict[str, deque] = field(default_factory=dict)  # device -> its baselined versions
    consecutive: int = 0
    first_drifted: float | None = None
    ph: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    ph_detections: dict[str, int] = field(default_factory=dict)
    last: Evaluation | None = None


ReferenceLookup = Callable[[str, str], ModelMetadata | None]


class DriftMonitor:
    """``observe`` sample batches (any thread), ``evaluate`` periodically (one thread)."""

    def __init__(
        self, settings: DriftSettings, reference_for: ReferenceLookup | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        # Imported now, not on the first batch: importing river and scipy takes seconds (7 s measured
        # on a busy machine), and on the loop thread that stall becomes a backlog of samples.
        import scipy.stats  # noqa: F401 -- changed(), kstest
        from river.drift import PageHinkley

        self._page_hinkley = PageHinkley
        self.settings = settings
        self._reference_for = reference_for or (lambda _m, _v: None)
        self._clock = clock
        self._cohorts: dict[tuple[str, str], _Cohort] = {}
        self._cooldown_until: dict[str, float] = {}
        self._meta_cache: dict[tuple[str, str], ModelMetadata | None] = {}
        self._rng = random.Random(0)
        self.observed = 0
        self.ignored_flagged = 0
        self.ignored_cohorts = 0
        self.baselines_evicted = 0
        self.triggers = 0
        #: (at, model, cohort, status, changed devices, mismatched devices) of recent evaluations.
        self.history: deque[tuple[float, str, str, str, float, float]] = deque(maxlen=5000)

    # ------------------------------------------------------------------ input

    def cohort_of(self, batch: SampleBatch) -> str:
        by = self.settings.cohort_by
        if by == "none":
            return "fleet"
        return (batch.site if by == "site" else batch.node) or "unknown"

    def observe(self, batch: SampleBatch, received: float | None = None) -> None:
        received = self._clock() if received is None else received
        key = (batch.model, self.cohort_of(batch))
        cohort = self._cohorts.get(key)
        if cohort is None:
            if len(self._cohorts) >= _MAX_COHORTS:  # cohort names (site, node) are the publisher's choice
                self.ignored_cohorts += 1
                return
            cohort = self._cohorts[key] = _Cohort()
        base = self._baseline(cohort, batch.device, batch.model_version)
        ph = cohort.ph.get(batch.model_version)
        if ph is None:
            ph = cohort.ph[batch.model_version] = self._page_hinkley(threshold=self.settings.ph_threshold, mode="both")
            if len(cohort.ph) > _PH_VERSIONS:
                cohort.ph.popitem(last=False)
        else:
            cohort.ph.move_to_end(batch.model_version)
        for row in batch.rows:
            if row.reason != "random":
                self.ignored_flagged += 1
                continue
            self.observed += 1
            features = np.asarray(row.features, dtype=np.float32)
            cohort.recent.append((received, batch.device, batch.model_version, row.score, row.anomaly, features))
            if base.complete_at is None:
                self._add_to_baseline(base, row.score, features, received)
            ph.update(math.log(max(row.score, 0.0) + _LOG_FLOOR))
            if ph.drift_detected:
                cohort.ph_detections[batch.model_version] = cohort.ph_detections.get(batch.model_version, 0) + 1

    def _baseline(self, cohort: _Cohort, device: str, version: str) -> _Baseline:
        """The (device, version) baseline, made if new: a device keeps its last few versions' baselines,
        the cohort its ``max_devices`` most recently fed."""
        bkey = (device, version)
        base = cohort.baselines.get(bkey)
        if base is not None:
            cohort.baselines.move_to_end(bkey)
            return base
        versions = cohort.device_versions.setdefault(device, deque())
        if len(versions) >= _BASELINES_PER_DEVICE:
            self._forget(cohort, (device, versions[0]))
        while len(cohort.baselines) >= self.settings.max_devices:
            self._forget(cohort, next(iter(cohort.baselines)))
        versions.append(version)
        base = cohort.baselines[bkey] = _Baseline()
        return base

    def _forget(self, cohort: _Cohort, bkey: tuple[str, str]) -> None:
        cohort.baselines.pop(bkey, None)
        versions = cohort.device_versions.get(bkey[0])
        if versions is not None:
            if bkey[1] in versions:
                versions.remove(bkey[1])
            if not versions:
                del cohort.device_versions[bkey[0]]
        self.baselines_evicted += 1

    def _add_to_baseline(self, base: _Baseline, score: float, features: np.ndarray, received: float) -> None:
        if base.started is None:
            base.started = received
        if received - base.started >= self.settings.window_s and len(base.scores) >= self.settings.baseline_samples:
            base.complete_at = received
            return
        base.seen += 1
        if len(base.scores) < _BASELINE_MAX:
            base.scores.append(score)
            base.features.append(features)
        else:  # reservoir sampling keeps a uniform sample of the whole baseline period
            k = self._rng.randrange(base.seen)
            if k < _BASELINE_MAX:
                base.scores[k], base.features[k] = score, features

    # ------------------------------------------------------------------ control

    def cooldown(self, model: str, seconds: float | None = None, now: float | None = None) -> None:
        """No trigger for ``model`` for ``seconds`` (default ``cooldown_s``) from now."""
        now = self._clock() if now is None else now
        self._cooldown_until[model] = now + (self.settings.cooldown_s if seconds is None else seconds)

    def in_cooldown(self, model: str, now: float | None = None) -> bool:
        return (self._clock() if now is None else now) < self._cooldown_until.get(model, 0.0)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, now: float | None = None) -> list[Trigger]:
        """Evaluate every (model, cohort); return the triggers of sustained drift (cooldown starts)."""
        now = self._clock() if now is None else now
        s = self.settings
        triggers = []
        for (model, cohort_name), cohort in list(self._cohorts.items()):
            horizon = now - s.window_s
            while cohort.recent and cohort.recent[0][0] < horizon:
                cohort.recent.popleft()
            ev = self._evaluate(model, cohort_name, cohort, now)
            cohort.last = ev
            if ev.status == "drifted":
                cohort.consecutive += 1
                cohort.first_drifted = cohort.first_drifted or now
            else:
                cohort.consecutive, cohort.first_drifted = 0, None
            ev.evidence["consecutive"] = float(cohort.consecutive)
            self.history.append((now, model, cohort_name, ev.status, ev.evidence.get("changed_devices", 0.0),
                                 ev.evidence.get("mismatched_devices", 0.0)))
            log.debug("drift evaluation %s/%s at=%.3f: %s (devices %d, compared %d, changed %d, mismatched %d)",
                      model, cohort_name, now, ev.status, ev.evidence.get("devices", 0),
                      ev.evidence.get("compared_devices", 0), ev.evidence.get("changed_devices", 0),
                      ev.evidence.get("mismatched_devices", 0))
            if cohort.consecutive >= s.consecutive and not self.in_cooldown(model, now):
                since = cohort.first_drifted
                trigger = Trigger(
                    model=model,
                    cohort=cohort_name,
                    version=ev.version or "",
                    at=now,
                    since=since,
                    message=(
                        f"sustained drift in cohort {cohort_name}: {ev.evidence['changed_devices']:.0f} of "
                        f"{ev.evidence['devices']:.0f} devices changed, {ev.evidence['mismatched_devices']:.0f} "
                        f"mismatched, for {cohort.consecutive} evaluations"
                    ),
                    evidence=dict(ev.evidence),
                )
                triggers.append(trigger)
                self.triggers += 1
                self.cooldown(model, now=now)
                cohort.consecutive, cohort.first_drifted = 0, None
        return triggers

    def _meta(self, model: str, version: str) -> ModelMetadata | None:
        key = (model, version)
        if key not in self._meta_cache:
            try:
                self._meta_cache[key] = self._reference_for(model, version)
            except Exception as exc:  # noqa: BLE001 -- evidence is optional; the trigger does not need it
                log.warning("no reference for %s %s: %s", model, version, exc)
                self._meta_cache[key] = None
        return self._meta_cache[key]

    def _evaluate(self, model: str, cohort_name: str, cohort: _Cohort, now: float) -> Evaluation:
        """Judge every version in the window; count devices, each once, over the whole cohort."""
        s = self.settings
        by_version: dict[str, dict[str, list[tuple]]] = {}
        for r in cohort.recent:
            by_version.setdefault(r[2], {}).setdefault(r[1], []).append(r)
        if not by_version:
            return Evaluation(model, cohort_name, None, now, "insufficient", {"n": 0.0})
        eligible = {
            v: {d: rs for d, rs in devices.items() if len(rs) >= s.min_device_samples}
            for v, devices in by_version.items()
        }
        # Reported (and used for the reference evidence): the version most devices run, not the one with most rows.
        version = max(by_version, key=lambda v: (len(eligible[v]), sum(map(len, by_version[v].values()))))
        rows = [r for rs in by_version[version].values() for r in rs]
        scores = np.fromiter((r[3] for r in rows), dtype=np.float64, count=len(rows))
        anomalies = np.fromiter((r[4] for r in rows), dtype=bool, count=len(rows))
        devices = {d for devs in eligible.values() for d in devs}
        n_rows = sum(len(rs) for devs in eligible.values() for rs in devs.values())
        evidence: dict[str, float] = {
            "n": float(n_rows),
            "devices": float(len(devices)),
            "versions": float(sum(1 for devs in eligible.values() if devs)),
            "anomaly_rate": float(anomalies.mean()),
            "ph_detections": float(cohort.ph_detections.get(version, 0)),
            "window_s": s.window_s,
        }
        changed_set: set[str] = set()
        compared_set: set[str] = set()
        mismatched_set: set[str] = set()
        horizon = now - s.window_s
        for v, devs in eligible.items():
            for device, drows in devs.items():
                if float(np.mean([r[4] for r in drows])) > s.mismatch_rate:
                    mismatched_set.add(device)
                base = cohort.baselines.get((device, v))
                if base is None or base.complete_at is None or base.complete_at >= horizon:
                    continue  # baseline still forming (or overlapping the window): no change test yet
                compared_set.add(device)
                d_scores = np.fromiter((r[3] for r in drows), dtype=np.float64, count=len(drows))
                is_changed, _, _ = changed(
                    np.asarray(base.scores), np.asarray(base.features, dtype=np.float64), d_scores,
                    np.asarray([r[5] for r in drows], dtype=np.float64), s.alpha, s.min_effect, s.feature_fraction,
                )
                if is_changed:
                    changed_set.add(device)
        n_dev, compared = len(devices), len(compared_set)
        changed_n, mismatched = len(changed_set), len(mismatched_set)
        evidence.update(
            changed_devices=float(changed_n),
            compared_devices=float(compared),
            mismatched_devices=float(mismatched),
            changed_fraction=changed_n / n_dev if n_dev else 0.0,
            mismatched_fraction=mismatched / n_dev if n_dev else 0.0,
        )
        meta = self._meta(model, version)
        if meta is not None:
            evidence.update(self._reference_evidence(meta, scores, [r[5] for r in rows]))
        if n_rows < s.min_samples or n_dev < s.min_devices:
            return Evaluation(model, cohort_name, version, now, "insufficient", evidence)
        drifted = (compared >= s.min_devices and changed_n / n_dev >= s.fleet_fraction) or (
            mismatched / n_dev >= s.fleet_fraction
        )
        return Evaluation(model, cohort_name, version, now, "drifted" if drifted else "stable", evidence)

    @staticmethod
    def _reference_evidence(meta: ModelMetadata, scores: np.ndarray, features: list[list[float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        ref = meta.reference
        if ref is None or len(scores) == 0:
            return out
        if ref.score_quantiles:
            pairs = sorted((float(k), v) for k, v in ref.score_quantiles.items())
            levels = np.array([p for p, _ in pairs])
            edges = np.maximum.accumulate(np.array([v for _, v in pairs]))
            deciles = np.isin(np.round(levels, 6), np.round(np.arange(1, 10) / 10, 6))
            if deciles.sum() >= 3:
                out["score_psi"] = psi_against_quantiles(scores, levels[deciles], edges[deciles])
            else:
                out["score_psi"] = psi_against_quantiles(scores, levels, edges)
            out["score_ks"], out["score_ks_p"] = ks_against_quantiles(scores, levels, edges)
        threshold_q = (meta.training.evaluation.get("threshold_quantile") if meta.training else None) or 0.995
        out["expected_anomaly_rate"] = float(1.0 - threshold_q)
        if ref.feature_quantiles and features and len(features[0]) == len(ref.feature_quantiles):
            levels = np.asarray(ref.quantile_levels)
            feats = np.asarray(features, dtype=np.float64)
            values = [
                psi_against_quantiles(feats[:, j], levels, np.maximum.accumulate(np.asarray(q)))
                for j, q in enumerate(ref.feature_quantiles)
            ]
            out["feature_psi_max"] = float(np.max(values))
            out["feature_psi_median"] = float(np.median(values))
            out["feature_psi_top"] = float(np.argmax(values))
        return out

    # ------------------------------------------------------------------ introspection

    def last_evaluations(self) -> list[Evaluation]:
        return [c.last for c in list(self._cohorts.values()) if c.last is not None]

    def stats(self) -> dict[str, Any]:
        return {
            "observed": self.observed,
            "ignored_flagged": self.ignored_flagged,
            "ignored_cohorts": self.ignored_cohorts,
            "baselines_evicted": self.baselines_evicted,
            "triggers": self.triggers,
            "evaluations": {
                f"{e.model}/{e.cohort}": {"status": e.status, "version": e.version, **e.evidence}
                for e in self.last_evaluations()
            },
        }
