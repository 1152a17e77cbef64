"""Retrain a deployed anomaly model on recent field samples, and gate the candidate.

Why it looks like this:

- **Data**: the random-fraction rows of the sample store (``reason=random``)
  received since the drift began (or the last ``lookback_s``): an unbiased
  picture of the fleet now. Flagged rows are never training data.
- **Not learning faults as normal**: faults are rare, short and far out of
  line *for their machine*, while a regime change moves a machine's whole
  distribution. So a row is dropped when the deployed (parent) model's
  log-score is more than ``outlier_mad`` robust standard deviations (MAD)
  above that device's median; after a first fit, the same cut is applied with
  the new model's scores, and the final model is fitted on what is left
  (measured on the simulator: this removes ~95% of fault windows and no drift).
- **No device dominates** (issue 11): each device contributes at most its
  most recent ``per_device_cap`` rows -- no more than the second-largest
  contributor, and no more than ``max_device_share`` of the set where the fleet
  has enough devices for that share -- so one device flooding the sample store
  cannot become most of a model that is then signed and deployed.
- **Splits**: rows are shuffled (seeded) into train 60% / calibration 20% /
  test 20%. The threshold is the ``threshold_quantile`` of calibration scores
  (split-conformal: the ceil((n+1) q)-th smallest, never interpolated down);
  figures are measured on the test split, through the converted ``.tflite``
  with the edge's interpreter -- what the edge will run.
- **Gate** (see ``RetrainSettings``): enough samples; false-positive rate on
  the test split <= ``max_fpr`` and <= the parent's rate on the same rows +
  ``fpr_tolerance``; recall on *known anomalies* (rows the parent-based
  outlier cut removed that the parent scored at least ``known_anomaly_factor``
  times its threshold) >= ``min_recall`` when there are at least
  ``min_known_anomalies`` of them; the threshold <= ``max_threshold_ratio``
  times the typical device's own (the median over devices of each device's
  conformal threshold on its held-out rows), so a device that floods the
  samples with noise cannot raise the threshold until the fleet's faults go
  unflagged (a poisoned candidate). A refused candidate is reported, never
  registered.

The model family, normalisation, conversion (float, or int8 post-training
quantization with a representative dataset) and reference statistics come
from ``edgeloop.bridge.training.autoencoder``. TensorFlow is imported only inside
:func:`retrain` (the ``train`` extra), which runs in a worker process:
``python -m edgeloop.bridge.training.retrain --job job.json --result result.json``
(:func:`start_worker`), so the bridge never blocks on it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeloop.bridge.loopconfig import RetrainSettings, SampleStoreSettings
from edgeloop.modelfile import ModelMetadata, Normalization, TrainingInfo, write_model_files

log = logging.getLogger("cloud_bridge.retrain")

_LOG_FLOOR = 1e-3
_MAD_SCALE = 1.4826


class RetrainJob(BaseModel):
    """Everything the worker process needs (it gets this as JSON)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    store_dir: Path
    registry_dir: Path
    out_dir: Path
    parent: str | None = None
    since: float | None = None
    until: float | None = None
    trigger: str = "cli"
    settings: RetrainSettings = RetrainSettings()


class RetrainResult(BaseModel):
    """What the worker reports. ``passed``: the gate passed and ``candidate`` holds the files."""

    model_config = ConfigDict(extra="forbid")

    model: str
    parent: str | None = None
    version: str | None = None
    passed: bool = False
    reason: str = ""
    candidate: Path | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict)
    since: float | None = None
    until: float | None = None
    duration_s: float = 0.0


def new_version(parent: str, existing: list[str], now: float | None = None) -> str:
    """``{parent base}-r{UTC yyyymmddHHMMSS}`` (a valid topic level), unique among ``existing``."""
    base = parent.split("-r")[0][:40]
    stamp = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    version, n = f"{base}-r{stamp}", 2
    while version in existing:
        version, n = f"{base}-r{stamp}-{n}", n + 1
    return version


def robust_keep(scores: np.ndarray, groups: np.ndarray, k: float) -> np.ndarray:
    """Per group: keep log-scores <= median + k * 1.4826 * MAD (rows far above their device's typical)."""
    logs = np.log(np.maximum(scores, 0.0) + _LOG_FLOOR)
    keep = np.ones(len(scores), dtype=bool)
    for g in np.unique(groups):
        i = groups == g
        med = np.median(logs[i])
        mad = np.median(np.abs(logs[i] - med))
        keep[i] = logs[i] <= med + k * _MAD_SCALE * max(mad, 1e-6)
    return keep


