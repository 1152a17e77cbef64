"""A deterministic fleet of simulated room climate sensors (temperature, humidity, pressure).

Why: the ingest examples (Zigbee2MQTT, Tasmota, SenML, line protocol,
Sparkplug B) carry what a BME280-style sensor reports every 30 s, one message
per reading, and the bundled ``climate_ae`` model is trained on it
(``python -m lab.models --climate``) -- so data, model and examples agree.

Each device (``living_room``, ``kitchen``, ... -- names like the ones people
give their sensors) has a seeded base temperature (19-24 C), relative humidity
(35-60 %) and air pressure (1000-1025 hPa), a daily temperature cycle (1-2 C),
a heating cycle (20-60 min, 0.1-0.4 C), humidity that moves against
temperature, a slow pressure swing and sensor noise (0.1 C, 0.5 %RH,
0.1 hPa). Values are rounded as devices report them (2, 2 and 1 decimals).

Faults (what a failing sensor does): ``stuck`` -- every value freezes at the
one read when the fault began (a hung I2C sensor whose driver keeps
re-reporting the cached reading); ``spike`` -- every third reading jumps
(+4..8 C, -10..-20 %RH, +5..15 hPa: the garbage reads of a sensor on a noisy
bus). ``anomaly_rate`` is the probability that a healthy device starts a fault
at a reading; a fault lasts ``fault_readings`` (min, max) readings and faults
alternate between the ``fault_modes``. Readings during a fault are labelled.

Everything is a pure function of ``seed`` and the device index (noise comes from
per-(device, 256-reading block) random streams), so any slice can be rebuilt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeloop.devices.simulator import DEFAULT_START_TS, _Faults

CHANNELS = ("temperature", "humidity", "pressure")
UNITS = ("Cel", "%RH", "hPa")  # SenML unit names (RFC 8428 registry; hPa via RFC 8798)
DECIMALS = (2, 2, 1)
FAULT_MODES = ("stuck", "spike")

#: Names people give room sensors; a fleet larger than this list gets ``_2``, ``_3`` .. suffixes.
ROOMS = (
    "living_room", "kitchen", "bedroom", "office", "bathroom", "hallway", "nursery", "guest_room",
    "garage", "basement", "attic", "laundry", "dining_room", "greenhouse", "workshop", "server_room",
)

_BLOCK = 256
_S_PROFILE, _S_NOISE = 10, 11  # SeedSequence streams, apart from FleetSimulator's
_DAY_S = 86_400.0
_NOISE = (0.1, 0.5, 0.1)


def climate_device_names(n: int) -> list[str]:
    """``n`` unique, realistic device names (``living_room``, ``kitchen``, ..., ``living_room_2``, ...)."""
    return [ROOMS[i % len(ROOMS)] + (f"_{i // len(ROOMS) + 1}" if i >= len(ROOMS) else "") for i in range(n)]


@dataclass(frozen=True)
class ClimateProfile:
    index: int
    temp_c: float
    humidity: float
    pressure_hpa: float
    day_amp_c: float
    heat_amp_c: float
    heat_period_s: float
    phases: tuple[float, float, float]

    @classmethod
    def draw(cls, seed: int, index: int) -> ClimateProfile:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _S_PROFILE, index]))
        return cls(
            index=index,
            temp_c=float(rng.uniform(19.0, 24.0)),
            humidity=float(rng.uniform(35.0, 60.0)),
            pressure_hpa=float(rng.uniform(1000.0, 1025.0)),
            day_amp_c=float(rng.uniform(1.0, 2.0)),
            heat_amp_c=float(rng.uniform(0.1, 0.4)),
            heat_period_s=float(rng.uniform(1200.0, 3600.0)),
            phases=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 3)),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ClimateBlock:
    """Readings ``first .. first+n-1`` of one device: values (n, 3) rounded, t (n,) seconds, fault (n,) bool."""

    values: np.ndarray
    t: np.ndarray
    fault: np.ndarray


class ClimateSimulator:
    """Deterministic simulated climate sensors; see the module docstring."""

    def __init__(
        self,
        n_devices: int = 1,
        seed: int = 0,
        anomaly_rate: float = 0.0,
        *,
        interval_s: float = 30.0,
        start_ts: float = DEFAULT_START_TS,
        fault_readings: tuple[int, int] = (24, 64),
        fault_modes: tuple[str, ...] = FAULT_MODES,
        names: list[str] | None = None,
    ) -> None:
        if not 1 <= n_devices <= 10_000:
            raise ValueError(f"n_devices must be 1..10000, got {n_devices}")
        if not 0.0 <= anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within 0..1, got {anomaly_rate}")
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if not 1 <= fault_readings[0] <= fault_readings[1]:
            raise ValueError(f"fault_readings must be (min, max) with 1 <= min <= max, got {fault_readings}")
        if not fault_modes or set(fault_modes) - set(FAULT_MODES):
            raise ValueError(f"fault_modes must be a non-empty subset of {FAULT_MODES}, got {fault_modes}")
        if names is not None and (len(names) != n_devices or len(set(names)) != n_devices):
            raise ValueError(f"names must be {n_devices} unique names")
        self.n_devices, self.seed, self.anomaly_rate = n_devices, seed, anomaly_rate
        self.interval_s, self.start_ts = interval_s, start_ts
        self.fault_modes = tuple(fault_modes)
        self.names = list(names) if names is not None else climate_device_names(n_devices)
        self.profiles = [ClimateProfile.draw(seed, i) for i in range(n_devices)]
        self._faults = [_Faults(seed + 1_000_003, i, anomaly_rate, *fault_readings) for i in range(n_devices)]

    def _clean(self, idx: int, j: np.ndarray) -> np.ndarray:
        p = self.profiles[idx]
        t = j * self.interval_s
        day = p.day_amp_c * np.sin(2 * math.pi * t / _DAY_S + p.phases[0])
        heat = p.heat_amp_c * np.sin(2 * math.pi * t / p.heat_period_s + p.phases[1])
        b0, b1 = int(j[0]) // _BLOCK, int(j[-1]) // _BLOCK
        noise = np.concatenate([
            np.random.default_rng(np.random.SeedSequence([self.seed, _S_NOISE, idx, b])).standard_normal((_BLOCK, 3))
            for b in range(b0, b1 + 1)
        ])[int(j[0]) - b0 * _BLOCK :][: len(j)] * np.asarray(_NOISE)
        temp = p.temp_c + day + heat
        out = np.empty((len(j), 3))
        out[:, 0] = temp
        out[:, 1] = np.clip(p.humidity - 2.5 * (day + heat), 5.0, 95.0)
        out[:, 2] = p.pressure_hpa + 3.0 * np.sin(2 * math.pi * t / (3 * _DAY_S) + p.phases[2])
        return out + noise

    def block(self, device: int, first: int, count: int) -> ClimateBlock:
        """Readings ``first .. first+count-1`` of device ``device`` (an index), faults applied."""
        if first < 0 or count < 1:
            raise ValueError("first must be >= 0 and count >= 1")
        faults = self._faults[device]
        j = np.arange(first, first + count)
        values = self._clean(device, j)
        fault = np.zeros(count, dtype=bool)
        for i in faults.overlapping(first, first + count):
            s0, s1 = faults.starts[i], faults.ends[i]
            lo, hi = max(s0, first) - first, min(s1, first + count) - first
            fault[lo:hi] = True
            mode = self.fault_modes[i % len(self.fault_modes)]
            if mode == "stuck":
                values[lo:hi] = self._clean(device, np.arange(s0, s0 + 1))[0]
            else:  # spike: every third reading of the fault is garbage
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, _S_NOISE, device, 1 << 30, i]))
                jumps = np.stack([rng.uniform(4, 8, s1 - s0), -rng.uniform(10, 20, s1 - s0),
                                  rng.uniform(5, 15, s1 - s0)], axis=1)
                rows = np.arange(lo, hi)
                hit = rows[(rows + first - s0) % 3 == 0]
                values[hit] += jumps[hit + first - s0]
        rounded = np.column_stack([np.round(values[:, c], d) for c, d in enumerate(DECIMALS)])
        return ClimateBlock(values=rounded, t=j * self.interval_s, fault=fault)

    def readings(self, count: int) -> list[tuple[str, int, float, tuple[float, float, float], bool]]:
        """The first ``count`` readings of every device, in time order (devices interleaved):
        ``(name, seq, ts, (temperature, humidity, pressure), fault)``."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if count == 0:
            return []
        blocks = [self.block(i, 0, count) for i in range(self.n_devices)]
        out = []
        for k in range(count):
            for i, b in enumerate(blocks):
                v = b.values[k]
                out.append((self.names[i], k, self.start_ts + float(b.t[k]),
                            (float(v[0]), float(v[1]), float(v[2])), bool(b.fault[k])))
        return out
