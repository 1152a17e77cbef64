"""Preprocessing numerics checked against plain-numpy reference implementations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgeloop.errors import PayloadError
from edgeloop.edge.stages import PipelineError, build_pipeline
from reference import STATS, reference_features

def vib_pipeline(size=128, hop=64, bands=4, stats=STATS, extra=()):
    return build_pipeline(
        [{"type": "window", "size": size, "hop": hop}, {"type": "features", "stats": stats, "fft_bands": bands}, *extra],
        in_channels=3,
    )


@pytest.mark.parametrize("size,bands", [(128, 4), (64, 1), (256, 8), (17, 3), (2, 1)])
def test_features_match_numpy_reference(size, bands):
    rng = np.random.default_rng(size)
    windows = [rng.normal(loc=0.3, scale=2.0, size=(size, 3)).astype(np.float32) for _ in range(7)]
    windows.append(np.zeros((size, 3), dtype=np.float32))  # degenerate: rms = std = 0
    pipe = vib_pipeline(size=size, hop=size, bands=bands)
    got = pipe.transform(windows)
    want = np.stack([reference_features(w, STATS, bands) for w in windows])
    assert got.shape == (8, 3 * (len(STATS) + bands)) == (8, *pipe.output_shape)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)


def test_features_detect_a_tone_in_the_right_band():
    t = np.arange(128) / 1000.0
    tone = np.sin(2 * np.pi * (51 * 1000 / 128) * t)  # FFT bin 51 of 64 -> 4th of 4 bands
    window = np.stack([tone, tone * 0, tone * 0], axis=1).astype(np.float32)
    feats = vib_pipeline(stats=[], bands=4).transform([window])[0]
    assert np.argmax(feats[:4]) == 3
    assert feats[3] > 100 * feats[:3].sum()


@given(
    chunks=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=30),
    size=st.integers(min_value=1, max_value=40),
    hop_frac=st.floats(min_value=0.01, max_value=1.0),
)
@settings(max_examples=200, deadline=None)
def test_windows_equal_reference_slicing_for_any_chunking(chunks, size, hop_frac):
    hop = max(1, int(size * hop_frac))
    total = sum(chunks)
    stream = np.arange(total * 2, dtype=np.float32).reshape(total, 2)
    pipe = build_pipeline([{"type": "window", "size": size, "hop": hop}], in_channels=2)
    got, pos = [], 0
    for seq, n in enumerate(chunks):
        got += pipe.push(("d", "s"), stream[pos : pos + n], ts=100.0 + pos, rate_hz=1.0, seq=seq)
        pos += n
    ends = list(range(size, total + 1, hop))
    assert len(got) == len(ends)
    for window, end in zip(got, ends):
        np.testing.assert_array_equal(window.data, stream[end - size : end])
        assert window.ts_end == pytest.approx(100.0 + end - 1)  # time of the window's last sample
    # windows are copies: later pushes never alter an emitted window
    if got:
        np.testing.assert_array_equal(got[0].data, stream[ends[0] - size : ends[0]])


def test_streams_are_independent_and_resettable():
    pipe = build_pipeline([{"type": "window", "size": 4, "hop": 4}], in_channels=1)
    a = pipe.push(("a", "s"), np.ones((3, 1), np.float32), 1.0, None, 0)
    b = pipe.push(("b", "s"), np.full((3, 1), 2.0, np.float32), 1.0, None, 0)
    assert a == [] and b == []
    (wa,) = pipe.push(("a", "s"), np.ones((1, 1), np.float32), 2.0, None, 1)
    np.testing.assert_array_equal(wa.data, np.ones((4, 1)))
    pipe.reset(("b", "s"))
    assert pipe.push(("b", "s"), np.full((1, 1), 2.0, np.float32), 2.0, None, 1) == []


def test_windows_without_rate_get_unique_timestamps():
    pipe = build_pipeline([{"type": "window", "size": 2, "hop": 1}], in_channels=1)
    windows = pipe.push(("a", "s"), np.ones((5, 1), np.float32), 50.0, None, 3)
    assert len(windows) == 4
    assert len({w.ts_end for w in windows}) == 4
    assert all(w.seq == 3 for w in windows)


def test_sample_stages_select_scale_standardize():
    pipe = build_pipeline(
        [
            {"type": "select", "channels": [2, 0]},
            {"type": "scale", "offset": [1.0, 0.0], "factor": 2.0},
            {"type": "standardize", "mean": 0.0, "std": [2.0, 4.0]},
        ],
        in_channels=3,
    )
    (window,) = pipe.push(("a", "s"), np.array([[1.0, 5.0, 3.0]], np.float32), 1.0, None, 0)
    np.testing.assert_allclose(window.data, [(3 - 1) * 2 / 2, (1 - 0) * 2 / 4])
    assert pipe.output_shape == (2,)


def test_normalize_uses_model_statistics():
    stats = {"mean": [1.0] * 30, "std": [2.0] * 30}
    pipe_norm = build_pipeline(
        [{"type": "window", "size": 128, "hop": 64}, {"type": "features"}, {"type": "normalize", "from_model": True}],
        in_channels=3,
        model_stats=stats,
    )
    window = np.random.default_rng(1).normal(size=(128, 3)).astype(np.float32)
    raw = vib_pipeline().transform([window])
    np.testing.assert_allclose(pipe_norm.transform([window]), (raw - 1.0) / 2.0, rtol=1e-5)


@pytest.mark.parametrize(
    "stages,in_channels,message",
    [
        ([{"type": "select", "channels": [5]}], 3, "stages[0]: select: channels [5] do not exist"),
        ([{"type": "window", "size": 8, "hop": 8}, {"type": "select", "channels": [0]}], 3, "stages[1]"),
        ([{"type": "window", "size": 8, "hop": 8}, {"type": "features", "fft_bands": 5}], 3, "stages[1]: fft_bands=5"),
        ([{"type": "window", "size": 8, "hop": 8}, {"type": "features"}, {"type": "normalize", "from_model": True}], 3, "no normalization"),
        ([{"type": "window", "size": 8, "hop": 8}, {"type": "features"}, {"type": "normalize", "mean": [0.0], "std": [1.0]}], 3, "statistics have shape (1,)"),
        ([{"type": "scale", "factor": [1.0, 2.0]}], 3, "scale.factor has 2 values"),
    ],
)
def test_bad_pipelines_fail_at_build_time_with_a_clear_message(stages, in_channels, message):
    with pytest.raises(PipelineError, match=None) as info:
        build_pipeline(stages, in_channels)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "stage",
    [
        {"type": "window", "size": 4, "hop": 8},
        {"type": "window", "size": 4, "hop": 4, "stride": 1},
        {"type": "features", "stats": ["median"]},
        {"type": "normalize"},
        {"type": "standardize", "mean": 0.0, "std": 0.0},
        {"type": "fft"},
    ],
)
def test_invalid_stage_configs_are_rejected(stage):
    with pytest.raises(ValidationError):
        build_pipeline([stage], 3)


def test_wrong_channel_count_is_a_payload_error():
    pipe = vib_pipeline()
    with pytest.raises(PayloadError) as info:
        pipe.push(("a", "s"), np.ones((64, 2), np.float32), 1.0, 1000.0, 0)
    assert info.value.reason == "wrong_shape"