def per_device_cap(counts: np.ndarray, share: float) -> int | None:
    """The most rows one device may give: <= the second-largest count, and the largest c with
    c <= share * sum(min(n, c)) when such a c >= 1 exists (a fleet of fewer than 1/share devices has
    none). None: no cap (one device is the whole fleet)."""
    counts = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    if len(counts) < 2:
        return None
    cap = int(counts[1])

    def fits(c: int) -> bool:
        return c <= share * np.minimum(counts, c).sum()

    if fits(1):  # fits() holds on [0, c*] (concave), so bisect for c*
        lo, hi = 1, max(1, int(counts[0]))
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        cap = min(cap, lo)
    return max(1, cap)


def cap_per_device(devices: np.ndarray, share: float) -> np.ndarray:
    """Mask keeping each device's most recent rows up to :func:`per_device_cap` (rows oldest first)."""
    keep = np.ones(len(devices), dtype=bool)
    names, inverse, counts = np.unique(devices, return_inverse=True, return_counts=True)
    cap = per_device_cap(counts, share)
    if cap is None:
        return keep
    for i in np.flatnonzero(counts > cap):
        rows = np.flatnonzero(inverse == i)
        keep[rows[: len(rows) - cap]] = False
    return keep


def conformal_threshold(scores: np.ndarray, quantile: float) -> float:
    """The ceil((n+1) q)-th smallest calibration score (the largest if that is past n).

    Unlike an interpolated quantile, this keeps the expected false-positive
    rate on new normal windows at or below 1 - q however small the
    calibration split is (split-conformal argument).
    """
    ordered = np.sort(scores)
    k = int(np.ceil((len(ordered) + 1) * quantile))
    return float(ordered[min(k, len(ordered)) - 1])


def typical_device_threshold(scores: np.ndarray, devices: np.ndarray, held_out: np.ndarray, quantile: float,
                             min_rows: int) -> float | None:
    """The median over devices (with >= ``min_rows`` held-out rows) of each device's own conformal
    threshold on its held-out rows; None with fewer than two such devices.

    The pooled threshold should sit near it: when one device's rows fill the top of the pooled
    calibration scores (a noisy or injecting device), the pooled threshold is far above the typical
    device's, and the candidate would not flag the typical device's faults.
    """
    own = [conformal_threshold(scores[held_out & (devices == d)], quantile)
           for d in np.unique(devices[held_out]) if np.sum(held_out & (devices == d)) >= min_rows]
    return float(np.median(own)) if len(own) >= 2 else None


def judge_candidate(metrics: dict[str, float], s: RetrainSettings) -> tuple[dict[str, Any], list[str]]:
    """The gate: ``{rule: True | False | "skipped: why"}`` and the reason of every rule that refused."""
    fpr, parent_fpr = metrics["false_positive_rate_test"], metrics["parent_false_positive_rate_test"]
    recall, typical = metrics["recall_known_anomalies"], metrics["typical_device_threshold"]
    gate: dict[str, Any] = {
        "max_fpr": fpr <= s.max_fpr,
        "not_worse_than_parent": fpr <= parent_fpr + s.fpr_tolerance,
        "recall": (
            recall >= s.min_recall if metrics["known_anomalies"] >= s.min_known_anomalies
            else "skipped: fewer than min_known_anomalies"
        ),
        "typical_device": (
            metrics["threshold"] <= s.max_threshold_ratio * typical if np.isfinite(typical)
            else "skipped: fewer than two devices with min_device_rows held-out rows"
        ),
    }
    reasons = {
        "max_fpr": f"FPR {fpr:.3%} > {s.max_fpr:.3%}",
        "not_worse_than_parent": f"FPR {fpr:.3%} > parent's {parent_fpr:.3%} + {s.fpr_tolerance:.3%}",
        "recall": f"recall on known anomalies {recall:.1%} < {s.min_recall:.0%}",
        "typical_device": (
            f"threshold {metrics['threshold']:.4g} > {s.max_threshold_ratio:g} x the typical device's own "
            f"{s.threshold_quantile:.1%} score ({typical:.4g}): a minority of devices set it, the typical "
            f"device's faults would go unflagged (a noisy or poisoning device?)"
        ),
    }
    return gate, [reasons[k] for k, v in gate.items() if v is False]


