"""Shared plumbing of the benchmarks: servers, load generators, recorders, machine facts.

Why one module: every measurement must see the same broker configuration, the
same realistic payloads and the same way of timing results, or the ratios
between a product figure and its limit/baseline would compare different things.

- ``bench_broker``: mosquitto on a free loopback port with ``BROKER_CONF``.
- ``ReadingSource``: realistic vibration readings (64 samples x 3 axes from
  ``edgeloop.devices.simulator``), rendered to JSON lines cheaply from a pool of chunks.
- ``FlatOutFeed``: one C publisher (``mosquitto_pub -l``) per device, reading
  pre-written files: offered load as fast as the broker takes it.
- ``ResultRecorder``: a C subscriber (``mosquitto_sub -F '%U %t %p'``) that
  timestamps every arrival with the wall clock and costs the measured process
  no CPU of its own.
- ``EdgeProcess`` / ``ScriptProcess``: the consumer under test as a
  subprocess (``lab.procs.CliProcess``): online wait, CPU seconds and peak RSS
  from /proc, the counters it reports when it stops.

Connected clients, watchers and config files come from the workshop
(``lab.mqtt``, ``lab.configs``), as for the tests and the demos.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lab.configs import write_config
from lab.mqtt import Watcher, close, connect
from lab.procs import CliProcess
from lab.servers import Mosquitto, eventually

#: Broker settings for every benchmark (mosquitto 2.x): no Nagle delay on small
#: packets, no per-client queue limit (a slow subscriber backs up in the broker
#: instead of losing QoS 0 messages, so nothing is dropped before the process we
#: measure), and a large in-flight window so QoS 1 is not throttled by acks.
BROKER_CONF = "set_tcp_nodelay true\nmax_queued_messages 0\nmax_inflight_messages 1000\n"

READING_CHUNK = 64  # samples per vibration reading (the simulator's default)
SAMPLE_RATE_HZ = 1000.0  # natural accelerometer rate: one reading per 64 ms per device


def mosquitto_bin(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if not found:
        raise SystemExit(f"{name} not found: run `make deps`")
    return found


@contextmanager
def bench_broker(workdir: Path) -> Iterator[Mosquitto]:
    with Mosquitto(workdir / "mosquitto", extra_conf=BROKER_CONF) as broker:
        yield broker


# ------------------------------------------------------------------------ payloads


class ReadingSource:
    """Realistic vibration readings for ``n_devices`` devices, as JSON text.

    The sample values come from ``edgeloop.devices.simulator`` (shaft harmonics, noise,
    a few bearing faults), rounded to 4 decimals like the simulator publishes;
    each device cycles through ``pool`` consecutive chunks so that rendering a
    payload costs a string format, not a JSON encode of 192 floats.
    """

    def __init__(self, n_devices: int, seed: int = 1, pool: int = 32) -> None:
        from edgeloop.devices.simulator import FleetSimulator, device_id

        sim = FleetSimulator(n_devices=n_devices, seed=seed, anomaly_rate=0.01, sensors=("vibration",))
        self.devices = [device_id(i) for i in range(n_devices)]
        self.topics = [f"sensors/{d}/vibration" for d in self.devices]
        self._chunks = [
            [
                json.dumps(np.round(sim.vibration_chunk(i, k)[0].astype(np.float64), 4).tolist(), separators=(",", ":"))
                for k in range(pool)
            ]
            for i in range(n_devices)
        ]
        self.pool = pool

    def payload(self, device: int, seq: int, ts: float, rate_hz: float = SAMPLE_RATE_HZ) -> str:
        values = self._chunks[device][seq % self.pool]
        return f'{{"v":1,"ts":{ts:.6f},"seq":{seq},"rate_hz":{rate_hz:g},"values":{values}}}'

    def sample(self) -> dict:
        """One rendered reading, for the report."""
        text = self.payload(0, 0, time.time())
        return {"bytes": len(text), "samples": READING_CHUNK, "channels": 3}


class FlatOutFeed:
    """One ``mosquitto_pub -l`` per device, each publishing ``per_device`` readings from a file.

    The files are written before timing starts; ``ts`` is the wall clock at
    writing plus 64 ms per reading (the natural sample rate), so it is realistic.
    """

    def __init__(self, workdir: Path, source: ReadingSource, devices: int, per_device: int, tag: str) -> None:
        self.paths: list[tuple[str, Path]] = []
        start = time.time()
        step = READING_CHUNK / SAMPLE_RATE_HZ
        feed_dir = workdir / f"feed-{tag}"
        feed_dir.mkdir(parents=True, exist_ok=True)
        for d in range(devices):
            path = feed_dir / f"{source.devices[d]}.jsonl"
            with open(path, "w") as fh:
                fh.write("\n".join(source.payload(d, s, start + s * step) for s in range(per_device)) + "\n")
            self.paths.append((source.topics[d], path))
        self.total = devices * per_device

    def start(self, broker: Mosquitto, qos: int = 0) -> "FlatOutFeed":
        """Start every publisher (``cat FILE - | mosquitto_pub -l``); their input stays open until ``close()``.

        Why held open: mosquitto_pub 2.0.x ``-l`` disconnects at end of input
        without waiting for queued QoS 1 messages, which are then lost (the
        broker logs a bogus "out of memory"); so the caller closes only once
        everything arrived. ``cat`` keeps Python out of the data path.
        """
        self._procs = []
        for topic, path in self.paths:
            cmd = [mosquitto_bin("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
                   "-V", "mqttv5", "-l", "-t", topic]
            self._procs.append(subprocess.Popen(["sh", "-c", 'cat "$0" - | "$@"', str(path), *cmd],
                                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE))
        return self

    def close(self, timeout_s: float = 30.0) -> None:
        for proc in getattr(self, "_procs", []):
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        for proc in getattr(self, "_procs", []):
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.returncode:
                err = proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"mosquitto_pub failed ({proc.returncode}): {err}")


class PacedFeed:
    """One ``mosquitto_pub -l`` per device, fed line by line by a pacing loop in this process.

    Why C publishers here too: at 5,000 readings/s a paho publisher in this
    process needed about half a core, taken on a 2-core box from the process
    under test; writing a line into a pipe costs microseconds. Each reading's
    ``ts`` (and the recorded publish time) is the wall clock when its line is
    written; ``rate_hz`` is the sample rate the offered reading rate implies.
    """

    def __init__(self, broker: Mosquitto, source: ReadingSource, devices: int, qos: int) -> None:
        self.source = source
        self.devices = devices
        connected = _connections(broker)
        self._procs = [
            subprocess.Popen([mosquitto_bin("mosquitto_pub"), "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
                              "-V", "mqttv5", "-l", "-t", source.topics[d]],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, bufsize=0)
            for d in range(devices)
        ]
        try:
            eventually(lambda: _connections(broker) >= connected + devices, timeout=30.0, interval=0.05,
                       message="paced publishers did not all connect")
        except AssertionError:
            self.close(timeout_s=5.0)
            raise

    def run(self, rate: float, duration_s: float) -> np.ndarray:
        """Offer ``rate`` readings/s round-robin over the devices; return publish wall times as [device, seq]."""
        n = int(rate * duration_s)
        devices, payload = self.devices, self.source.payload
        sent = np.full((devices, -(-n // devices)), np.nan)
        rate_hz = READING_CHUNK * rate / devices
        fds = [p.stdin.fileno() for p in self._procs]
        interval = 1.0 / rate
        t0 = time.perf_counter()
        i = 0
        while i < n:
            now = time.perf_counter()
            due = t0 + i * interval
            if due > now:
                time.sleep(due - now)
                continue
            while i < n and t0 + i * interval <= now:  # absolute schedule: a late wake-up sends all that is due
                d, seq = i % devices, i // devices
                ts = time.time()
                os.write(fds[d], (payload(d, seq, ts, rate_hz) + "\n").encode())
                sent[d, seq] = ts
                i += 1
        return sent

    def close(self, timeout_s: float = 30.0) -> None:
        """Only once everything arrived (see FlatOutFeed.start for why)."""
        for proc in self._procs:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        for proc in self._procs:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _connections(broker: Mosquitto) -> int:
    """Client connections the broker has logged so far."""
    try:
        return broker.log_path.read_text(errors="replace").count("New client connected")
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------ recording results


@dataclass
class Arrival:
    t: float  # wall clock at the subscriber, seconds
    topic: str
    payload: str


class ResultRecorder:
    """``mosquitto_sub`` on ``results/+/+`` (QoS 0) writing ``<unix ns time> <topic> <payload>`` lines.

    Line-buffered (``stdbuf -oL``) so readiness can be checked with a probe
    message; the timestamp is taken by mosquitto_sub when the message arrives.
    """

    def __init__(self, broker: Mosquitto, path: Path, topic: str = "results/+/+") -> None:
        self.broker = broker
        self.path = path
        self.topic = topic
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ResultRecorder":
        self._out = open(self.path, "wb")
        cmd = [mosquitto_bin("mosquitto_sub"), "-h", self.broker.host, "-p", str(self.broker.port), "-q", "0",
               "-V", "mqttv5", "-t", self.topic, "-t", "bench-probe/ready", "-F", "%U %t %p"]
        stdbuf = shutil.which("stdbuf")
        self.proc = subprocess.Popen(([stdbuf, "-oL"] if stdbuf else []) + cmd, stdout=self._out,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            probe = connect(self.broker.port, host=self.broker.host, client_id="bench-probe")
        except Exception:
            self.kill()
            raise
        try:
            def ready() -> bool:
                probe.publish("bench-probe/ready", b"1", qos=0)
                return self.path.stat().st_size > 0
            eventually(ready, timeout=10.0, interval=0.05, message="mosquitto_sub did not subscribe")
        except AssertionError:
            self.kill()
            raise
        finally:
            close(probe)
        time.sleep(0.2)  # let late probe copies land before counting starts
        self._offset = self.path.stat().st_size
        self._results = 0
        return self

    def results(self) -> int:
        """Results recorded since start(), single or batched (each has one ``"seq":``); reads only what is new."""
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1
        self._results += chunk.count(b'"seq":', 0, end)
        self._offset += end
        return self._results

    def wait_for(self, expected: int, stall_s: float = 10.0, timeout_s: float = 900.0) -> int:
        """Poll until ``expected`` results arrived, or none for ``stall_s``; return the count."""
        deadline = time.monotonic() + timeout_s
        last, since = self.results(), time.monotonic()
        while last < expected and time.monotonic() < deadline and time.monotonic() - since < stall_s:
            time.sleep(0.05)
            now = self.results()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def size(self) -> int:
        """Bytes recorded so far: cheap to poll while waiting for the output to go quiet."""
        return self.path.stat().st_size

    def kill(self) -> None:
        """Idempotent; for ``finally`` blocks (mosquitto_sub would otherwise retry a stopped broker forever)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self._out.closed:
            self._out.close()

    def stop(self) -> list[Arrival]:
        self.kill()
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                t, topic, payload = line.rstrip("\n").split(" ", 2)
                if topic.startswith("results/"):
                    out.append(Arrival(float(t), topic, payload))
        return out


