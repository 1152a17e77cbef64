"""Property: any model metadata gives a usable model or a ModelError -- never another exception.

The boundary: ``NAME.json`` beside a ``.tflite`` (``edgeloop.modelfile.load_metadata`` /
``load_model_files``), and a verified metadata object handed with model bytes to
``TfliteModel.from_bytes`` (what a deployment does once a manifest's signature checked out),
then to the edge pipeline. Inputs are random bytes, random JSON and near misses of the bundled
model's metadata. The model bytes themselves are always the bundled model's: the interpreter
is native code and is not fed unverified bytes (the sha256 check, tested here, comes first).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fuzzing import fuzz, json_bytes, json_values, near_miss, tally
from hypothesis import event, given
from hypothesis import strategies as st

from edgeloop.errors import ConfigError, ModelError
from edgeloop.edge.config import BUNDLED_MODEL, PipelineSettings
from edgeloop.edge.engine import PipelineRunner
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ModelMetadata, load_metadata, load_model_files, metadata_path
from edgeloop.edge.stages import PipelineError

CONTENT = BUNDLED_MODEL.read_bytes()
BUNDLED_META = json.loads(metadata_path(BUNDLED_MODEL).read_text())
#: Without the long reference/training sections, so near misses hit the fields that drive loading.
CORE_META = {k: v for k, v in BUNDLED_META.items() if k not in ("reference", "training")}
KEYS = sorted(ModelMetadata.model_fields) + ["shape", "dtype", "mean", "std", "x"]


#: Replacement values of the right kind more often than not, so near misses get past the schema.
plausible = st.one_of(
    json_values,
    st.integers(-2, 64),
    st.floats(-1e6, 1e6),
    st.lists(st.one_of(st.none(), st.integers(-1, 64)), max_size=4),
    st.sampled_from(["float32", "int8", "uint8", "anomaly", "classification", "regression", BUNDLED_META["sha256"],
                     "ab" * 32, ["a"], ["normal", "anomaly", "x"]]),
)


@st.composite
def metadata_docs(draw) -> bytes:
    kind = draw(st.sampled_from(["near_core", "near_core", "near_no_norm", "near_full", "json", "bytes"]))
    event(f"input {kind}")
    if kind == "json":
        return json_bytes(draw(json_values))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    base = {"near_core": CORE_META, "near_full": BUNDLED_META,
            "near_no_norm": {k: v for k, v in CORE_META.items() if k != "normalization"}}[kind]
    return json_bytes(draw(near_miss(base, values=plausible, extra_keys=KEYS)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    (d / "m.tflite").write_bytes(CONTENT)
    return d


@fuzz
@given(doc=metadata_docs())
def test_any_metadata_loads_or_is_a_model_error(model_dir, doc):
    (model_dir / "m.json").write_bytes(doc)
    tally("model metadata -> load_metadata / TfliteModel.from_bytes")
    try:
        meta = load_metadata(model_dir / "m.json")
    except ModelError as exc:
        assert "m.json" in str(exc)
        event("metadata refused")
        return
    try:
        content, checked = load_model_files(model_dir / "m.tflite")
    except ModelError as exc:
        assert "sha256" in str(exc) and meta.sha256 != BUNDLED_META["sha256"]
        event("sha256 refused")
        return
    try:
        model = TfliteModel.from_bytes(content, checked, max_batch=8)
        runner = PipelineRunner.build(PipelineSettings(), model)
    except (ModelError, ConfigError, PipelineError) as exc:
        assert str(exc)
        event("model refused")
        return
    out = model.run(np.zeros((3, *model.input_shape), dtype=np.float32))
    assert out.shape == (3, model.n_outputs)
    assert runner.pipeline.output_shape == model.input_shape
    event("model usable")


def test_bytes_that_do_not_match_the_metadata_never_reach_the_interpreter(model_dir):
    meta = ModelMetadata.model_validate(BUNDLED_META)
    with pytest.raises(ModelError, match="sha256"):
        TfliteModel.from_bytes(CONTENT[:-1] + bytes([CONTENT[-1] ^ 1]), meta)
    (model_dir / "m.json").write_text(json.dumps(BUNDLED_META))
    (model_dir / "bad.tflite").write_bytes(b"\x00" * 64)
    (model_dir / "bad.json").write_text(json.dumps(BUNDLED_META))
    with pytest.raises(ModelError, match="sha256"):
        load_model_files(model_dir / "bad.tflite")
