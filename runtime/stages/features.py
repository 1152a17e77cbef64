"""Batch stages after windowing: feature extraction and feature normalisation.

Both work on a whole micro-batch ``(B, ...)`` at once: one numpy call per
batch instead of one per window is where batching pays off on the edge.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(extra="forbid", frozen=True)


def limit_blas_threads() -> None:
    """Keep numpy's BLAS (OpenBLAS) on one thread, process-wide; the edge app calls it at startup.

    Why: the FFT bands of a micro-batch are one small ``(B*C, size) @ (size, 2K)``
    matmul. OpenBLAS spreads it over every core and spin-waits, which on a busy
    2-core box made a batch of 128 windows cost ~60 us of CPU per window instead
    of ~3 us, and took the cores the worker and paho threads need. Uses
    threadpoolctl; without it installed this does nothing.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(limits=1, user_api="blas")


Stat = Literal["mean", "std", "rms", "peak", "crest", "kurtosis"]


class FeaturesConfig(BaseModel):
    """Per-channel statistics and FFT band energies of each window.

    Output layout is channel-major: all features of channel 0, then channel 1...
    """

    model_config = _FROZEN
    type: Literal["features"] = "features"
    stats: Annotated[list[Stat], Field(min_length=0, max_length=6)] = [
        "mean", "std", "rms", "peak", "crest", "kurtosis",
    ]
    fft_bands: Annotated[int, Field(ge=0, le=256)] = 4

    @model_validator(mode="after")
    def _something(self) -> "FeaturesConfig":
        if not self.stats and not self.fft_bands:
            raise ValueError("features needs at least one stat or fft band")
        if len(set(self.stats)) != len(self.stats):
            raise ValueError("stats must not repeat")
        return self

    def build(self, in_shape: tuple[int, ...]) -> "Features":
        if len(in_shape) != 2:
            raise ValueError(f"features needs windows of shape (size, channels), got {in_shape}")
        size, _ = in_shape
        if self.fft_bands and self.fft_bands > size // 2:
            raise ValueError(f"fft_bands={self.fft_bands} exceeds the {size // 2} FFT bins of a {size}-sample window")
        return Features(list(self.stats), self.fft_bands, in_shape)


class Features:
    """Vectorised feature extraction.

    Band energies use a precomputed real DFT matrix restricted to bins
    1..size/2 (the DC bin is excluded, so the mean need not be removed first)
    and a band-summing matrix: two matrix products per batch, which is several
    times faster than ``np.fft.rfft`` on small windows.
    """

    def __init__(self, stats: list[str], fft_bands: int, in_shape: tuple[int, ...]) -> None:
        self.stats = stats
        self.fft_bands = fft_bands
        size, channels = in_shape
        self.size = size
        self.per_channel = len(stats) + fft_bands
        self.out_shape = (channels * self.per_channel,)
        if fft_bands:
            bins = np.arange(1, size // 2 + 1)
            angle = 2 * np.pi * np.outer(np.arange(size), bins) / size  # (size, K)
            self.dft = np.hstack([np.cos(angle), np.sin(angle)]).astype(np.float32)  # (size, 2K)
            k = len(bins)
            band_sum = np.zeros((2 * k, fft_bands), dtype=np.float32)
            for band, members in enumerate(np.array_split(np.arange(k), fft_bands)):
                band_sum[members, band] = 1.0 / size
                band_sum[members + k, band] = 1.0 / size
            self.band_sum = band_sum

    def apply(self, batch: np.ndarray) -> np.ndarray:
        B, size, C = batch.shape
        x = np.ascontiguousarray(batch.transpose(0, 2, 1), dtype=np.float32)  # (B, C, size)
        cols: list[np.ndarray] = []
        wanted = set(self.stats)
        # ufunc.reduce, not ndarray.mean/max: the same arithmetic (a float64 sum, then one division)
        # without numpy's Python-level wrappers, which cost more than the sums on a batch of one window.
        add = np.add.reduce
        mean = add(x, axis=2, dtype=np.float64) / size
        if wanted & {"std", "kurtosis"}:
            centred = x - mean[..., None].astype(np.float32)
            c2 = centred * centred
            var = add(c2, axis=2, dtype=np.float64) / size
        if wanted & {"rms", "crest"}:
            rms = np.sqrt(add(x * x, axis=2, dtype=np.float64) / size)
        if wanted & {"peak", "crest"}:
            peak = np.maximum.reduce(np.abs(x), axis=2).astype(np.float64)
        for stat in self.stats:
            if stat == "mean":
                cols.append(mean)
            elif stat == "std":
                cols.append(np.sqrt(var))
            elif stat == "rms":
                cols.append(rms)
            elif stat == "peak":
                cols.append(peak)
            elif stat == "crest":
                cols.append(peak / np.where(rms > 0, rms, np.inf))  # 0 where rms is 0
            elif stat == "kurtosis":
                m4 = add(c2 * c2, axis=2, dtype=np.float64) / size
                v2 = var * var
                cols.append(m4 / np.where(v2 > 1e-30, v2, np.inf))  # 0 for a flat window
        out = np.empty((B, C, self.per_channel), dtype=np.float32)
        for i, col in enumerate(cols):
            out[:, :, i] = col
        if self.fft_bands:
            coeffs = x.reshape(B * C, size) @ self.dft
            out[:, :, len(cols):] = ((coeffs * coeffs) @ self.band_sum).reshape(B, C, self.fft_bands)
        return out.reshape(B, C * self.per_channel)


class NormalizeConfig(BaseModel):
    """Standardise features: ``(f - mean) / std`` with stored statistics.

    ``from_model: true`` takes them from the model metadata, so the statistics
    always travel with the model they were trained for.
    """

    model_config = _FROZEN
    type: Literal["normalize"] = "normalize"
    from_model: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "NormalizeConfig":
        explicit = self.mean is not None or self.std is not None
        if self.from_model == explicit:
            raise ValueError("give either from_model: true or both mean and std")
        if explicit and (self.mean is None or self.std is None):
            raise ValueError("mean and std must both be given")
        return self

    def build(self, in_shape: tuple[int, ...], model_stats: dict | None) -> "Normalize":
        if self.from_model:
            if not model_stats:
                raise ValueError("normalize.from_model: the model metadata has no normalization statistics")
            mean, std = model_stats["mean"], model_stats["std"]
        else:
            mean, std = self.mean, self.std
        mean_a = np.asarray(mean, dtype=np.float32)
        std_a = np.asarray(std, dtype=np.float32)
        if mean_a.shape != in_shape or std_a.shape != in_shape:
            raise ValueError(
                f"normalize: statistics have shape {mean_a.shape} but features have shape {in_shape}"
            )
        if np.any(std_a <= 0):
            raise ValueError("normalize: std values must be > 0")
        return Normalize(mean_a, std_a)


class Normalize:
    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = mean
        self.inv_std = (1.0 / std).astype(np.float32)
        self.out_shape = tuple(mean.shape)

    def apply(self, batch: np.ndarray) -> np.ndarray:
        return (batch - self.mean) * self.inv_std