def results_of(arrivals: list[Arrival]) -> Iterator[tuple[float, str, int]]:
    """(arrival time, device, seq) of every result, single or batched (JSON array)."""
    for a in arrivals:
        data = json.loads(a.payload)
        for r in data if isinstance(data, list) else [data]:
            yield a.t, r["device"], r["seq"]


def wait_quiet(count, quiet_s: float = 1.0, timeout_s: float = 300.0) -> int:
    """Poll ``count()`` until it stops changing for ``quiet_s``; return the last value."""
    deadline = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


# ------------------------------------------------------------------------ measured processes


class _Measured:
    """A consumer under test in its own process (``lab.procs.CliProcess``): CPU time, peak RSS, stop."""

    proc: CliProcess

    def cpu_seconds(self) -> float:
        return self.proc.cpu_seconds()

    def peak_rss_mb(self) -> float:
        return self.proc.peak_rss_mb()

    def kill(self) -> None:
        self.proc.kill()

    def _terminate(self, timeout_s: float) -> None:
        """SIGTERM; a process that does not drain within ``timeout_s`` or exits non-zero fails the run."""
        code = self.proc.terminate(timeout_s)
        if code != 0:
            raise RuntimeError(f"{self.proc} exited with {code}; log:\n{self.proc.log_tail()}")


