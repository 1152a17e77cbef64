"""A deterministic fleet of simulated rotating machines (vibration + temperature).

Why: the edge runtime, the bridge, the drift monitor and the model builder all
need realistic sensor data with known ground truth -- which readings are
faults, when the regime drifted -- without hardware and without MQTT.

Each device ``dev-000``, ``dev-001``, ... is a machine with its own shaft
frequency (20-35 Hz), 2 harmonics, per-axis amplitudes, gravity on the z axis
and gaussian noise, sampled by a 3-axis accelerometer at ``rate_hz`` (1000 Hz)
and published in chunks of ``chunk_size`` (64) samples, i.e. one vibration
reading every 64 ms of simulated time. A temperature reading (one channel,
degrees C, slow variation) follows every ``temperature_interval_s`` (1 s).

Faults (bearing defects): a train of sharp decaying impacts at a
characteristic frequency (3-5 x shaft speed) ringing at a structural
resonance (250-400 Hz), plus doubled noise and +1.5 C, lasting 0.5-2 s
(``fault_duration_s``, whole vibration readings). ``anomaly_rate`` is the
*probability that a healthy device starts a fault at a vibration reading*
(an independent draw per reading opportunity); with a mean fault length of
``D`` readings the expected fraction of vibration readings labelled "fault"
is ``D p / (1 + D p - p)`` (``expected_fault_fraction``), e.g. about 3.8% at
p = 0.002. Every reading (vibration or temperature) taken during a fault
carries ``label="fault"``; all others ``label=None``.

Drift: from ``drift_at_s`` simulated seconds on, every device runs in a new
regime for good (shaft speed x``drift_speed``, vibration amplitude
x``drift_amplitude``, +4 C). That is not a fault (``label`` stays None), but a
model trained on the old regime will flag it. ``drift_from()`` sets the onset
while ``readings()`` is being consumed (a rig that changes the regime when
something has happened, not at a time fixed up front).

Time: simulated time ``t`` starts at 0; device ``i`` is offset by a seeded
fraction of a chunk so the fleet does not publish in lock-step. A reading's
``ts`` is ``start_ts + time_scale * t`` of its first sample; ``time_scale``
lets a publisher compress or stretch time, and then ``rate_hz`` in the reading
is ``rate_hz / time_scale`` so that sample times stay consistent and unique.

Everything is a pure function of ``seed`` (and the device index): noise comes
from per-(device, 1024-sample block) random streams, so any slice of a
device's signal can be regenerated on its own and ``readings()`` yields the
same data however it is consumed. A device's profile does not depend on how
many devices the fleet has.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from edgeloop.contract import SensorReading, sensor_topic

VIBRATION = "vibration"
TEMPERATURE = "temperature"
FAULT_LABEL = "fault"
SENSORS = (VIBRATION, TEMPERATURE)

#: 2024-01-01T00:00:00Z: the default ``start_ts`` keeps runs reproducible.
DEFAULT_START_TS = 1_704_067_200.0

_NOISE_BLOCK = 1024  # samples per independent noise stream
_TEMP_BLOCK = 256  # temperature readings per independent noise stream
_WOBBLE = 0.01  # relative shaft-speed wobble
_WOBBLE_PERIOD_S = 23.0
_GRAVITY_G = 1.0
_FAULT_NOISE_FACTOR = 2.0
_FAULT_TEMP_C = 1.5
_DRIFT_TEMP_C = 4.0
_IMPACT_DECAY_S = 0.002

# Stream ids for SeedSequence([seed, stream, device, block]).
_S_PROFILE, _S_NOISE, _S_FAULTS, _S_TEMP = 0, 1, 2, 3


def device_id(index: int) -> str:
    return f"dev-{index:03d}"


@dataclass(frozen=True)
class DeviceProfile:
    """The seeded physical constants of one simulated machine."""

    index: int
    device: str
    shaft_hz: float
    harmonics: tuple[float, ...]  # relative amplitude of 1x, 2x, 3x shaft speed
    phases: tuple[tuple[float, ...], ...]  # per axis, per harmonic (radians)
    amplitude_g: float
    axis_gain: tuple[float, float, float]
    noise_g: float
    offset_s: float  # schedule offset of this device (< one chunk)
    fault_ratio: float  # bearing characteristic frequency / shaft frequency
    resonance_hz: float
    temp_base_c: float
    temp_phases: tuple[float, float]

    @classmethod
    def draw(cls, seed: int, index: int, chunk_s: float) -> DeviceProfile:
        rng = np.random.default_rng(np.random.SeedSequence([seed, _S_PROFILE, index]))
        harmonics = (1.0, float(rng.uniform(0.2, 0.5)), float(rng.uniform(0.05, 0.25)))
        return cls(
            index=index,
            device=device_id(index),
            shaft_hz=float(rng.uniform(20.0, 35.0)),
            harmonics=harmonics,
            phases=tuple(
                tuple(float(p) for p in rng.uniform(0, 2 * math.pi, len(harmonics))) for _ in range(3)
            ),
            amplitude_g=float(rng.uniform(0.3, 0.8)),
            axis_gain=(1.0, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.2, 0.5))),
            noise_g=float(rng.uniform(0.03, 0.06)),
            offset_s=float(rng.uniform(0.0, chunk_s)),
            fault_ratio=float(rng.uniform(3.0, 5.0)),
            resonance_hz=float(rng.uniform(250.0, 400.0)),
            temp_base_c=float(rng.uniform(35.0, 55.0)),
            temp_phases=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))),
        )


class _Faults:
    """One device's fault schedule in chunk units, drawn lazily and sequentially."""

    def __init__(self, seed: int, index: int, p_start: float, min_chunks: int, max_chunks: int) -> None:
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, _S_FAULTS, index]))
        self._p = p_start
        self._min, self._max = min_chunks, max_chunks
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.severity: list[float] = []
        self._pos = 0  # first chunk not yet decided (device healthy there)

    def extend(self, until_chunk: int) -> None:
        """Draw faults until the schedule is decided up to ``until_chunk`` (exclusive)."""
        if self._p <= 0.0:
            self._pos = max(self._pos, until_chunk)
            return
        while self._pos < until_chunk:
            gap = int(self._rng.geometric(self._p)) - 1  # healthy readings before the next fault
            start = self._pos + gap
            length = int(self._rng.integers(self._min, self._max + 1))
            self.starts.append(start)
            self.ends.append(start + length)
            self.severity.append(float(self._rng.uniform(0.4, 1.2)))
            self._pos = start + length

    def overlapping(self, c0: int, c1: int) -> list[int]:
        """Indices of faults overlapping chunks [c0, c1)."""
        self.extend(c1)
        lo = np.searchsorted(self.ends, c0, side="right")
        hi = np.searchsorted(self.starts, c1, side="left")
        return list(range(int(lo), int(hi)))

    def mask(self, c0: int, c1: int) -> np.ndarray:
        out = np.zeros(c1 - c0, dtype=bool)
        for i in self.overlapping(c0, c1):
            out[max(self.starts[i], c0) - c0 : min(self.ends[i], c1) - c0] = True
        return out


