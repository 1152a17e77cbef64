"""Synthetic belt scenes: deterministic frames with ground truth, and the video file writer."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from helpers import video_frames

from edgeloop.devices.scenes import LABELS, SceneSimulator, labels_path, read_labels, write_video


def test_frames_are_a_pure_function_of_seed_and_index():
    a, b = SceneSimulator(seed=4), SceneSimulator(seed=4)
    for i in (0, 7, 123):
        (img_a, lab_a), (img_b, lab_b) = a.render(i), b.render(i)
        assert lab_a == lab_b and np.array_equal(img_a, img_b)
        assert img_a.shape == (240, 320, 3) and img_a.dtype == np.uint8
    assert not np.array_equal(SceneSimulator(seed=5).render(7)[0], a.render(7)[0])


def test_label_mix_follows_the_probabilities_and_items_span_frames():
    sim = SceneSimulator(seed=1, p_empty=0.25, p_defect=0.25)
    counts = Counter(sim.labels(4000))
    assert set(counts) == set(LABELS)
    assert abs(counts["empty"] / 4000 - 0.25) < 0.03 and abs(counts["defect"] / 4000 - 0.25) < 0.03
    moving = SceneSimulator(seed=2, frames_per_item=5)
    labels = moving.labels(50)
    assert all(len(set(labels[k : k + 5])) == 1 for k in range(0, 50, 5))


def test_parts_and_defects_are_visible():
    sim = SceneSimulator(seed=3)
    empty = next(i for i in range(50) if sim.label(i) == "empty")
    part = next(i for i in range(50) if sim.label(i) != "empty")
    belt = sim.render(empty)[0].astype(float)
    # A part is a bright object on a dark belt: far more bright pixels than an empty belt has.
    band = slice(int(0.2 * 240), int(0.8 * 240))
    bright = lambda img: int((img[band].mean(axis=2) > 110).sum())
    assert bright(sim.render(part)[0].astype(float)) > 20 * max(1, bright(belt))
    with pytest.raises(ValueError):
        SceneSimulator(p_empty=0.8, p_defect=0.3)


def test_video_file_round_trips_with_its_labels_sidecar(tmp_path):
    path = tmp_path / "belt.avi"
    labels = write_video(path, 12, fps=10, width=160, height=120, seed=8, frames_per_item=3)
    assert labels == SceneSimulator(160, 120, seed=8, frames_per_item=3).labels(12)
    assert read_labels(path) == read_labels(labels_path(path)) == labels
    assert json.loads(labels_path(path).read_text())["fps"] == 10
    frames = video_frames(path)
    assert len(frames) == 12 and frames[0].shape == (120, 160, 3)
    original = SceneSimulator(160, 120, seed=8, frames_per_item=3).render(0)[0]
    assert np.abs(frames[0].astype(int) - original).mean() < 6  # MJPG is lossy, but close