def _parent_scores(content: bytes, meta: ModelMetadata, raw: np.ndarray) -> np.ndarray:
    from edgeloop.bridge.training.autoencoder import normalize
    from edgeloop.edge.inference import TfliteModel

    with tempfile.TemporaryDirectory() as tmp:
        model = TfliteModel(write_model_files(tmp, content, meta))
        x = normalize(raw, model.normalization) if model.normalization else raw.astype(np.float32)
        return model.run(x)[:, model.score_output].astype(np.float64)


def retrain(job: RetrainJob) -> RetrainResult:
    """Train, convert, evaluate and gate one candidate; write it to ``job.out_dir`` if it passes."""
    from edgeloop.bridge.registry import Registry
    from edgeloop.bridge.samples import SampleStore
    from edgeloop.bridge.training import autoencoder as ae

    s = job.settings
    started = time.perf_counter()
    result = RetrainResult(model=job.model)
    registry = Registry(job.registry_dir)
    parent = job.parent or registry.current(job.model)
    result.parent = parent
    if parent is None:
        result.reason = f"model {job.model} has no current version in the registry to retrain from"
        return result
    parent_path, parent_meta = registry.get(job.model, parent)
    until = job.until or time.time()
    since = max(job.since or 0.0, until - s.lookback_s)
    result.since, result.until = since, until

    store = SampleStore(SampleStoreSettings(enabled=True, dir=job.store_dir))
    frame = store.read(job.model, since=since, until=until, reasons=("random",))
    width = parent_meta.input.item_shape[0] if len(parent_meta.input.item_shape) == 1 else None
    if len(frame) and frame.features.shape[1] != width:
        result.reason = f"samples have {frame.features.shape[1]} features, {job.model} {parent} takes {width}"
        return result
    capped = cap_per_device(frame.device.astype(str), s.max_device_share)
    result.metrics["rows_over_device_cap"] = float((~capped).sum())
    frame = frame.select(capped)
    if len(frame) > s.max_train_samples:
        frame = frame.select(np.arange(len(frame)) >= len(frame) - s.max_train_samples)
    result.metrics["samples"] = float(len(frame))
    if len(frame) < s.min_train_samples:
        result.reason = f"only {len(frame)} field samples since the drift began (need {s.min_train_samples})"
        return result

    raw = frame.features.astype(np.float32)
    devices = frame.device.astype(str)
    parent_scores = _parent_scores(parent_path.read_bytes(), parent_meta, raw)
    parent_flagged = parent_scores > parent_meta.threshold
    keep = robust_keep(parent_scores, devices, s.outlier_mad)
    # Far out of line for their machine and far above the parent's threshold: the known anomalies.
    # (Drifted windows the parent flags sit just above its threshold; they are not faults.)
    known = ~keep & (parent_scores > s.known_anomaly_factor * parent_meta.threshold)

    order = np.random.default_rng(s.seed).permutation(len(raw))
    split = np.empty(len(raw), dtype=np.int8)  # 0 train, 1 calibration, 2 test
    n_train, n_fit = int(0.6 * len(raw)), int(0.8 * len(raw))
    split[order] = np.repeat([0, 1, 2], [n_train, n_fit - n_train, len(raw) - n_fit])

    ae.configure_tensorflow()
    import tensorflow as tf

    def fit(rows: np.ndarray):
        stats = ae.fit_normalization(raw[rows])
        scorer = ae.train_autoencoder(ae.normalize(raw[rows], stats), s.seed, epochs=s.epochs, batch_size=s.batch_size)
        return stats, scorer

    stats, scorer = fit((split == 0) & keep)
    first = np.asarray(scorer.predict(ae.normalize(raw, stats), verbose=0, batch_size=4096))[:, 0]
    keep &= robust_keep(first, devices, s.outlier_mad)
    train_rows = (split == 0) & keep
    stats, scorer = fit(train_rows)
    x = ae.normalize(raw, stats)
    content = ae.to_tflite(scorer, raw.shape[1], representative=x[train_rows] if s.quantize == "int8" else None)
    scores = ae.score_tflite(content, x).astype(np.float64)

    cal, test = (split == 1) & keep, (split == 2) & keep
    threshold = conformal_threshold(scores[cal], s.threshold_quantile)
    metrics = {
        "samples": float(len(raw)),
        "train_samples": float(train_rows.sum()),
        "test_samples": float(test.sum()),
        "devices": float(len(np.unique(devices))),
        "outliers_removed": float((~keep).sum()),
        "threshold": threshold,
        "threshold_quantile": s.threshold_quantile,
        "false_positive_rate_test": float(np.mean(scores[test] > threshold)),
        "parent_false_positive_rate_test": float(np.mean(parent_flagged[test])),
        "known_anomalies": float(known.sum()),
        "recall_known_anomalies": float(np.mean(scores[known] > threshold)) if known.any() else float("nan"),
        "parent_threshold": float(parent_meta.threshold),
    }
    typical = typical_device_threshold(scores, devices, cal | test, s.threshold_quantile, s.min_device_rows)
    metrics["typical_device_threshold"] = float("nan") if typical is None else typical
    gate, refusals = judge_candidate(metrics, s)
    result.metrics = {k: v for k, v in metrics.items() if np.isfinite(v)}
    result.gate = gate
    if refusals:
        result.reason = "gate refused the candidate: " + ", ".join(refusals)
        result.duration_s = time.perf_counter() - started
        return result

    version = new_version(parent, registry.versions(job.model))
    stages = (parent_meta.training.pipeline if parent_meta.training else None) or ae.DEFAULT_VIBRATION_PIPELINE
    window = next((st for st in stages if st.get("type") == "window"), {})
    training = TrainingInfo(
        created=dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        samples=int(train_rows.sum()),
        window={"size": window.get("size"), "hop": window.get("hop")} if window else {},
        seed=s.seed,
        parent=parent,
        pipeline=stages,
        threshold_method=(
            f"{s.threshold_quantile * 100:g}th percentile of the new model's scores on the calibration split "
            f"({int(cal.sum())} field windows)"
        ),
        evaluation=result.metrics,
        duration_s=round(time.perf_counter() - started, 2),
        framework=f"tensorflow {tf.__version__}" + (" (int8 PTQ)" if s.quantize == "int8" else ""),
        data={
            "source": "field samples (reason=random)",
            "since": since,
            "until": until,
            "trigger": job.trigger,
            "devices": sorted(np.unique(devices).tolist())[:100],
            "outlier_mad": s.outlier_mad,
            "epochs": s.epochs,
        },
    )
    meta = ae.make_metadata(
        content, raw.shape[1], threshold, Normalization(**stats), ae.reference_stats(raw[cal], scores[cal]),
        training, name=job.model, version=version, created_by="edgeloop retrain",
    )
    result.candidate = write_model_files(job.out_dir, content, meta)
    result.version, result.passed = version, True
    result.reason = (
        f"gate passed: FPR {metrics['false_positive_rate_test']:.2%} (parent {metrics['parent_false_positive_rate_test']:.2%})"
        f", recall on {metrics['known_anomalies']:.0f} known anomalies {metrics['recall_known_anomalies']:.0%}"
    )
    result.duration_s = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- worker process