class EdgeProcess(_Measured):
    """``python -m edgeloop.cli edge run --broker URL --node-id NODE [-c CONFIG]``, as users run it.

    Its state (the disk outbox) lives in the run's workdir; ``stop()`` returns
    the counters it logs once it has drained on SIGTERM.
    """

    def __init__(self, broker: Mosquitto, workdir: Path, node_id: str = "bench", config: dict | None = None,
                 program: list[str] | None = None) -> None:
        """``program``: e.g. the ``edgeloop`` console script of another venv (default: this interpreter)."""
        args = ["edge", "run", "--broker", broker.url, "--node-id", node_id]
        if config:
            args += ["-c", str(write_config(workdir / f"edge-{node_id}.yaml", config))]
        self.proc = CliProcess(args, workdir / "edge.log", env={"EDGELOOP_STATE_DIR": str(workdir / "edge-state")},
                               program=program)
        self.broker = broker
        self.node_id = node_id

    def start(self, timeout_s: float = 60.0) -> "EdgeProcess":
        with Watcher(self.broker.port, [f"status/{self.node_id}"], host=self.broker.host) as watch:
            self.proc.start()
            try:
                watch.wait_online(self.node_id, self.proc, timeout=timeout_s)
            except AssertionError as exc:
                self.kill()
                raise RuntimeError(f"edge did not come online: {exc}") from None
        return self

    def stop(self, timeout_s: float = 120.0) -> dict:
        """SIGTERM (drain), wait for the exit; the counters it logged."""
        self._terminate(timeout_s)
        return self.proc.final_stats()


