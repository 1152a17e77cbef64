"""Which windows the edge sends home for retraining, within a bandwidth budget.

Why on the edge: the cloud cannot retrain on what it never sees, and raw
sensor streams are far too big for a metered link. The edge already has each
window's features (the batch-stage output before ``normalize``), its score and
its verdict, so it keeps

- a seeded random ``fraction`` of all windows (``reason="random"``), drawn
  whatever the model said: an unbiased picture of what the fleet looks like
  now -- the drift monitor compares it with the reference and the trainer
  learns "normal" from it;
- every other flagged window (``reason="flagged"``, if ``flagged``): the
  rare cases worth looking at;

and never more than ``budget_per_hour_per_device`` rows per device in any
rolling hour (a sliding log of send times: a hard cap, not an average).
Flagged rows may use at most ``flagged_share`` of that budget, so a device
stuck in a fault cannot starve the random sample the trainer depends on.
Rows over budget are dropped and counted (``samples_dropped_budget``).
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgeloop.contract import MAX_SAMPLE_ROWS, SampleBatch, SampleRow, sample_topic

HOUR_S = 3600.0


class SamplingSettings(BaseModel):
    """``sampling:`` in edge.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    fraction: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.01, description="probability that a window is kept as a random sample"
    )
    flagged: bool = Field(default=True, description="also keep every window the model flagged")
    budget_per_hour_per_device: Annotated[int, Field(ge=0, le=10_000_000)] = 2000
    flagged_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.5, description="at most this share of the hourly budget may go to flagged windows"
    )
    seed: int | None = Field(default=None, description="seed of the random choice (None: different per run)")
    max_devices: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000


class _Log:
    """Send times of one device in the last hour (all rows, and flagged rows)."""

    __slots__ = ("all", "flagged")

    def __init__(self) -> None:
        self.all: deque[float] = deque()
        self.flagged: deque[float] = deque()


class Sampler:
    """Decides per window; ``batches()`` turns the kept rows of one flush into SampleBatch messages."""

    def __init__(self, settings: SamplingSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._rng = random.Random(settings.seed)
        self._logs: dict[str, _Log] = {}
        self.counters: Counter[str] = Counter()
        self._flagged_cap = int(settings.budget_per_hour_per_device * settings.flagged_share)

    def _log_for(self, device: str, now: float) -> _Log:
        log = self._logs.get(device)
        if log is None:
            if len(self._logs) >= self.settings.max_devices:
                # Forget devices with nothing sent in the last hour; a bounded dict either way.
                self._logs = {d: lg for d, lg in self._logs.items() if lg.all and lg.all[-1] > now - HOUR_S}
                if len(self._logs) >= self.settings.max_devices:
                    self._logs.clear()
            log = self._logs[device] = _Log()
        return log

    def choose(self, device: str, anomaly: bool) -> str | None:
        """``"flagged"``, ``"random"`` or None (not kept) for one window of ``device``."""
        s = self.settings
        # The random draw comes first and ignores the verdict: the random rows must stay an
        # unbiased picture of the fleet even when the model flags most windows (a drifted regime).
        if s.fraction > 0 and self._rng.random() < s.fraction:
            reason = "random"
        elif anomaly and s.flagged:
            reason = "flagged"
        else:
            return None
        now = self._clock()
        log = self._log_for(device, now)
        horizon = now - HOUR_S
        for q in (log.all, log.flagged):
            while q and q[0] <= horizon:
                q.popleft()
        if len(log.all) >= s.budget_per_hour_per_device or (
            reason == "flagged" and len(log.flagged) >= self._flagged_cap
        ):
            self.counters["samples_dropped_budget"] += 1
            return None
        log.all.append(now)
        if reason == "flagged":
            log.flagged.append(now)
        self.counters[f"samples_{reason}"] += 1
        return reason

    def sent_last_hour(self, device: str) -> int:
        log = self._logs.get(device)
        if log is None:
            return 0
        horizon = self._clock() - HOUR_S
        return sum(1 for t in log.all if t > horizon)


def encode_batches(
    rows: Sequence[tuple[str, str, SampleRow]],
    *,
    model: str,
    model_version: str,
    model_sha256: str,
    node: str | None,
    site: str | None,
) -> list[tuple[str, bytes]]:
    """Group kept rows ``(device, sensor, row)`` into one SampleBatch message per device (and sensor)."""
    grouped: dict[tuple[str, str], list[SampleRow]] = {}
    for device, sensor, row in rows:
        grouped.setdefault((device, sensor), []).append(row)
    out = []
    for (device, sensor), group in grouped.items():
        for lo in range(0, len(group), MAX_SAMPLE_ROWS):
            batch = SampleBatch(
                device=device,
                sensor=sensor,
                model=model,
                model_version=model_version,
                model_sha256=model_sha256,
                node=node,
                site=site,
                rows=group[lo : lo + MAX_SAMPLE_ROWS],
            )
            out.append((sample_topic(device, model), batch.model_dump_json(exclude_none=True).encode()))
    return out
