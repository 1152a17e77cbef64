"""What each payload format costs the edge: decode + engine ingest per reading, no network.

``python -m benchmarks.codecs [--quick]`` alone, or ``make bench`` (measurement ``codecs``).

Each case is one entry of :data:`CASES`: a name, the pipeline's ``input:`` settings and a
payload generator, so a new codec adds one entry. Every case runs the real
``Engine.ingest`` (routing, codec, checks, sequence, windowing) in this process with the
bundled model; windows are cut but not scored (inference costs the same whatever the format
and is measured by ``edge``/``latency``). Payloads are rendered before the clock starts.

A stateful codec's setup (Sparkplug B: the NBIRTH and DBIRTHs that define the aliases) is a
case's ``births``, ingested once into its engine before the first round, outside the clock. Each
engine ingests message ``i`` once, in order, over all rounds, so a payload generator may derive a
sequence number from ``i`` (the Sparkplug per-node ``seq`` continues from the births).

The baseline is the ingest path as it was before codecs existed: ``parse_sensor_topic`` +
``decode_reading`` + numpy, the same checks and windowing (:func:`legacy_ingest`), timed in the
same run on the same payloads as the ``edgeloop`` codec, so "the edgeloop codec is no slower
than before" is a ratio, not a claim.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop.contract import decode_reading, parse_sensor_topic
from edgeloop.edge.config import BUNDLED_MODEL, EdgeConfig
from edgeloop.edge.engine import Engine, PipelineRunner, _Pending
from edgeloop.edge.inference import TfliteModel
from edgeloop.errors import PayloadError
from edgeloop.rejects import Rejects

DEVICES = 50
BATCH = 200  # messages rendered, then ingested under the clock: one round of one case
TS0 = 1_795_740_561.0

#: One-value messages (a climate sensor): 3 channels, windows of 8 messages.
CLIMATE_STAGES = [
    {"type": "window", "size": 8, "hop": 8},
    {"type": "features", "stats": ["mean", "std", "rms", "peak", "crest", "kurtosis"], "fft_bands": 4},
    {"type": "normalize", "from_model": True},
]

Payload = Callable[[int], tuple[str, bytes]]  # message index -> (topic, payload)


@dataclass(frozen=True)
class Case:
    name: str
    input: dict[str, Any] | None  # the pipeline's input: settings (None: the default, edgeloop on sensors/...)
    payload: Payload
    in_channels: int = 3
    stages: list[dict] | None = None  # None: the bundled vibration pipeline (window 128, hop 64)
    legacy: bool = False  # time legacy_ingest instead of Engine.ingest (the before-codecs baseline)
    births: Callable[[], list[tuple[str, bytes]]] | None = None  # ingested once per engine, untimed, before round 0


def _chunk(i: int) -> tuple[str, bytes]:
    """A vibration reading as the simulator sends it: 64 samples x 3 axes."""
    rng = np.random.default_rng(i % 997)
    values = rng.normal(0.0, 1.0, (64, 3)).round(4).tolist()
    seq = i // DEVICES
    return (f"sensors/dev-{i % DEVICES}/vibration",
            json.dumps({"v": 1, "ts": TS0 + seq * 0.064, "seq": seq, "values": values, "rate_hz": 1000.0}).encode())


def _one(i: int) -> tuple[str, bytes]:
    seq = i // DEVICES
    return (f"sensors/dev-{i % DEVICES}/climate",
            json.dumps({"v": 1, "ts": TS0 + seq * 30, "seq": seq, "values": [21.5 + i % 7 * 0.1, 40.0, 1013.2]}).encode())


def _z2m(i: int) -> tuple[str, bytes]:
    return (f"zigbee2mqtt/sensor-{i % DEVICES}",
            json.dumps({"temperature": 22.75 + i % 7 * 0.05, "linkquality": 97, "humidity": 55.43, "pressure": 1000.6,
                        "battery": 86, "voltage": 2995}).encode())


def _tasmota(i: int) -> tuple[str, bytes]:
    seq = i // DEVICES
    return (f"tele/tasmota_{i % DEVICES}/SENSOR",
            json.dumps({"Time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(TS0 + seq * 10)),
                        "BME280": {"Temperature": 16.6 + i % 7 * 0.1, "Humidity": 63.9, "Pressure": 1001.8},
                        "PressureUnit": "hPa", "TempUnit": "C"}).encode())


def _statestream(i: int) -> tuple[str, bytes]:
    return f"homeassistant/sensor/probe_{i % DEVICES}/state", json.dumps(str(21.5 + i % 7 * 0.1)).encode()


def _senml(i: int) -> tuple[str, bytes]:
    seq = i // DEVICES
    return (f"senml/sensor-{i % DEVICES}",
            json.dumps([{"bn": f"urn:dev:mac:0024befffe80{i % DEVICES:04x}:", "bt": TS0 + seq * 30, "n": "temperature",
                         "u": "Cel", "v": 21.5 + i % 7 * 0.1},
                        {"n": "humidity", "u": "%RH", "v": 45.12}, {"n": "pressure", "u": "hPa", "v": 1013.2}]).encode())


def _influx(i: int) -> tuple[str, bytes]:
    seq = i // DEVICES
    return (f"telegraf/sensor-{i % DEVICES}",
            f"climate,host=sensor-{i % DEVICES},room=living\\ room temperature={21.5 + i % 7 * 0.1:.2f},humidity=45.12,"
            f"pressure=1013.2 {int(TS0 + seq * 30) * 10**9}".encode())


SPARKPLUG_GROUP, SPARKPLUG_NODE = "plant1", "gateway1"
SPARKPLUG_METRICS = ("temperature", "humidity", "pressure")  # aliases 1, 2, 3


def _sparkplug_births() -> list[tuple[str, bytes]]:
    """One edge node's NBIRTH (seq 0) and a DBIRTH per device (seq 1..DEVICES) naming the aliases."""
    import pysparkplug as spb  # built by a third-party encoder, as in the codec's tests; only this case needs it

    ms, dt = int(TS0 * 1000), spb.DataType
    prefix = f"spBv1.0/{SPARKPLUG_GROUP}"
    out = [(f"{prefix}/NBIRTH/{SPARKPLUG_NODE}", spb.NBirth(timestamp=ms, seq=0, metrics=(
        spb.Metric(timestamp=ms, name="bdSeq", datatype=dt.INT64, value=0),)).encode())]
    for d in range(DEVICES):
        out.append((f"{prefix}/DBIRTH/{SPARKPLUG_NODE}/sensor-{d}", spb.DBirth(timestamp=ms, seq=1 + d, metrics=tuple(
            spb.Metric(timestamp=ms, name=name, alias=alias, datatype=dt.DOUBLE, value=value)
            for alias, (name, value) in enumerate(zip(SPARKPLUG_METRICS, (21.5, 45.12, 1013.2)), 1))).encode()))
    return out


