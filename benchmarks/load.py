"""(b), (c), (e): one consumer process under load -- the edge, the naive loop or the bare echo.

Every consumer gets the same treatment, so their figures compare:

- ``flat_out``: C publishers (one per device, 10 devices) offer readings as
  fast as the broker takes them, at QoS 1 (the edge's default input QoS: the
  broker holds what the consumer has not taken yet). Readings processed (the
  consumer's own counter) per second of its busy span, which is timed by a C
  subscriber from the first to the last result.
- ``paced``: C publishers, one per device, fed line by line by a pacing loop,
  hold a fixed offered load (readings/s, round-robin over 100 devices, an
  absolute schedule so the mean rate holds); the loop records
  the wall time of each (device, seq); the C subscriber records when the
  result for that seq arrives (``result.seq`` is the seq of the reading that
  completed the window). Latency = arrival - publish, after a warm-up.
- Both: peak RSS (``VmHWM``) and CPU seconds of the consumer process.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from benchmarks.harness import (
    EdgeProcess,
    FlatOutFeed,
    PacedFeed,
    ReadingSource,
    ResultRecorder,
    ScriptProcess,
    bench_broker,
    percentile,
    results_of,
)

#: QoS of the offered readings: the edge's default input QoS (acknowledged after the outbox has the results).
READING_QOS = 1



@dataclass(frozen=True)
class Consumer:
    """How to start one consumer process, and whether every reading yields a result (echo) or
    every reading but a device's first (a 128-sample window over 64-sample readings)."""

    make: Callable[[object, Path], object]
    result_per_reading: bool = False

    def expected(self, readings: int, devices: int) -> int:
        return readings if self.result_per_reading else readings - devices


def edge(config: dict | None = None) -> Consumer:
    return Consumer(lambda broker, workdir: EdgeProcess(broker, workdir, config=config))


def script(mode: str) -> Consumer:
    return Consumer(lambda broker, workdir: ScriptProcess(broker, workdir, mode, qos=READING_QOS),
                    result_per_reading=mode == "echo")


@dataclass
class Measured:
    """One consumer run: the results to wait for (set by the caller), then its CPU seconds, peak RSS,
    counters and the results recorded."""

    expected: int = 0
    cpu_s: float = 0.0
    rss_mb: float = 0.0
    counters: dict = field(default_factory=dict)
    arrivals: list = field(default_factory=list)


@contextmanager
def measuring(consumer: Consumer, broker, workdir: Path, recorder: ResultRecorder) -> Iterator[Measured]:  # noqa: ANN001
    """Start the consumer; the body offers the load and sets ``expected``; then wait for the results, stop."""
    proc = consumer.make(broker, workdir).start()
    run = Measured()
    try:
        cpu0 = proc.cpu_seconds()
        yield run
        recorder.wait_for(run.expected)
        run.cpu_s = proc.cpu_seconds() - cpu0
        run.rss_mb = proc.peak_rss_mb()
        run.counters = proc.stop()
        run.arrivals = list(results_of(recorder.stop()))
    finally:
        proc.kill()


def _busy_rate(count: int, times: list[float]) -> tuple[float, float]:
    span = max(times) - min(times) if len(times) > 1 else 0.0
    return (count / span if span > 0 else 0.0), span


def flat_out(workdir: Path, quick: bool, consumer: Consumer, tag: str, devices: int = 10) -> dict:
    per_device = 300 if quick else 4_000
    workdir = workdir / tag
    workdir.mkdir(parents=True, exist_ok=True)
    feed = FlatOutFeed(workdir, ReadingSource(devices), devices, per_device, tag=tag)
    expected = consumer.expected(feed.total, devices)
    with bench_broker(workdir) as broker:
        recorder = ResultRecorder(broker, workdir / "results.txt").start()
        try:
            with measuring(consumer, broker, workdir, recorder) as run:
                feed.start(broker, qos=READING_QOS)
                run.expected = expected
        finally:
            feed.close()
            recorder.kill()
    cpu, rss, counters, arrivals = run.cpu_s, run.rss_mb, run.counters, run.arrivals
    processed = counters.get("readings_in", 0)
    readings_per_s, span = _busy_rate(processed, [t for t, _d, _s in arrivals])
    return {
        "devices": devices,
        "offered": feed.total,
        "readings_processed": processed,
        "results_received": len(arrivals),
        "expected_results": expected,
        "readings_per_s": round(readings_per_s, 1),
        "results_per_s": round(len(arrivals) / span, 1) if span > 0 else 0.0,
        "busy_s": round(span, 3),
        "cpu_ms_per_reading": round(1000.0 * cpu / processed, 4) if processed else None,
        "peak_rss_mb": round(rss, 1),
        "counters": {k: v for k, v in counters.items() if v},
    }


