"""Image stages against numpy/OpenCV references, and pipelines that must be refused at startup."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeloop.errors import ModelError, PayloadError
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ImageInput
from edgeloop.edge.stages import PipelineError
from edgeloop.edge.vision.config import BUNDLED_VISION_MODEL
from edgeloop.edge.vision.frames import check_complete, jpeg_dimensions
from edgeloop.edge.vision.pipeline import (
    ImagePipeline,
    build_image_pipeline,
    default_image_stages,
    parse_image_stages,
)
from edgeloop.edge.vision.stages import ModelInput

RNG = np.random.default_rng(3)
IMAGE = RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8)  # BGR, 80 wide, 60 high
SPEC = ImageInput(width=32, height=24, channels=3, color="rgb")


def jpeg(image: np.ndarray = IMAGE, quality: int = 95) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def float_target(h: int = 24, w: int = 32, c: int = 3, image: ImageInput | None = SPEC) -> ModelInput:
    return ModelInput(shape=(h, w, c), dtype=np.dtype(np.float32), image=image)


def pipeline(stages: list[dict], target: ModelInput | None = None) -> ImagePipeline:
    return ImagePipeline(parse_image_stages(stages), target or float_target())


# ----------------------------------------------------------------------------- JPEG checks


def test_jpeg_dimensions_read_from_the_frame_header():
    assert jpeg_dimensions(jpeg()) == (80, 60, 3)
    assert jpeg_dimensions(jpeg(IMAGE[:, :, 0])) == (80, 60, 1)
    progressive = cv2.imencode(".jpg", IMAGE, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert jpeg_dimensions(progressive) == (80, 60, 3)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"GIF89a", "not_jpeg"),
        (b"\xff\xd8", "corrupt_image"),
        (b"\xff\xd8\x00\x00\x00\x00", "corrupt_image"),
        (b"\xff\xd8\xff\xda\x00\x08" + b"\x00" * 16, "corrupt_image"),  # scan before any frame header
        (b"\xff\xd8\xff\xc0\x00\x11\x08\x00\x00\x00\x10\x03" + b"\x00" * 9, "corrupt_image"),  # height 0
        (b"\xff\xd8\xff\xe0\x00\x01", "corrupt_image"),  # segment length < 2
    ],
)
def test_jpeg_header_problems_have_reasons(data, reason):
    with pytest.raises(PayloadError) as info:
        jpeg_dimensions(data)
    assert info.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300).map(lambda b: b"\xff\xd8" + b) | st.binary(max_size=64))
def test_jpeg_header_parser_raises_only_payload_errors(data):
    try:
        w, h, c = jpeg_dimensions(data)
    except PayloadError as exc:
        assert exc.reason in {"not_jpeg", "corrupt_image"}
    else:
        assert w > 0 and h > 0 and c in (1, 3, 4)


def test_truncated_jpeg_is_detected():
    data = jpeg()
    check_complete(data)
    check_complete(data + b"\x00" * 32)  # padding after EOI, as some cameras send
    with pytest.raises(PayloadError) as info:
        check_complete(data[: len(data) // 2])
    assert info.value.reason == "truncated_image"


# ----------------------------------------------------------------------------- stages


def test_default_pipeline_matches_a_hand_written_reference():
    p = pipeline(default_image_stages(SPEC))
    got = p.process(jpeg())
    # reduce: auto -- 80x60 decodes at 1/2 (40x30 still covers 32x24; 1/4 would not)
    decoded = cv2.imdecode(np.frombuffer(jpeg(), np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    want = cv2.resize(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), (32, 24), interpolation=cv2.INTER_AREA) / 255.0
    assert got.shape == p.output_shape == (24, 32, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("size, factor", [((80, 60), 2), ((64, 48), 2), ((63, 48), 1), ((640, 480), 8), ((300, 100), 4)])
def test_auto_reduce_picks_the_largest_factor_that_still_covers_the_resize(size, factor):
    w, h = size
    image = cv2.resize(IMAGE, (w, h))
    p = pipeline([{"type": "decode", "reduce": "auto"}, {"type": "resize", "width": 32, "height": 24}],
                 float_target(24, 32, 3, None))
    decoded = p.decode.apply(jpeg(image))
    assert decoded.shape[:2] == (-(-h // factor), -(-w // factor))
    with pytest.raises(PipelineError, match="fixed decode.reduce"):
        pipeline([{"type": "decode", "reduce": "auto"}, {"type": "crop", "width": 8, "height": 8}, {"type": "resize"}],
                 float_target(24, 32, 3, None))


def test_normalize_mean_std_per_channel():
    spec = ImageInput(width=80, height=60, channels=3, color="bgr", scale=1.0, mean=[10, 20, 30], std=[2, 4, 8])
    p = pipeline([{"type": "decode"}, {"type": "resize"}, {"type": "normalize", "from_model": True}],
                 float_target(60, 80, 3, spec))
    decoded = cv2.imdecode(np.frombuffer(jpeg(), np.uint8), cv2.IMREAD_COLOR).astype(np.float64)
    want = (decoded - [10, 20, 30]) / [2, 4, 8]
    np.testing.assert_allclose(p.process(jpeg()), want, rtol=1e-6)


def test_int8_quantization_uses_the_models_input_tensor_parameters():
    q = {"scale": 1.0 / 255.0, "zero_point": -128}
    target = ModelInput(shape=(24, 32, 3), dtype=np.dtype(np.int8), quantization=q, image=SPEC)
    p = pipeline(default_image_stages(SPEC), target)
    got = p.process(jpeg())
    assert got.dtype == np.int8 and p.output_dtype == np.int8
    ref = pipeline(default_image_stages(SPEC)).process(jpeg())  # float [0, 1]
    want = np.clip(np.round(ref / q["scale"] + q["zero_point"]), -128, 127)
    np.testing.assert_array_equal(got.astype(int), want.astype(int))
    unquantized = pipeline([*default_image_stages(SPEC)[:-1], {"type": "normalize", "from_model": True, "quantize": False}], target)
    assert unquantized.output_dtype == np.float32


def test_letterbox_keeps_aspect_ratio_and_pads():
    spec = ImageInput(width=32, height=32, channels=3, color="bgr", letterbox=True, fill=7)
    p = pipeline([{"type": "decode"}, {"type": "resize"}], float_target(32, 32, 3, spec))
    out = p.process(jpeg())  # 80x60 -> 32x24 centred, 4 rows of padding above and below
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[:4] == 7).all() and (out[-4:] == 7).all()
    decoded = cv2.imdecode(np.frombuffer(jpeg(), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(out[4:28], cv2.resize(decoded, (32, 24), interpolation=cv2.INTER_AREA))


def test_crop_gray_and_nchw_layout():
    p = pipeline(
        [{"type": "decode", "gray": True}, {"type": "crop", "x": 8, "y": 4, "width": 32, "height": 24},
         {"type": "layout", "order": "nchw"}],
        ModelInput(shape=(1, 24, 32), dtype=np.dtype(np.float32), layout="nchw"),
    )
    out = p.process(jpeg())
    gray = cv2.imdecode(np.frombuffer(jpeg(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert out.shape == (1, 24, 32)
    np.testing.assert_array_equal(out[0], gray[4:28, 8:40])


def test_reduced_decode_scales_the_crop():
    p = pipeline([{"type": "decode", "reduce": 2}, {"type": "crop", "x": 16, "y": 8, "width": 64, "height": 48}],
                 float_target(24, 32, 3, None))
    half = cv2.imdecode(np.frombuffer(jpeg(), np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    np.testing.assert_array_equal(p.process(jpeg()), half[4:28, 8:40])


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"type": "resize"}], "first image stage must be decode"),
        ([{"type": "decode"}, {"type": "decode"}, {"type": "resize"}], "only one decode"),
        ([{"type": "decode"}, {"type": "normalize"}, {"type": "resize"}], "must come before normalize"),
        ([{"type": "decode"}, {"type": "layout"}, {"type": "resize"}], "layout must be the last"),
        ([{"type": "decode"}, {"type": "color", "to": "rgb"}], "depends on the frame"),
        ([{"type": "decode"}, {"type": "resize"}], "trained on rgb"),
        ([{"type": "decode"}, {"type": "color", "to": "rgb"}, {"type": "resize"}, {"type": "normalize", "mean": [0.5]}],
         "need 3 value"),
        ([{"type": "decode", "expect_size": [80, 60]}, {"type": "crop", "x": 60, "width": 40, "height": 10}], "outside"),
    ],
)
def test_pipelines_that_cannot_work_are_refused_at_build(stages, message):
    with pytest.raises(PipelineError, match=message):
        pipeline(stages)


def test_unknown_stage_keys_are_refused():
    with pytest.raises(ValueError, match="extra"):
        parse_image_stages([{"type": "decode", "colour": "rgb"}])


def test_frames_that_do_not_fit_are_payload_errors():
    p = pipeline([{"type": "decode", "expect_size": [80, 60], "max_width": 100}, {"type": "color", "to": "rgb"}])
    assert p.output_shape == (60, 80, 3)
    other = np.zeros((50, 70, 3), np.uint8)
    big = np.zeros((40, 120, 3), np.uint8)
    for data, reason in [(jpeg(other), "wrong_size"), (jpeg(big), "wrong_size"), (b"\xff\xd8garbage", "corrupt_image"),
                         (jpeg()[:200], "truncated_image")]:
        with pytest.raises(PayloadError) as info:
            p.process(data)
        assert info.value.reason == reason, data[:8]
    crop = pipeline([{"type": "decode"}, {"type": "crop", "width": 70, "height": 70}, {"type": "color", "to": "rgb"},
                     {"type": "resize"}])
    with pytest.raises(PayloadError, match="crop region"):
        crop.process(jpeg())


def test_a_huge_declared_size_is_refused_before_decoding():
    data = bytearray(jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    with pytest.raises(PayloadError) as info:
        pipeline(default_image_stages(SPEC)).process(bytes(data))
    assert info.value.reason == "wrong_size" and "60000x60000" in str(info.value)


def test_bundled_model_builds_with_default_and_explicit_stages():
    model = TfliteModel(BUNDLED_VISION_MODEL)
    spec = model.metadata.image
    assert build_image_pipeline(None, model).output_shape == (spec.height, spec.width, 3)
    explicit = [{"type": "decode", "reduce": 2}, {"type": "color", "to": "rgb"}, {"type": "resize", "letterbox": True},
                {"type": "normalize", "from_model": True}, {"type": "layout", "order": "nhwc"}]
    assert build_image_pipeline(explicit, model).output_dtype == np.int8
    with pytest.raises(ModelError, match="expects"):
        build_image_pipeline([{"type": "decode"}, {"type": "color", "to": "rgb"}, {"type": "resize", "width": 64}], model)
