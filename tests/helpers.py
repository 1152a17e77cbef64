"""Helpers shared by every test tier, each written once (``from helpers import ...``).

- ``result()`` / ``result_payload()``: one inference result as the edge publishes it (the wire
  contract's ``InferenceResult``), every field overridable;
- ``ScriptedSink``: the bridge's sink seam (``Bridge(cfg, sink=...)``), raising scripted errors
  in order and recording what it accepted;
- ``RecordingLink``: what the edge's delivery needs of an ``MqttLink`` (``EdgeDelivery.attach``,
  ``OutboxSender(box, link)``), recording publishes and acks;
- ``video_frames()``: every frame of a video file, decoded by OpenCV;
- ``device_windows()`` / ``fleet_stream()``: simulated vibration windows and the sample batches
  an edge would send for them (the drift and retrain tests of the unit and integration tiers).

Polling is ``lab.servers.eventually`` (with ``alive=`` for the processes a wait depends on);
running a component is ``lab.procs.CliProcess`` (``run_cli`` for one-shot commands).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from edgeloop.contract import SampleBatch
    from edgeloop.devices.simulator import FleetSimulator
    from edgeloop.edge.inference import TfliteModel

SHA = "ab" * 32
TS0 = 1_795_740_561.0


def result(device: str = "dev-1", model: str = "m1", seq: int = 0, **over: Any) -> dict:
    """An inference result (a dict, as JSON would decode it); ``ts`` follows ``seq`` in steps of 1 ms."""
    r = {"device": device, "sensor": "s", "model": model, "model_version": "1", "model_sha256": SHA,
         "ts": TS0 + seq / 1000, "seq": seq, "outputs": [0.5], "score": 0.1, "anomaly": False,
         "label": "ok", "latency_ms": 1.0}
    r.update(over)
    return r


def result_payload(device: str = "dev-1", model: str = "m1", seq: int = 0, **over: Any) -> bytes:
    """``result()`` as the bytes of an MQTT payload."""
    return json.dumps(result(device, model, seq, **over)).encode()


class ScriptedSink:
    """A bridge sink that raises the scripted errors in order, then accepts; records every accepted batch."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.batches: list[list[str]] = []
        self.attempts = 0
        self.closed = False

    def write(self, lines: list[str]) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.batches.append(list(lines))

    def close(self) -> None:
        self.closed = True


class RecordingLink:
    """What the edge's delivery uses of ``MqttLink``: ``connected``, ``publish`` (returns an info with a
    ``mid``), ``ack`` and ``set_max_inflight``; every publish and ack is recorded."""

    class Info:
        def __init__(self, mid: int) -> None:
            self.mid = mid

    def __init__(self) -> None:
        import threading

        self.connected = threading.Event()
        self.connected.set()
        self.sent: list[tuple[int, str, bytes]] = []
        self.acks: list[tuple[int, int, int]] = []
        self._mid = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Info:
        self._mid += 1
        self.sent.append((self._mid, topic, payload))
        return self.Info(self._mid)

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        self.acks.append((mid, qos, generation))
        return True

    def set_max_inflight(self, limit: int) -> None:
        pass


def video_frames(path: Any) -> list[np.ndarray]:
    """Every frame of the video at ``path`` (BGR arrays, as OpenCV and the camera publisher read them)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()


# --------------------------------------------------------------------------- simulated fleets (drift, retrain)

#: Share of windows an edge keeps as random samples in ``fleet_stream``.
FRACTION = 0.3


def device_windows(sim: FleetSimulator, device: int, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(end time of each window in simulated seconds, its raw features), as the edge cuts them."""
    import numpy as np

    from edgeloop.bridge.training.autoencoder import DEFAULT_VIBRATION_PIPELINE, raw_features
    from edgeloop.edge.stages import build_pipeline

    stages = DEFAULT_VIBRATION_PIPELINE
    pipeline = build_pipeline([s for s in stages if s["type"] != "normalize"], in_channels=3)
    n = int(duration_s / sim.chunk_s)
    block = sim.vibration_samples(device, 0, n * sim.chunk_size)
    times, windows = [], []
    for k in range(n):
        lo = k * sim.chunk_size
        for w in pipeline.push(("d", "v"), block.samples[lo : lo + sim.chunk_size], float(block.t[lo]), None, k):
            windows.append(w.data)
            times.append(float(block.t[lo + sim.chunk_size - 1]))
    return np.array(times), raw_features(windows, stages)


def fleet_stream(
    model: TfliteModel, sims: list[FleetSimulator], duration_s: float, seed: int = 0,
    switch: dict[int, tuple[float, FleetSimulator]] | None = None,
) -> list[tuple[float, SampleBatch]]:
    """(simulated time, random-fraction SampleBatch of one row), in time order; device i comes from
    ``sims[i]``, or from ``switch[i][1]`` from simulated time ``switch[i][0]`` on."""
    import numpy as np

    from edgeloop.contract import SampleBatch, SampleRow

    rng = np.random.default_rng(seed)
    norm = model.normalization
    events = []
    for i, sim in enumerate(sims):
        t, raw = device_windows(sim, i, duration_s)
        if switch and i in switch:
            at, other = switch[i]
            raw = np.where((t >= at)[:, None], device_windows(other, i, duration_s)[1], raw)
        x = ((raw - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)).astype(np.float32)
        scores = model.run(x)[:, 0]
        for k in np.flatnonzero(rng.random(len(t)) < FRACTION):
            row = SampleRow(ts=1.7e9 + t[k], seq=int(k), features=raw[k].tolist(), score=float(scores[k]),
                            anomaly=bool(scores[k] > model.threshold), reason="random")
            events.append((t[k], SampleBatch(device=f"dev-{i:03d}", sensor="vibration", model=model.name,
                                             model_version=model.version, model_sha256=SHA, rows=[row])))
    events.sort(key=lambda e: e[0])
    return events