class ScriptProcess(_Measured):
    """``python -m benchmarks.naive --mode naive|echo``: prints ``ready``, and its counters on SIGTERM."""

    def __init__(self, broker: Mosquitto, workdir: Path, mode: str, qos: int, protocol: str = "5") -> None:
        self.name = mode
        self.proc = CliProcess(["--host", broker.host, "--port", str(broker.port), "--mode", mode, "--qos", str(qos),
                                "--protocol", protocol],
                               workdir / f"{mode}.log", module="benchmarks.naive", pipe_stdout=True)

    def start(self, timeout_s: float = 60.0) -> "ScriptProcess":
        self.proc.start()
        line = self.proc.stdout.readline().decode().strip()
        if line != "ready":
            self.kill()
            raise RuntimeError(f"{self.name} did not start ({line!r}); log:\n{self.proc.log_tail()}")
        return self

    def stop(self, timeout_s: float = 60.0) -> dict:
        self._terminate(timeout_s)
        return json.loads(self.proc.stdout.read().decode().strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ------------------------------------------------------------------------ machine facts


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    try:
        mosq = subprocess.run([mosquitto_bin("mosquitto"), "-h"], capture_output=True, text=True, timeout=5).stdout
        mosquitto = mosq.splitlines()[0].split()[-1] if mosq else None
    except (OSError, subprocess.SubprocessError):
        mosquitto = None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "litert": _version("ai-edge-litert"),
        "paho_mqtt": _version("paho-mqtt"),
        "pydantic": _version("pydantic"),
        "influxdb_client": _version("influxdb-client"),
        "mosquitto": mosquitto,
        "kernel": platform.release(),
        "broker_conf": BROKER_CONF.strip().split("\n"),
    }
