"""An image pipeline: JPEG bytes -> one model input row, built and checked once at startup.

Building walks the stages with the image's colour, size and dtype and the
model's input spec, so a pipeline that would feed the model the wrong size,
colour order or channel count is a startup error naming the stage
(``stages[2]: ...``), never a wrong answer at the first frame. When a camera
declares no stages, the model's own image spec (metadata ``image``) makes
them: decode, colour, resize (letterboxed if the model was trained so),
normalize from the model -- the same stages the trainer used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeloop.errors import PayloadError
from edgeloop.edge.inference import TfliteModel
from edgeloop.modelfile import ImageInput
from edgeloop.edge.stages import PipelineError
from edgeloop.edge.vision.stages import (
    DecodeConfig,
    ImageStageConfig,
    ImageState,
    LayoutConfig,
    ModelInput,
    NormalizeConfig,
    ResizeConfig,
    parse_image_stages,
)

__all__ = ["ImagePipeline", "build_image_pipeline", "default_image_stages", "model_input", "parse_image_stages"]


def default_image_stages(image: ImageInput | None) -> list[dict[str, Any]]:
    """The stages a model's image spec implies (what the bundled trainer uses too)."""
    if image is None:
        raise ValueError("the model has no image spec in its metadata: declare the camera's stages")
    return [
        {"type": "decode", "reduce": "auto"},
        {"type": "color", "to": image.color},
        {"type": "resize", "letterbox": image.letterbox, "fill": image.fill},
        {"type": "normalize", "from_model": True},
    ]


class ImagePipeline:
    """``process(jpeg) -> row`` of ``output_shape`` and ``output_dtype``; PayloadError for a bad frame."""

    def __init__(self, configs: list[ImageStageConfig], target: ModelInput) -> None:
        if not configs or not isinstance(configs[0], DecodeConfig):
            raise PipelineError(0, "the first image stage must be decode")
        state = ImageState()
        self.ops: list[Any] = []
        self.decode = None
        normalized = False
        cover = None  # the resize stage's size: what decode's reduce: auto must still cover
        for index, cfg in enumerate(configs):
            try:
                if isinstance(cfg, DecodeConfig) and index > 0:
                    raise ValueError("only one decode stage, the first")
                if isinstance(cfg, LayoutConfig) and index != len(configs) - 1:
                    raise ValueError("layout must be the last stage")
                if normalized and not isinstance(cfg, LayoutConfig):
                    raise ValueError(f"{cfg.type} works on pixels and must come before normalize")
                op = cfg.build(state, target)
                normalized = normalized or isinstance(cfg, NormalizeConfig)
            except ValueError as exc:
                raise PipelineError(index, str(exc)) from None
            if index == 0:
                self.decode = op
            elif op is not None:
                self.ops.append(op)
            if isinstance(cfg, ResizeConfig) and cover is None:
                cover = op.size
        if state.size is None:
            raise PipelineError(len(configs) - 1, "the output size depends on the frame: add a resize stage")
        width, height = state.size
        c = state.channels
        self.output_shape = (c, height, width) if target.layout == "nchw" else (height, width, c)
        self.output_dtype = state.dtype
        self.color = state.color
        spec = target.image
        if spec is not None and spec.color != state.color:
            raise PipelineError(
                len(configs) - 1, f"the stages produce {state.color} images but the model was trained on {spec.color}"
            )
        if not isinstance(configs[-1], LayoutConfig):
            self.ops.append(_AddChannelAxis())
        if self.decode.auto:  # reduce: auto decodes as small as the resize allows
            self.decode.cover = cover

    def process(self, jpeg: bytes) -> np.ndarray:
        image = self.decode.apply(jpeg)
        for op in self.ops:
            image = op.apply(image)
        if image.shape != self.output_shape:  # e.g. a frame smaller than expected with no resize stage
            raise PayloadError("wrong_size", f"frame became {image.shape}, the model takes {self.output_shape}")
        return image


class _AddChannelAxis:
    def apply(self, image: np.ndarray) -> np.ndarray:
        return image[:, :, None] if image.ndim == 2 else image


def model_input(model: TfliteModel, configs: list[ImageStageConfig]) -> ModelInput:
    layout = next((c.order for c in configs if isinstance(c, LayoutConfig)), "nhwc")
    return ModelInput(
        shape=model.input_shape,
        dtype=np.dtype(model.input_dtype),
        quantization=model.input_quantization,
        image=model.metadata.image,
        layout=layout,
    )


def build_image_pipeline(stages: list[ImageStageConfig] | list[dict] | None, model: TfliteModel) -> ImagePipeline:
    """Build the stages (default: from the model's image spec) and check them against the model.

    Raises PipelineError for a stage that cannot be built, ModelError when
    the output shape is not the model's input.
    """
    if stages is None:
        try:
            stages = default_image_stages(model.metadata.image)
        except ValueError as exc:
            raise PipelineError(0, str(exc)) from None
    if stages and isinstance(stages[0], dict):
        stages = parse_image_stages(stages)  # type: ignore[arg-type]
    configs: list[ImageStageConfig] = list(stages)  # type: ignore[arg-type]
    if len(model.input_shape) != 3:
        raise PipelineError(0, f"model {model.label} takes {model.input_shape} rows, not (H, W, C) images")
    pipeline = ImagePipeline(configs, model_input(model, configs))
    model.check_pipeline_shape(pipeline.output_shape)
    return pipeline
