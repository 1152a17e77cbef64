"""Per-reading stages: ``(n_samples, C) -> (n_samples, C')`` before windowing."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def _per_channel(value: float | list[float], channels: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        return np.full(channels, arr, dtype=np.float32)
    if arr.shape != (channels,):
        raise ValueError(f"{what} has {arr.shape[0]} values but the stream has {channels} channels")
    return arr


class SelectConfig(BaseModel):
    """Keep these channels, in this order."""

    model_config = _FROZEN
    type: Literal["select"] = "select"
    channels: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=64)]

    def build(self, in_channels: int) -> "Select":
        bad = [c for c in self.channels if c >= in_channels]
        if bad:
            raise ValueError(f"select: channels {bad} do not exist (the stream has {in_channels})")
        return Select(self.channels, in_channels)


class Select:
    def __init__(self, channels: list[int], in_channels: int | None = None) -> None:
        self.channels = np.asarray(channels, dtype=np.intp)
        self.out_channels = len(channels)
        # Selecting every channel in order (the bundled pipeline) is a no-op: skip the per-reading copy.
        self.identity = in_channels is not None and list(channels) == list(range(in_channels))

    def apply(self, samples: np.ndarray) -> np.ndarray:
        return samples if self.identity else samples[:, self.channels]


class ScaleConfig(BaseModel):
    """``y = (x - offset) * factor``: unit conversion (e.g. raw ADC counts to g)."""

    model_config = _FROZEN
    type: Literal["scale"] = "scale"
    offset: float | list[float] = 0.0
    factor: float | list[float] = 1.0

    def build(self, in_channels: int) -> "Affine":
        offset = _per_channel(self.offset, in_channels, "scale.offset")
        factor = _per_channel(self.factor, in_channels, "scale.factor")
        return Affine(offset, factor)


class StandardizeConfig(BaseModel):
    """``y = (x - mean) / std`` per channel, with statistics stored in the config."""

    model_config = _FROZEN
    type: Literal["standardize"] = "standardize"
    mean: float | list[float]
    std: float | list[float]

    @model_validator(mode="after")
    def _positive_std(self) -> "StandardizeConfig":
        std = self.std if isinstance(self.std, list) else [self.std]
        if any(s <= 0 for s in std):
            raise ValueError("std values must be > 0")
        return self

    def build(self, in_channels: int) -> "Affine":
        mean = _per_channel(self.mean, in_channels, "standardize.mean")
        std = _per_channel(self.std, in_channels, "standardize.std")
        return Affine(mean, 1.0 / std)


class Affine:
    """The shared arithmetic of scale and standardize."""

    def __init__(self, offset: np.ndarray, factor: np.ndarray) -> None:
        self.offset = offset.astype(np.float32)
        self.factor = factor.astype(np.float32)
        self.out_channels = len(offset)

    def apply(self, samples: np.ndarray) -> np.ndarray:
        return (samples - self.offset) * self.factor