def paced(workdir: Path, quick: bool, consumer: Consumer, tag: str, rate: float, devices: int = 100) -> dict:
    duration, warmup = (3.0, 1.0) if quick else (12.0, 2.0)
    workdir = workdir / tag
    workdir.mkdir(parents=True, exist_ok=True)
    source = ReadingSource(devices)
    with bench_broker(workdir) as broker:
        recorder = ResultRecorder(broker, workdir / "results.txt").start()
        feed = None
        try:
            feed = PacedFeed(broker, source, devices, READING_QOS)
            with measuring(consumer, broker, workdir, recorder) as run:
                t_start = time.time()
                sent = feed.run(rate, duration)
                elapsed = time.time() - t_start
                n_sent = int(np.count_nonzero(~np.isnan(sent)))
                run.expected = consumer.expected(n_sent, devices)
        finally:
            if feed is not None:
                feed.close()
            recorder.kill()
    cpu, rss, counters, arrivals, expected = run.cpu_s, run.rss_mb, run.counters, run.arrivals, run.expected
    index = {d: i for i, d in enumerate(source.devices)}
    lat = [(t - sent[index[d], s]) * 1000.0 for t, d, s in arrivals if sent[index[d], s] - t_start >= warmup]
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(n_sent / elapsed, 1),
        "devices": devices,
        "readings": n_sent,
        "results_received": len(arrivals),
        "expected_results": expected,
        "latency_samples": len(lat),
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(float(max(lat)), 2) if lat else None,
        "cpu_percent": round(100.0 * cpu / elapsed, 1),
        "cpu_ms_per_reading": round(1000.0 * cpu / n_sent, 4) if n_sent else None,
        "peak_rss_mb": round(rss, 1),
        "counters": {k: v for k, v in counters.items() if v},
    }


def paired(workdir: Path, quick: bool, rate: float = 1000.0, devices: int = 100, edge_config: dict | None = None,
           tag: str = "paired", protocol: str = "5") -> dict:
    """The edge and a bare paho subscriber (``benchmarks.naive --mode bare``) on the same paced stream, at once.

    Why at once: CPU per message of two processes fed the same messages under the same noise is
    the fairest ratio this machine gives; each process's CPU is utime+stime from /proc over the feed.
    """
    duration, warmup = (3.0, 1.0) if quick else (12.0, 2.0)
    workdir = workdir / tag
    workdir.mkdir(parents=True, exist_ok=True)
    source = ReadingSource(devices)
    with bench_broker(workdir) as broker:
        recorder = ResultRecorder(broker, workdir / "results.txt").start()
        feed = bare = None
        try:
            feed = PacedFeed(broker, source, devices, READING_QOS)
            bare = ScriptProcess(broker, workdir, "bare", qos=READING_QOS, protocol=protocol).start()
            with measuring(edge(edge_config), broker, workdir, recorder) as run:
                bare_cpu0 = bare.cpu_seconds()
                t_start = time.time()
                sent = feed.run(rate, duration)
                elapsed = time.time() - t_start
                n_sent = int(np.count_nonzero(~np.isnan(sent)))
                run.expected = n_sent - devices
            bare_cpu = bare.cpu_seconds() - bare_cpu0
            bare_rss = bare.peak_rss_mb()
            bare_counters = bare.stop()
        finally:
            if bare is not None:
                bare.kill()
            if feed is not None:
                feed.close()
            recorder.kill()
    index = {d: i for i, d in enumerate(source.devices)}
    lat = [(t - sent[index[d], s]) * 1000.0 for t, d, s in run.arrivals if sent[index[d], s] - t_start >= warmup]
    edge_in = run.counters.get("readings_in", 0)
    bare_in = bare_counters.get("readings_in", 0)
    edge_us = 1e6 * run.cpu_s / edge_in if edge_in else None
    bare_us = 1e6 * bare_cpu / bare_in if bare_in else None
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(n_sent / elapsed, 1),
        "devices": devices,
        "readings": n_sent,
        "protocol": protocol,
        "edge": {"readings_in": edge_in, "results_received": len(run.arrivals), "cpu_s": round(run.cpu_s, 3),
                 "cpu_us_per_reading": round(edge_us, 1) if edge_us else None,
                 "cpu_percent": round(100.0 * run.cpu_s / elapsed, 1), "peak_rss_mb": round(run.rss_mb, 1),
                 "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
                 "counters": {k: v for k, v in run.counters.items() if v}},
        "bare": {"messages": bare_in, "cpu_s": round(bare_cpu, 3),
                 "cpu_us_per_message": round(bare_us, 1) if bare_us else None,
                 "cpu_percent": round(100.0 * bare_cpu / elapsed, 1), "peak_rss_mb": round(bare_rss, 1)},
        "cpu_ratio": round(edge_us / bare_us, 3) if edge_us and bare_us else None,
    }
