"""The vision engine with the bundled models: labels, top-k, batching, bad frames, samples, config errors."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from edgeloop.devices.scenes import LABELS, SceneSimulator, encode_jpeg
from edgeloop.errors import ConfigError
from edgeloop.rejects import Rejects
from edgeloop.edge.config import load_edge_config
from edgeloop.contract import (
    FrameMeta,
    FrameSample,
    InferenceResult,
    encode_frame,
    frame_topic,
)
from edgeloop.edge.inference import TfliteModel
from edgeloop.edge.vision.config import BUNDLED_VISION_MODEL, FrameSampleSettings, VisionSettings
from edgeloop.edge.vision.engine import VisionEngine
from edgeloop.edge.vision.pipeline import build_image_pipeline
from edgeloop.edge.vision.samples import FrameSampler
from edgeloop.edge.vision.slots import PendingFrame

FLOAT_MODEL = BUNDLED_VISION_MODEL.with_name("parts_cnn.tflite")


class Letters(list):
    def __call__(self, topic: str, payload: bytes) -> None:
        self.append(json.loads(payload))


def engine(model: Path = BUNDLED_VISION_MODEL, **camera) -> tuple[VisionEngine, Letters]:
    letters = Letters()
    rejects = Rejects("edge", logging.getLogger("test"), publish=letters, node="n1")
    settings = VisionSettings.model_validate({"cameras": [{"camera": "belt", "model": {"path": str(model)}, **camera}],
                                              "max_batch": 4, "max_frame_bytes": 200_000})
    return VisionEngine.build(settings, rejects, node_id="n1", site="s1"), letters


def scene_frames(n: int, seed: int = 21, device: str = "cam-{}") -> tuple[list[PendingFrame], list[str]]:
    sim = SceneSimulator(seed=seed)
    frames, truth = [], []
    for i in range(n):
        image, label = sim.render(i)
        meta = FrameMeta(ts=1.75e9 + i, seq=i, label=label)
        frames.append(PendingFrame(frame_topic(device.format(i), "belt"), encode_jpeg(image, 85), meta.user_properties(), 0.0))
        truth.append(label)
    return frames, truth


def results(messages) -> list[InferenceResult]:
    return [InferenceResult.model_validate_json(p) for t, p in messages if t.startswith("results/")]


@pytest.mark.parametrize("model", [BUNDLED_VISION_MODEL, FLOAT_MODEL])
def test_frames_are_classified_in_batches_with_topk(model):
    eng, letters = engine(model, top_k=2)
    frames, truth = scene_frames(10)
    out = results(eng.process(frames))
    assert len(out) == 10 and letters == []
    assert eng.counters["frame_batches"] == 3  # 10 frames, max_batch 4
    m = TfliteModel(model)
    for r in out:
        assert (r.device, r.sensor, r.model, r.node, r.site) == (f"cam-{r.seq}", "belt", m.name, "n1", "s1")
        assert r.ts == 1.75e9 + r.seq and r.model_sha256 == m.sha256
        assert len(r.outputs) == len(LABELS) and abs(sum(r.outputs) - 1) < 0.02
        assert [t.score for t in r.topk] == sorted(r.outputs, reverse=True)[:2]  # descending (ties: any order)
        assert all(r.outputs[LABELS.index(t.label)] == t.score for t in r.topk)
        assert r.topk[0].score == r.score == max(r.outputs) and r.label == r.topk[0].label
        assert r.anomaly == (r.label == "defect")
    accuracy = np.mean([r.label == truth[r.seq] for r in out])
    assert accuracy >= 0.8, accuracy


def test_results_equal_the_model_run_directly_on_the_same_pixels():
    eng, _ = engine()
    frames, _ = scene_frames(6, seed=5)
    model = TfliteModel(BUNDLED_VISION_MODEL)
    pipeline = build_image_pipeline(None, model)
    rows = np.stack([pipeline.process(f.payload) for f in frames])
    want = model.run(rows)
    got = results(eng.process(frames))
    np.testing.assert_allclose([r.outputs for r in got], want, atol=1e-6)


def test_bad_frames_are_dead_lettered_and_the_good_ones_around_them_classified():
    eng, letters = engine()
    good, _ = scene_frames(3)
    meta = FrameMeta(ts=1.75e9, seq=1).user_properties()
    jpeg = good[0].payload
    noise = encode_jpeg(np.zeros((40, 50, 3), np.uint8))
    bad = [
        ("frames/x/belt", b"", meta, "empty_frame"),
        ("frames/x/belt", b"\xff\xd8\xff\xe0corrupt" * 20, meta, "corrupt_image"),
        ("frames/x/belt", jpeg[: len(jpeg) // 2], meta, "truncated_image"),
        ("frames/x/belt", jpeg + b"\x00" * 200_000, meta, "oversized"),
        ("frames/x/belt", jpeg, None, "missing_meta"),
        ("frames/x/belt", b"\x89PNG\r\n", meta, "not_jpeg"),
        ("frames/x/other", jpeg, meta, "no_pipeline"),
        ("frames/x/y/belt", jpeg, meta, "bad_topic"),
        ("frames/x/belt", b"EFRM\x7f\x00{}" + jpeg, None, "bad_header"),
    ]
    eng2, letters2 = engine(stages=[{"type": "decode", "expect_size": [320, 240]}, {"type": "color", "to": "rgb"},
                                    {"type": "resize"}, {"type": "normalize", "from_model": True}])
    frames = [good[0]] + [PendingFrame(t, p, props, 0.0) for t, p, props, _ in bad] + good[1:]
    out = results(eng.process(frames))
    assert len(out) == 3
    assert [d["reason"] for d in letters] == [r for *_, r in bad]
    assert all(d["component"] == "edge" and d["detail"] for d in letters)
    wrong = PendingFrame("frames/x/belt", encode_frame(FrameMeta(ts=1.75e9, seq=9), noise, header=True), None, 0.0)
    assert results(eng2.process([wrong, good[1]])) and [d["reason"] for d in letters2] == ["wrong_size"]


def test_frames_older_than_max_age_are_skipped_and_counted():
    letters = Letters()
    rejects = Rejects("edge", logging.getLogger("test"), publish=letters)
    settings = VisionSettings.model_validate({"cameras": [{"camera": "belt"}], "max_age_ms": 500})
    eng = VisionEngine.build(settings, rejects, node_id="n1")
    frames, _ = scene_frames(2)
    now = time.time()
    fresh = FrameMeta(ts=now, seq=1).user_properties()
    late = FrameMeta(ts=now - 2.0, seq=2).user_properties()
    out = results(eng.process([PendingFrame(frames[0].topic, frames[0].payload, fresh, 0.0),
                               PendingFrame(frames[1].topic, frames[1].payload, late, 0.0)]))
    assert [r.seq for r in out] == [1]
    assert eng.counters["frames_dropped_expired"] == 1 and letters == []


def low_confidence_result() -> InferenceResult:
    """A camera result scored 0.5: below the sampler's 0.6, so a sample candidate."""
    return InferenceResult(
        device="cam-0", sensor="belt", model="parts_cnn_int8", model_version="1", model_sha256="0" * 64, ts=1.75e9,
        seq=0, outputs=[0.3, 0.5, 0.2], score=0.5, anomaly=False, label="ok", latency_ms=1.0,
    )