def _sparkplug(i: int) -> tuple[str, bytes]:
    """DDATA from device i % DEVICES of the one edge node, metrics by alias only; the node's ``seq`` goes on
    from the births (1 + DEVICES) and wraps 255 -> 0 every 256 messages."""
    import pysparkplug as spb

    ms, dt = int((TS0 + i // DEVICES * 30) * 1000), spb.DataType
    return (f"spBv1.0/{SPARKPLUG_GROUP}/DDATA/{SPARKPLUG_NODE}/sensor-{i % DEVICES}",
            spb.DData(timestamp=ms, seq=(1 + DEVICES + i) % 256, metrics=tuple(
                spb.Metric(timestamp=ms, name=None, alias=alias, datatype=dt.DOUBLE, value=value)
                for alias, value in enumerate((21.5 + i % 7 * 0.1, 45.12, 1013.2), 1))).encode())


SENML_INPUT = {"codec": "senml", "topic": "senml/{device}",
               "channels": [{"name": "temperature", "unit": "Cel"}, {"name": "humidity", "unit": "%RH"},
                            {"name": "pressure", "unit": "hPa"}]}
INFLUX_INPUT = {"codec": "influx", "topic": "telegraf/{device}", "measurement": "climate",
                "fields": ["temperature", "humidity", "pressure"]}
SPARKPLUG_INPUT = {"codec": "sparkplug", "group": SPARKPLUG_GROUP, "metrics": list(SPARKPLUG_METRICS)}

ONE_CHANNEL = [{"type": "select", "channels": [0, 0, 0]}, *CLIMATE_STAGES]

#: One entry per (codec, payload shape). Other codecs add theirs here.
CASES: list[Case] = [
    Case("before codecs: decode_reading, 64x3 chunk", None, _chunk, legacy=True),
    Case("edgeloop, 64x3 chunk", None, _chunk),
    Case("before codecs: decode_reading, 1 sample", {"codec": "edgeloop", "topic": "sensors/{device}/climate"}, _one,
         stages=CLIMATE_STAGES, legacy=True),
    Case("edgeloop, 1 sample", {"codec": "edgeloop", "topic": "sensors/{device}/climate"}, _one, stages=CLIMATE_STAGES),
    Case("json, zigbee2mqtt preset", {"preset": "zigbee2mqtt"}, _z2m, stages=CLIMATE_STAGES),
    Case("json, tasmota preset (dotted paths, ISO time)", {"preset": "tasmota", "timezone": "UTC"}, _tasmota,
         stages=CLIMATE_STAGES),
    Case("json, homeassistant-statestream (bare value)", {"preset": "homeassistant-statestream"}, _statestream,
         in_channels=1, stages=ONE_CHANNEL),
    Case("senml, JSON pack of 3 records (base name, base time, units)", SENML_INPUT, _senml, stages=CLIMATE_STAGES),
    Case("influx, one line of 3 fields (Telegraf)", INFLUX_INPUT, _influx, stages=CLIMATE_STAGES),
    Case(f"sparkplug, DDATA of 3 aliased metrics (1 edge node, {DEVICES} devices)", SPARKPLUG_INPUT, _sparkplug,
         stages=CLIMATE_STAGES, births=_sparkplug_births),
]


def legacy_ingest(engine: Engine, topic: str, payload: bytes, received: float) -> int:
    """``Engine.ingest`` as it was before codecs (commit cd7df3e), kept to time against."""
    engine.counters["readings_in"] += 1
    try:
        device, _ = parse_sensor_topic(topic)
        runner = next(iter(engine.runners.values()))
        reading = decode_reading(payload, engine.max_payload_bytes)
        samples = np.asarray(reading.values, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples.reshape(1, -1)
        if not np.isfinite(samples).all():
            raise PayloadError("non_finite", "a value is too large for float32")
        if samples.shape[1] != runner.pipeline.in_channels:
            raise PayloadError("wrong_shape", "channels")
        key = (device, runner.settings.sensor)
        if key not in runner.last_seq and len(runner.last_seq) >= runner.settings.max_streams:
            raise PayloadError("too_many_streams", "streams")
        if not engine._in_sequence(runner, key, reading.seq):
            return 0
        runner.last_seen[key] = received
        windows = runner.pipeline.push(key, samples, reading.ts, reading.rate_hz, reading.seq)
    except Exception as exc:  # noqa: BLE001
        engine.rejects.reject(topic, payload, getattr(exc, "reason", "error"), str(exc))
        return 0
    if windows:
        if engine.oldest_pending is None:
            engine.oldest_pending = received
        runner.pending.extend(_Pending(w, received) for w in windows)
    return int(samples.shape[0])


def _engine(case: Case, model: TfliteModel) -> Engine:
    sensor = "climate" if case.stages is not None else "vibration"
    pipeline: dict[str, Any] = {"sensor": sensor, "in_channels": case.in_channels}
    if case.input is not None:
        pipeline["input"] = case.input
    if case.stages is not None:
        pipeline["stages"] = case.stages
    cfg = EdgeConfig(pipelines=[pipeline])
    runners = [PipelineRunner.build(p, model) for p in cfg.pipelines]
    return Engine(runners, Rejects("edge", logging.getLogger("bench.codecs")), node_id="bench")


def run(_workdir: Any = None, quick: bool = False) -> dict:
    """Every case, interleaved: rounds of ``BATCH`` messages go round all cases in turn (a busy spell
    of the shared machine hits every case alike); per case the median and the 10th percentile of
    the rounds' CPU per reading, and readings/s over all its rounds."""
    logging.getLogger("bench.codecs").setLevel(logging.ERROR)
    model = TfliteModel(BUNDLED_MODEL, max_batch=64)
    messages = 2_000 if quick else 20_000
    engines = [_engine(case, model) for case in CASES]
    for case, engine in zip(CASES, engines):
        for topic, payload in case.births() if case.births else []:
            engine.ingest(topic, payload, time.monotonic())
        for runner in engine.runners.values():
            runner.pending.clear()
        engine.oldest_pending = None
    ingests = [(lambda t, p, r, e=e: legacy_ingest(e, t, p, r)) if case.legacy else e.ingest
               for case, e in zip(CASES, engines)]
    cpu: list[list[float]] = [[] for _ in CASES]
    wall = [0.0] * len(CASES)
    samples = [0] * len(CASES)
    for k, start in enumerate(range(0, messages, BATCH)):
        for j in [(k + i) % len(CASES) for i in range(len(CASES))]:
            batch = [CASES[j].payload(start + n) for n in range(min(BATCH, messages - start))]
            ingest, now = ingests[j], time.monotonic()
            w0, c0 = time.perf_counter(), time.process_time()
            for topic, payload in batch:
                samples[j] += ingest(topic, payload, now)
            wall[j] += time.perf_counter() - w0
            cpu[j].append((time.process_time() - c0) / len(batch) * 1e6)
            for runner in engines[j].runners.values():
                runner.pending.clear()  # not scored: inference is the same for every format
            engines[j].oldest_pending = None
    out = {}
    for j, case in enumerate(CASES):
        rounds = sorted(cpu[j])
        out[case.name] = {
            "readings": messages,
            "rejected": engines[j].rejects.total,
            "readings_per_s": round(messages / wall[j], 1),
            "samples_per_s": round(samples[j] / wall[j], 1),
            "cpu_us_per_reading": round(statistics.median(rounds), 2),
            "cpu_us_per_reading_p10": round(rounds[len(rounds) // 10], 2),
            "bytes_per_reading": round(sum(len(case.payload(n)[1]) for n in range(100)) / 100, 1),
            "baseline": _baseline_of(case),
        }
    return out


def _baseline_of(case: Case) -> str | None:
    """The before-codecs case an edgeloop case is compared with (same payloads), else None."""
    if case.legacy or case.input not in (None, {"codec": "edgeloop", "topic": "sensors/{device}/climate"}):
        return None
    return next(c.name for c in CASES if c.legacy and c.payload is case.payload)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs: a smoke test, not figures to quote")
    args = ap.parse_args(argv)
    results = run(quick=args.quick)
    width = max(map(len, results))
    print(f"{'case':<{width}}  {'readings/s':>11}  {'samples/s':>11}  {'CPU us/reading':>14}  {'bytes':>6}  rejected")
    for name, r in results.items():
        print(f"{name:<{width}}  {r['readings_per_s']:>11,.0f}  {r['samples_per_s']:>11,.0f}  "
              f"{r['cpu_us_per_reading']:>14.2f}  {r['bytes_per_reading']:>6.0f}  {r['rejected']}")
    return 1 if any(r["rejected"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