@dataclass(frozen=True)
class VibrationBlock:
    """A slice of one device's accelerometer signal with its ground truth per sample."""

    samples: np.ndarray  # (n, 3) float32, g
    t: np.ndarray  # (n,) float64, simulated seconds
    fault: np.ndarray  # (n,) bool
    drifted: np.ndarray  # (n,) bool


class FleetSimulator:
    """Deterministic simulated fleet; see the module docstring for the physics.

    Parameters: ``n_devices``; ``seed``; ``anomaly_rate`` (probability that a
    healthy device starts a fault at a vibration reading, 0..1); ``drift_at_s`` (simulated seconds,
    None = never); ``start_ts`` (unix seconds of t=0); ``time_scale`` (ts
    seconds per simulated second); ``rate_hz`` (accelerometer sample rate);
    ``chunk_size`` (samples per vibration reading); ``temperature_interval_s``;
    ``fault_duration_s`` (min, max); ``drift_speed`` / ``drift_amplitude``
    (regime change factors); ``sensors`` (which streams ``readings()`` yields);
    ``decimals`` (rounding of published vibration values, keeps JSON short).
    """

    def __init__(
        self,
        n_devices: int = 1,
        seed: int = 0,
        anomaly_rate: float = 0.0,
        drift_at_s: float | None = None,
        *,
        start_ts: float = DEFAULT_START_TS,
        time_scale: float = 1.0,
        rate_hz: float = 1000.0,
        chunk_size: int = 64,
        temperature_interval_s: float = 1.0,
        fault_duration_s: tuple[float, float] = (0.5, 2.0),
        drift_speed: float = 1.4,
        drift_amplitude: float = 1.3,
        sensors: tuple[str, ...] = SENSORS,
        decimals: int = 4,
    ) -> None:
        if n_devices < 1 or n_devices > 1000:
            raise ValueError(f"n_devices must be 1..1000, got {n_devices}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not 0.0 <= anomaly_rate <= 1.0:
            raise ValueError(f"anomaly_rate must be within 0..1, got {anomaly_rate}")
        if drift_at_s is not None and drift_at_s < 0:
            raise ValueError(f"drift_at_s must be >= 0, got {drift_at_s}")
        if not (time_scale > 0 and rate_hz > 0 and temperature_interval_s > 0):
            raise ValueError("time_scale, rate_hz and temperature_interval_s must be > 0")
        if rate_hz / time_scale > 1e6:
            raise ValueError(f"rate_hz / time_scale = {rate_hz / time_scale:g} exceeds the contract's 1e6 Hz")
        if not 1 <= chunk_size <= 4096:
            raise ValueError(f"chunk_size must be 1..4096, got {chunk_size}")
        if not 0 < fault_duration_s[0] <= fault_duration_s[1]:
            raise ValueError(
                f"fault_duration_s must be (min, max) with 0 < min <= max, got {fault_duration_s}"
            )
        unknown = set(sensors) - set(SENSORS)
        if unknown or not sensors:
            raise ValueError(f"sensors must be a non-empty subset of {SENSORS}, got {sensors}")

        self.n_devices = n_devices
        self.seed = seed
        self.anomaly_rate = anomaly_rate
        self.drift_at_s = drift_at_s
        self.start_ts = start_ts
        self.time_scale = time_scale
        self.rate_hz = rate_hz
        self.chunk_size = chunk_size
        self.chunk_s = chunk_size / rate_hz
        self.temperature_interval_s = temperature_interval_s
        self.drift_speed = drift_speed
        self.drift_amplitude = drift_amplitude
        self.sensors = tuple(s for s in SENSORS if s in sensors)
        self.decimals = decimals

        self.fault_chunks = (
            max(1, round(fault_duration_s[0] / self.chunk_s)),
            max(1, round(fault_duration_s[1] / self.chunk_s)),
        )
        self.fault_start_p = anomaly_rate
        self._generated_s = 0.0  # simulated time up to which readings() has built blocks

        self.devices = [DeviceProfile.draw(seed, i, self.chunk_s) for i in range(n_devices)]
        self._faults = [_Faults(seed, i, self.fault_start_p, *self.fault_chunks) for i in range(n_devices)]
        self._topics = {(d.index, s): sensor_topic(d.device, s) for d in self.devices for s in self.sensors}

    # ------------------------------------------------------------------ rates and ground truth

    @property
    def readings_per_s(self) -> float:
        """Readings one device produces per simulated second (all its sensors)."""
        rate = 0.0
        if VIBRATION in self.sensors:
            rate += 1.0 / self.chunk_s
        if TEMPERATURE in self.sensors:
            rate += 1.0 / self.temperature_interval_s
        return rate

    @property
    def expected_fault_fraction(self) -> float:
        """Long-run fraction of vibration readings labelled fault for this ``anomaly_rate``."""
        p = self.fault_start_p
        mean_len = sum(self.fault_chunks) / 2
        return mean_len * p / (1 + mean_len * p - p)

    def _index(self, device: int | str) -> int:
        if isinstance(device, str):
            if not device.startswith("dev-") or not device[4:].isdigit():
                raise KeyError(device)
            device = int(device[4:])
        if not 0 <= device < self.n_devices:
            raise KeyError(device)
        return device

    def fault_mask(self, device: int | str, n_chunks: int, first_chunk: int = 0) -> np.ndarray:
        """Ground truth per vibration reading ``first_chunk .. first_chunk+n_chunks-1`` (True = fault)."""
        return self._faults[self._index(device)].mask(first_chunk, first_chunk + n_chunks)

    def fault_intervals(self, device: int | str, until_s: float) -> list[tuple[float, float]]:
        """Faults of one device as (start, end) simulated seconds, those starting before ``until_s``."""
        idx = self._index(device)
        faults, off = self._faults[idx], self.devices[idx].offset_s
        until_chunk = max(0, math.ceil((until_s - off) / self.chunk_s))
        return [
            (off + faults.starts[i] * self.chunk_s, off + faults.ends[i] * self.chunk_s)
            for i in faults.overlapping(0, until_chunk)
            if faults.starts[i] < until_chunk
        ]

    def in_fault(self, device: int | str, t: np.ndarray) -> np.ndarray:
        """Whether the device is in a fault at simulated times ``t``."""
        idx = self._index(device)
        chunks = np.floor((np.asarray(t, dtype=np.float64) - self.devices[idx].offset_s) / self.chunk_s)
        chunks = chunks.astype(np.int64)
        if chunks.size == 0:
            return np.zeros(0, dtype=bool)
        c0 = int(max(chunks.min(), 0))
        mask = self._faults[idx].mask(c0, int(chunks.max()) + 1)
        out = np.zeros(chunks.shape, dtype=bool)
        valid = chunks >= c0
        out[valid] = mask[chunks[valid] - c0]
        return out

    def drift_from(self, t_s: float) -> float:
        """Drift from simulated ``t_s`` on, or from the end of what ``readings()`` already built if that is
        later (those readings are never changed); returns the onset used. The phase stays continuous."""
        if not t_s >= 0:
            raise ValueError(f"t_s must be >= 0, got {t_s}")
        self.drift_at_s = max(float(t_s), self._generated_s)
        return self.drift_at_s

    def drifted(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if self.drift_at_s is None:
            return np.zeros(t.shape, dtype=bool)
        return t >= self.drift_at_s

    # ------------------------------------------------------------------ signal building blocks

    def _phase_time(self, t: np.ndarray) -> np.ndarray:
        """Integral of the relative shaft speed over [0, t] (seconds at the nominal speed)."""
        k = 2 * math.pi / _WOBBLE_PERIOD_S

        def w(x: np.ndarray | float) -> np.ndarray:
            return x + _WOBBLE / k * (1.0 - np.cos(k * np.asarray(x)))

        base = w(t)
        if self.drift_at_s is None:
            return base
        wt = w(self.drift_at_s)
        return np.where(t < self.drift_at_s, base, wt + self.drift_speed * (base - wt))

    def _noise(self, idx: int, n0: int, n1: int) -> np.ndarray:
        b0, b1 = n0 // _NOISE_BLOCK, (n1 - 1) // _NOISE_BLOCK
        blocks = [
            np.random.default_rng(np.random.SeedSequence([self.seed, _S_NOISE, idx, b])).standard_normal(
                (_NOISE_BLOCK, 3), dtype=np.float32
            )
            for b in range(b0, b1 + 1)
        ]
        full = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
        start = n0 - b0 * _NOISE_BLOCK
        return full[start : start + (n1 - n0)]

    def vibration_samples(self, device: int | str, start_sample: int, n_samples: int) -> VibrationBlock:
        """Samples ``start_sample .. +n_samples`` of one device's accelerometer (index 0 = its first sample).

        The same samples ``readings()`` publishes (before rounding), so a model
        builder can make training data without MQTT.
        """
        idx = self._index(device)
        if start_sample < 0 or n_samples < 1:
            raise ValueError("start_sample must be >= 0 and n_samples >= 1")
        prof = self.devices[idx]
        n = np.arange(start_sample, start_sample + n_samples, dtype=np.float64)
        t = prof.offset_s + n / self.rate_hz
        drifted = self.drifted(t)
        theta = 2 * math.pi * prof.shaft_hz * self._phase_time(t)
        amp = prof.amplitude_g * np.where(drifted, self.drift_amplitude, 1.0)

        out = np.empty((n_samples, 3), dtype=np.float64)
        for axis in range(3):
            wave = np.zeros(n_samples)
            for h, (c, ph) in enumerate(zip(prof.harmonics, prof.phases[axis])):
                wave += c * np.sin((h + 1) * theta + ph)
            out[:, axis] = amp * prof.axis_gain[axis] * wave
        out[:, 2] += _GRAVITY_G

        noise_scale = np.full(n_samples, prof.noise_g)
        c0 = start_sample // self.chunk_size
        c1 = (start_sample + n_samples - 1) // self.chunk_size + 1
        faults = self._faults[idx]
        fault = np.zeros(n_samples, dtype=bool)
        for i in faults.overlapping(c0, c1):
            s0 = faults.starts[i] * self.chunk_size
            s1 = faults.ends[i] * self.chunk_size
            lo, hi = max(s0, start_sample) - start_sample, min(s1, start_sample + n_samples) - start_sample
            fault[lo:hi] = True
            noise_scale[lo:hi] *= _FAULT_NOISE_FACTOR
            t_start = prof.offset_s + s0 / self.rate_hz
            speed = self.drift_speed if bool(self.drifted(t_start)) else 1.0
            period = 1.0 / (prof.fault_ratio * prof.shaft_hz * speed)
            tau = np.mod(t[lo:hi] - t_start, period)
            impact = (
                faults.severity[i]
                * np.exp(-tau / _IMPACT_DECAY_S)
                * np.sin(2 * math.pi * prof.resonance_hz * tau)
            )
            out[lo:hi, 0] += impact
            out[lo:hi, 1] += 0.8 * impact
            out[lo:hi, 2] += 0.4 * impact
        out += self._noise(idx, start_sample, start_sample + n_samples) * noise_scale[:, None]
        return VibrationBlock(samples=out.astype(np.float32), t=t, fault=fault, drifted=drifted)

    def vibration_chunk(self, device: int | str, index: int) -> tuple[np.ndarray, str | None]:
        """Vibration reading ``index`` of one device: ``((chunk_size, 3) float32, label)``."""
        block = self.vibration_samples(device, index * self.chunk_size, self.chunk_size)
        return block.samples, FAULT_LABEL if block.fault.any() else None

    def temperature(
        self, device: int | str, first: int, count: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Temperature readings ``first .. first+count-1``: (t seconds, celsius, fault mask)."""
        idx = self._index(device)
        prof = self.devices[idx]
        j = np.arange(first, first + count)
        t = prof.offset_s + j * self.temperature_interval_s
        p1, p2 = prof.temp_phases
        temp = (
            prof.temp_base_c
            + 1.0 * np.sin(2 * math.pi * t / 600.0 + p1)
            + 0.4 * np.sin(2 * math.pi * t / 131.0 + p2)
        )
        b0, b1 = first // _TEMP_BLOCK, (first + count - 1) // _TEMP_BLOCK
        noise = np.concatenate(
            [
                np.random.default_rng(np.random.SeedSequence([self.seed, _S_TEMP, idx, b])).standard_normal(
                    _TEMP_BLOCK
                )
                for b in range(b0, b1 + 1)
            ]
        )[first - b0 * _TEMP_BLOCK :][:count]
        fault = self.in_fault(idx, t)
        temp = temp + 0.05 * noise + _DRIFT_TEMP_C * self.drifted(t) + _FAULT_TEMP_C * fault
        return t, temp, fault

    # ------------------------------------------------------------------ the reading stream

    def _device_stream(
        self, idx: int, block_chunks: int
    ) -> Iterator[tuple[float, int, int, int, str, SensorReading]]:
        """One device's readings in time order, as heap-mergeable tuples."""
        prof = self.devices[idx]
        sample_rate = self.rate_hz / self.time_scale
        vib_topic = self._topics.get((idx, VIBRATION))
        temp_topic = self._topics.get((idx, TEMPERATURE))
        block_s = block_chunks * self.chunk_s
        seq_v = seq_t = 0
        b = 0
        while True:
            events: list[tuple[float, int, int, int, str, SensorReading]] = []
            if vib_topic is not None:
                blk = self.vibration_samples(
                    idx, b * block_chunks * self.chunk_size, block_chunks * self.chunk_size
                )
                chunks = np.round(blk.samples.astype(np.float64), self.decimals)
                rows = chunks.tolist()
                faulty = blk.fault.reshape(block_chunks, self.chunk_size).any(axis=1).tolist()
                starts = blk.t[:: self.chunk_size].tolist()
                size = self.chunk_size
                for k in range(block_chunks):
                    t = starts[k]
                    reading = SensorReading.model_construct(
                        ts=self.start_ts + self.time_scale * t,
                        seq=seq_v,
                        values=rows[k * size : (k + 1) * size],
                        rate_hz=sample_rate,
                        label=FAULT_LABEL if faulty[k] else None,
                    )
                    events.append((t, idx, 0, seq_v, vib_topic, reading))
                    seq_v += 1
            if temp_topic is not None:
                t_end = prof.offset_s + (b + 1) * block_s
                n_upto = math.ceil((t_end - prof.offset_s) / self.temperature_interval_s)
                if n_upto > seq_t:
                    ts_arr, temps, fault = self.temperature(idx, seq_t, n_upto - seq_t)
                    for t, value, f in zip(ts_arr.tolist(), np.round(temps, 2).tolist(), fault.tolist()):
                        reading = SensorReading.model_construct(
                            ts=self.start_ts + self.time_scale * t,
                            seq=seq_t,
                            values=[value],
                            rate_hz=None,
                            label=FAULT_LABEL if f else None,
                        )
                        events.append((t, idx, 1, seq_t, temp_topic, reading))
                        seq_t += 1
            events.sort()
            self._generated_s = max(self._generated_s, prof.offset_s + (b + 1) * block_s)
            yield from events
            b += 1

    def readings(
        self, duration_s: float | None = None, count: int | None = None
    ) -> Iterator[tuple[str, SensorReading]]:
        """Yield ``(topic, SensorReading)`` for the whole fleet in simulated-time order.

        Stops after ``duration_s`` simulated seconds (readings whose first
        sample is at t < duration_s) or after ``count`` readings, whichever
        comes first; with neither it never stops. Ties in time are broken by
        device index, then vibration before temperature.
        """
        if duration_s is not None and duration_s < 0:
            raise ValueError("duration_s must be >= 0")
        if count is not None and count < 0:
            raise ValueError("count must be >= 0")
        if count == 0:
            return
        streams = [self._device_stream(i, 16) for i in range(self.n_devices)]
        for produced, (t, _idx, _s, _seq, topic, reading) in enumerate(heapq.merge(*streams), start=1):
            if duration_s is not None and t >= duration_s:
                return
            yield topic, reading
            if count is not None and produced >= count:
                return
