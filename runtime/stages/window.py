"""Sliding windows across consecutive readings of one stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

StreamKey = tuple[str, str]  # (device, sensor)


@dataclass(frozen=True, slots=True)
class Window:
    """A window of samples ready for the batch stages.

    ``ts_end`` is the device time of its last sample, ``seq`` the seq of the
    reading that completed it; with ``key`` they identify the window.
    """

    key: StreamKey
    data: np.ndarray
    ts_end: float
    seq: int


class WindowConfig(BaseModel):
    """Emit a window of ``size`` samples every ``hop`` samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["window"] = "window"
    size: Annotated[int, Field(ge=1, le=65536)]
    hop: Annotated[int, Field(ge=1, le=65536)]

    @model_validator(mode="after")
    def _hop_le_size(self) -> "WindowConfig":
        if self.hop > self.size:
            raise ValueError("hop must be <= size (gaps between windows would drop samples)")
        return self


class _Stream:
    __slots__ = ("buf", "until_next")

    def __init__(self, size: int, channels: int) -> None:
        self.buf = np.zeros((size, channels), dtype=np.float32)
        self.until_next = size  # samples still needed before the next window is due


class Windower:
    """Keeps the last ``size`` samples per stream key and cuts windows every ``hop``.

    Why a copy per window instead of a strided view: windows outlive the
    buffer (they wait in a micro-batch), and a copy of 128x3 floats is cheap.
    """

    def __init__(self, size: int, hop: int, channels: int) -> None:
        self.size = size
        self.hop = hop
        self.channels = channels
        self._streams: dict[StreamKey, _Stream] = {}

    def reset(self, key: StreamKey) -> None:
        self._streams.pop(key, None)

    def push(
        self, key: StreamKey, samples: np.ndarray, ts: float, rate_hz: float | None, seq: int
    ) -> list[Window]:
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(self.size, self.channels)
        size, buf, out = self.size, stream.buf, []
        n, pos = samples.shape[0], 0
        while pos < n:
            take = min(stream.until_next, n - pos)
            if take >= size:
                buf[:] = samples[pos + take - size : pos + take]
            else:
                buf[:-take] = buf[take:]
                buf[-take:] = samples[pos : pos + take]
            pos += take
            stream.until_next -= take
            if stream.until_next == 0:
                stream.until_next = self.hop
                if rate_hz:
                    ts_end = ts + (pos - 1) / rate_hz
                else:  # samples share the reading's ts: keep window identities unique
                    ts_end = ts + len(out) * 1e-6
                out.append(Window(key, buf.copy(), ts_end, seq))
        return out
