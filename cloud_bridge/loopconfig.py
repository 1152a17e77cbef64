"""Configuration of the closed loop in the bridge: sample store, drift monitor, retraining.

Why a module of its own: ``edgeloop.bridge.config`` imports these models for the
``samples:``, ``drift:`` and ``retrain:`` sections of ``bridge.yaml``, and the
retrain worker process receives them, without importing pyarrow, scipy or
TensorFlow. Pydantic and the standard library only.

Example::

    samples: {enabled: true, dir: /var/lib/edgeloop/samples, retention_days: 14, max_bytes: 2e9}
    drift:   {enabled: true, window_s: 60, interval_s: 10, consecutive: 3, cooldown_s: 1800}
    retrain: {enabled: true, registry: /var/lib/edgeloop/registry, signing_key_file: /etc/edgeloop/deploy.key,
              canary: ["edge-canary-*"]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)

DEFAULT_SAMPLES_DIR = Path("samples")
DEFAULT_REGISTRY_DIR = Path("registry")
RETRAIN_COMMAND_TOPIC = "commands/bridge/retrain"


class SampleStoreSettings(BaseModel):
    """Where and how long the field samples (``samples/+/+``) are kept: Parquet, by model and day.

    What any one device may send is bounded before the store and the drift monitor see it: only
    samples of a known (model, version) (``store.known_versions``), with the feature width of that
    version's model when the registry holds it, and at most ``device_budget_rows`` rows and
    ``device_budget_bytes`` payload bytes per ``device_budget_period_s`` (a token bucket per device).
    The rest is dead-lettered (``unknown_model_version``, ``feature_width``, ``device_budget``).
    """

    model_config = _STRICT

    enabled: bool = False
    dir: Path = DEFAULT_SAMPLES_DIR
    flush_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_rows_per_file: Annotated[int, Field(ge=1, le=10_000_000)] = 50_000
    max_buffered_rows: Annotated[int, Field(ge=1, le=10_000_000)] = 200_000
    retention_days: Annotated[float, Field(gt=0, le=3650)] = 14.0
    max_bytes: Annotated[int, Field(ge=1024 * 1024)] = 2 * 1024**3
    device_budget_rows: Annotated[int, Field(ge=1, le=100_000_000)] = 4000
    device_budget_bytes: Annotated[int, Field(ge=1024, le=64 * 1024**3)] = 4 * 1024**2
    device_budget_period_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0


class DriftSettings(BaseModel):
    """When a model's field data has drifted enough, for long enough, across enough of the fleet.

    Every ``interval_s`` each (model, cohort) is evaluated over the random
    samples of the last ``window_s`` from the version most of them came from.
    A device has *changed* when its recent samples differ from its own
    baseline (its first ``window_s`` of samples under that version, at least
    ``baseline_samples`` of them): two-sample
    KS with p < ``alpha`` and D >= ``min_effect`` on the score, or on at least
    ``feature_fraction`` of the features (Bonferroni-corrected). A device is
    *mismatched* when more than ``mismatch_rate`` of its random windows are
    flagged (the default, half, is a model that does not fit that machine at
    all: ordinary faults flag a few percent, and a single broken machine is one
    device). An evaluation is drifted when at least ``fleet_fraction`` of the
    cohort's devices changed, or are mismatched. ``consecutive`` drifted
    evaluations in a row trigger a retrain, unless the model is in its
    ``cooldown_s`` after the previous trigger.
    """

    model_config = _STRICT

    enabled: bool = False
    cohort_by: Literal["none", "site", "node"] = "none"
    window_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    interval_s: Annotated[float, Field(gt=0, le=86_400)] = 10.0
    consecutive: Annotated[int, Field(ge=1, le=1000)] = 3
    min_samples: Annotated[int, Field(ge=1)] = 100
    min_device_samples: Annotated[int, Field(ge=5)] = 20
    min_devices: Annotated[int, Field(ge=1)] = 1
    baseline_samples: Annotated[int, Field(ge=5, le=100_000)] = 100
    fleet_fraction: Annotated[float, Field(gt=0, le=1)] = 0.6
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.01
    min_effect: Annotated[float, Field(gt=0, le=1)] = 0.3
    feature_fraction: Annotated[float, Field(gt=0, le=1)] = 0.2
    mismatch_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    cooldown_s: Annotated[float, Field(ge=0)] = 1800.0
    ph_threshold: Annotated[float, Field(gt=0)] = 25.0
    max_devices: Annotated[int, Field(ge=1)] = 10_000

    @model_validator(mode="after")
    def _window(self) -> DriftSettings:
        if self.interval_s > self.window_s:
            raise ValueError("interval_s must be <= window_s (evaluations would skip samples)")
        return self


class RetrainSettings(BaseModel):
    """How a retrain is done, gated and rolled out.

    Gate (all must hold, else the candidate is refused and nothing is deployed):
    at least ``min_train_samples`` usable field windows; false-positive rate on
    the held-out test split <= ``max_fpr`` and <= the deployed model's rate on
    the same windows + ``fpr_tolerance``; recall on the known anomalies (field
    windows the deployed model scored far out of line for their device, and
    scored at least ``known_anomaly_factor`` times its threshold) >= ``min_recall``
    when there are at least ``min_known_anomalies``. The factor keeps windows the
    old model flagged only because the regime drifted (scores just above its
    threshold) out of the set: the new model is right not to flag those. And the
    threshold <= ``max_threshold_ratio`` x the typical device's own threshold on
    its held-out rows (devices with >= ``min_device_rows``), so one device
    flooding the samples with noise cannot make the candidate blind.
    """

    model_config = _STRICT

    enabled: bool = False
    registry: Path = DEFAULT_REGISTRY_DIR
    signing_key_file: Path | None = Field(default=None, description="Ed25519 private key (PEM) for manifests")
    deploy: bool = Field(default=True, description="deploy a candidate that passed the gate")
    targets: list[str] = Field(default_factory=lambda: ["*"])
    canary: list[str] = Field(default_factory=list, description="node ids or globs deployed first")
    command_topic: str = RETRAIN_COMMAND_TOPIC
    schedule_s: Annotated[float, Field(gt=0)] | None = Field(default=None, description="also retrain every N s")
    lookback_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    min_train_samples: Annotated[int, Field(ge=20)] = 600
    wait_for_samples_s: Annotated[float, Field(ge=0)] = 600.0
    max_train_samples: Annotated[int, Field(ge=100)] = 50_000
    max_device_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.25, description="no device contributes more than this share of the training rows (nor more "
        "than the second-largest contributor; its most recent rows are kept)",
    )
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 80
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    threshold_quantile: Annotated[float, Field(gt=0.5, lt=1)] = 0.995
    outlier_mad: Annotated[float, Field(gt=0)] = 3.0
    max_fpr: Annotated[float, Field(ge=0, le=1)] = 0.02
    fpr_tolerance: Annotated[float, Field(ge=0, le=1)] = 0.005
    min_recall: Annotated[float, Field(ge=0, le=1)] = 0.8
    min_known_anomalies: Annotated[int, Field(ge=1)] = 10
    known_anomaly_factor: Annotated[float, Field(ge=1, le=1000)] = Field(
        default=5.0, description="a known anomaly scored >= this many times the deployed model's threshold"
    )
    max_threshold_ratio: Annotated[float, Field(ge=1, le=1e6)] = Field(
        default=10.0, description="refuse a threshold more than this many times the typical device's own"
    )
    min_device_rows: Annotated[int, Field(ge=5)] = Field(
        default=20, description="held-out rows a device needs to count towards the typical device's threshold"
    )
    quantize: Literal["none", "int8"] = "none"
    seed: int = 0
    timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    canary_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    rollout_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    chunk_size: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)] = 64 * 1024

    @model_validator(mode="after")
    def _deploy_needs_key(self) -> RetrainSettings:
        if self.enabled and self.deploy and self.signing_key_file is None:
            raise ValueError("retrain.deploy needs signing_key_file (edgeloop keys generate)")
        if self.min_train_samples > self.max_train_samples:
            raise ValueError("min_train_samples must be <= max_train_samples")
        return self
