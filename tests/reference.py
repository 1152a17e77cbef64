"""Plain-numpy reference implementations that tests compare the product against."""

from __future__ import annotations

import numpy as np

STATS = ["mean", "std", "rms", "peak", "crest", "kurtosis"]


def reference_features(window: np.ndarray, stats: list[str] = STATS, bands: int = 4) -> np.ndarray:
    """The textbook definitions, one window, one channel at a time, float64, np.fft."""
    out = []
    x64 = window.astype(np.float64)
    for ch in range(x64.shape[1]):
        x = x64[:, ch]
        mean = x.mean()
        std = x.std()
        rms = np.sqrt(np.mean(x**2))
        peak = np.max(np.abs(x))
        values = {
            "mean": mean,
            "std": std,
            "rms": rms,
            "peak": peak,
            "crest": peak / rms if rms > 0 else 0.0,
            "kurtosis": np.mean((x - mean) ** 4) / std**4 if std > 0 else 0.0,
        }
        out += [values[s] for s in stats]
        if bands:
            power = np.abs(np.fft.rfft(x - mean)) ** 2 / len(x)
            for band in np.array_split(power[1 : len(x) // 2 + 1], bands):
                out.append(band.sum())
    return np.asarray(out)
