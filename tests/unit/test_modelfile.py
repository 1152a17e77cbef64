"""Model files: metadata schema, sha256 verification, describe() (edge), the bundled model's metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.edge.modelinfo import describe
from edgeloop.errors import ModelError
from edgeloop.modelfile import (
    ModelMetadata,
    load_metadata,
    load_model_files,
    sha256_file,
    write_model_files,
)

BUNDLED = Path(__file__).resolve().parents[2] / "runtime" / "models" / "vibration_ae.tflite"


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    shutil.copy(BUNDLED, tmp_path / BUNDLED.name)
    shutil.copy(BUNDLED.with_suffix(".json"), tmp_path / BUNDLED.with_suffix(".json").name)
    return tmp_path / BUNDLED.name


def _edit_metadata(tflite: Path, **changes) -> None:
    path = tflite.with_suffix(".json")
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_bundled_model_metadata_is_valid_and_matches_its_bytes():
    content, meta = load_model_files(BUNDLED)
    assert meta.sha256 == sha256_file(BUNDLED)
    assert (meta.name, meta.task, meta.input.shape, meta.input.dtype) == (
        "vibration_ae",
        "anomaly",
        [None, 30],
        "float32",
    )
    assert meta.outputs[0].shape == [None, 1] and meta.score_output == 0
    assert meta.threshold > 0 and meta.labels == ["normal", "anomaly"]
    assert len(meta.normalization.mean) == len(meta.normalization.std) == 30
    ref = meta.reference
    assert len(ref.feature_mean) == len(ref.feature_std) == 30 and ref.samples > 1000
    quantiles = [ref.score_quantiles[k] for k in sorted(ref.score_quantiles, key=float)]
    assert quantiles == sorted(quantiles)
    assert ref.score_quantiles["0.995"] == pytest.approx(meta.threshold)
    assert meta.training.samples > 1000 and meta.training.threshold_method
    assert {"false_positive_rate_test", "recall_fault_windows", "drift_flagged_rate"} <= set(
        meta.training.evaluation
    )
    assert len(content) == BUNDLED.stat().st_size


def test_bundled_pipeline_is_the_edge_default():
    from edgeloop.bridge.training.autoencoder import DEFAULT_VIBRATION_PIPELINE
    from edgeloop.edge.config import DEFAULT_VIBRATION_STAGES

    _, meta = load_model_files(BUNDLED)
    assert meta.training.pipeline == DEFAULT_VIBRATION_PIPELINE == DEFAULT_VIBRATION_STAGES


def test_sha_mismatch_is_refused(model_copy: Path):
    data = bytearray(model_copy.read_bytes())
    data[-1] ^= 0xFF
    model_copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 .* refusing a model whose bytes are not the ones described"):
        load_model_files(model_copy)


def test_missing_metadata_is_a_model_error(model_copy: Path):
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="cannot read model metadata"):
        load_model_files(model_copy)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"surprise": 1}, "surprise"),
        ({"sha256": "abc"}, "sha256"),
        ({"threshold": None}, "threshold"),
        ({"name": "bad/name"}, "name"),
        ({"score_output": 3}, "score_output 3 is outside"),
        ({"labels": ["only-one"]}, "two labels"),
        ({"normalization": {"mean": [0.0] * 30, "std": [0.0] * 30}}, "normalization.std"),
        ({"normalization": {"mean": [0.0] * 29, "std": [1.0] * 29}}, "29 values but input has 30"),
        ({"input": {"shape": [None, 30], "dtype": "float64"}}, "input.dtype"),
    ],
)
def test_invalid_metadata_names_the_field(model_copy: Path, changes: dict, field: str):
    _edit_metadata(model_copy, **changes)
    with pytest.raises(ModelError, match="invalid model metadata") as info:
        load_model_files(model_copy)
    assert field in str(info.value)


def test_write_model_files_round_trip_and_refuses_a_wrong_sha(tmp_path: Path):
    content, meta = load_model_files(BUNDLED)
    path = write_model_files(tmp_path / "out", content, meta)
    assert load_model_files(path)[1] == meta
    with pytest.raises(ModelError):
        write_model_files(tmp_path / "bad", content + b"x", meta)


def test_describe_reports_tensors_and_sha_check():
    info = describe(BUNDLED)
    assert info["sha256_ok"] is True and info["input_spec_ok"] is True
    assert info["interpreter"] in {"ai-edge-litert", "tflite-runtime", "tensorflow"}
    assert info["inputs"][0]["shape"] == [None, 30] and info["inputs"][0]["dtype"] == "float32"
    assert info["outputs"][0]["shape"] == [None, 1]
    assert info["metadata"]["name"] == "vibration_ae"
    json.dumps(info)  # plain data for the CLI


def test_describe_never_raises_for_a_bad_model(model_copy: Path, tmp_path: Path):
    model_copy.write_bytes(b"not a flatbuffer")
    info = describe(model_copy)
    assert info["sha256_ok"] is False and "inputs" not in info
    assert any("sha256" in p for p in info["problems"]) and any("interpreter" in p for p in info["problems"])
    assert "cannot read model file" in describe(tmp_path / "missing.tflite")["problems"][0]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(ModelMetadata.model_fields)), value=_json)
def test_any_metadata_field_value_either_loads_or_is_a_model_error(tmp_path_factory, key, value):
    tmp = tmp_path_factory.mktemp("meta")
    data = json.loads(BUNDLED.with_suffix(".json").read_text())
    data[key] = value
    (tmp / "m.json").write_text(json.dumps(data))
    try:
        load_metadata(tmp / "m.json")
    except ModelError:
        pass