def test_sampler_keeps_low_confidence_frames_within_the_hourly_budget():
    clock = [1000.0]
    sampler = FrameSampler(FrameSampleSettings(enabled=True, max_per_hour=2, max_width=80), threshold=0.6,
                           clock=lambda: clock[0])
    frames, _ = scene_frames(1)
    result = low_confidence_result()
    meta = FrameMeta(ts=1.75e9, seq=0, label="defect")
    confident = result.model_copy(update={"score": 0.9})
    assert sampler.consider(confident, meta, frames[0].payload) is None
    sent = [sampler.consider(result, meta, frames[0].payload) for _ in range(3)]
    assert sent[2] is None and sampler.counters["frame_samples_dropped_budget"] == 1
    topic, payload = sent[0]
    sample = FrameSample.model_validate_json(payload)
    assert topic == "samples/cam-0/parts_cnn_int8"
    assert (sample.stage, sample.truth, sample.label, sample.width, sample.height) == ("frame", "defect", "ok", 80, 60)
    assert sample.jpeg()[:2] == b"\xff\xd8"
    clock[0] += 3600.0
    assert sampler.consider(result, meta, frames[0].payload) is not None  # the hour rolled over


def test_sampler_budgets_stay_bounded_whatever_device_ids_peers_invent(monkeypatch):
    from edgeloop.edge.vision import samples as samples_module

    monkeypatch.setattr(samples_module, "MAX_TRACKED_STREAMS", 50)
    clock = [1000.0]
    sampler = FrameSampler(FrameSampleSettings(enabled=True, max_per_hour=1, max_width=80), threshold=0.6,
                           clock=lambda: clock[0])
    frames, _ = scene_frames(1)
    base = low_confidence_result()
    meta = FrameMeta(ts=1.75e9, seq=0)
    for i in range(500):
        clock[0] += 1.0
        assert sampler.consider(base.model_copy(update={"device": f"fake-{i}"}), meta, frames[0].payload) is not None
        assert len(sampler._sent) <= 50
    # The most recent streams keep their budget: a second low-confidence frame is over budget.
    assert sampler.consider(base.model_copy(update={"device": "fake-499"}), meta, frames[0].payload) is None


def test_engine_publishes_samples_next_to_results():
    eng, _ = engine(samples={"enabled": True, "below_score": 1.0, "max_per_hour": 1})
    frames, _ = scene_frames(3, device="cam-0")
    messages = eng.process(frames[:1]) + eng.process(frames[1:2])
    assert [t.split("/")[0] for t, _ in messages] == ["results", "samples", "results"]
    assert eng.all_counters()["frame_samples_dropped_budget"] == 1


def test_stage_errors_in_the_edge_config_name_the_file_and_the_field(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text(
        "vision:\n  cameras:\n    - camera: belt\n      stages:\n        - {type: decode}\n        - {type: resize}\n"
    )
    cfg = load_edge_config(path)
    rejects = Rejects("edge", logging.getLogger("test"))
    with pytest.raises(ConfigError) as info:
        VisionEngine.build(cfg.vision, rejects, node_id="n", source=str(path))
    assert info.value.source == str(path)
    assert info.value.problems[0].startswith("vision.cameras.0.stages[1]:") and "rgb" in info.value.problems[0]
    path.write_text("vision:\n  cameras:\n    - camera: belt\n      stages: [{type: decode, colour: rgb}]\n")
    with pytest.raises(ConfigError) as info:
        load_edge_config(path)
    assert any("vision.cameras.0.stages.0" in p and "unknown key" in p for p in info.value.problems)
    assert load_edge_config(None).vision is None  # absent by default: no frame subscription