def start_worker(job: RetrainJob, workdir: Path, output: Any = None) -> tuple[subprocess.Popen, Path]:
    """Run :func:`retrain` in a new process; returns (process, result file).

    Its output goes to ``output`` (a file object), by default to ``workdir/worker.log``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = workdir / "job.json", workdir / "result.json"
    job_path.write_text(job.model_dump_json(), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    with open(workdir / "worker.log", "ab") if output is None else contextlib.nullcontext(output) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.bridge.training.retrain", "--job", str(job_path), "--result", str(result_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"},
        )
    return proc, result_path


def read_result(result_path: Path, model: str, returncode: int | None) -> RetrainResult:
    try:
        return RetrainResult.model_validate_json(result_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return RetrainResult(model=model, reason=f"retrain worker failed (exit code {returncode}); see worker.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgeloop retrain worker (one job)")
    parser.add_argument("--job", required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    job = RetrainJob.model_validate_json(Path(args.job).read_text(encoding="utf-8"))
    try:
        result = retrain(job)
    except Exception as exc:
        log.exception("retrain of %s failed", job.model)
        result = RetrainResult(model=job.model, reason=f"retrain failed: {type(exc).__name__}: {exc}")
    tmp = Path(args.result + ".tmp")
    tmp.write_text(result.model_dump_json(indent=2), encoding="utf-8")
    os.replace(tmp, args.result)
    log.info("%s: %s", job.model, result.reason)
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
