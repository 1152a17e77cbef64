"""``vision:`` in edge.yaml: which cameras to classify, with which model and stages.

Absent (the default) means no frame subscription at all: a sensor-only edge
pays nothing for the camera path. Validated with the rest of the config
before anything connects; model and stage checks against the model's input
happen when the frame worker is built, still before the first connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeloop.contract import TopicLevel
from edgeloop.edge.vision.stages import ImageStageConfig

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BUNDLED_VISION_MODEL = MODELS_DIR / "parts_cnn_int8.tflite"

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class VisionModelSettings(BaseModel):
    model_config = _FROZEN

    path: Path = BUNDLED_VISION_MODEL
    num_threads: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None, description="interpreter threads; default: the interpreter's choice"
    )


class FrameSampleSettings(BaseModel):
    """Low-confidence frames sent home for labelling and retraining, within a budget.

    A frame is a candidate when its top-1 probability is below
    ``below_score`` (default: the model's ``threshold``). At most
    ``max_per_hour`` frames per (device, camera) in any rolling hour, each
    downscaled to at most ``max_width`` pixels wide and re-encoded at
    ``jpeg_quality``; candidates over budget are dropped and counted.
    """

    model_config = _FROZEN

    enabled: bool = False
    below_score: Annotated[float, Field(gt=0, le=1)] | None = Field(default=None, description="top-1 probability bar; default: the model's threshold")
    max_per_hour: Annotated[int, Field(ge=0, le=100_000)] = Field(default=60, description="per (device, camera), rolling hour")
    max_width: Annotated[int, Field(ge=16, le=4096)] = Field(default=160, description="downscale samples to at most this width")
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 80


class CameraSettings(BaseModel):
    """One camera name (the last topic level) -> image stages -> model.

    Every device's frames for this camera share one model and are batched
    together. ``stages`` default to what the model's image spec implies.
    """

    model_config = _FROZEN

    camera: TopicLevel
    topic: str | None = Field(default=None, description="subscription filter; default frames/+/{camera}")
    model: VisionModelSettings = VisionModelSettings()
    stages: list[ImageStageConfig] | None = Field(default=None, description="default: from the model's image spec")
    top_k: Annotated[int, Field(ge=1, le=32)] = Field(default=3, description="labels in a result's topk")
    samples: FrameSampleSettings = FrameSampleSettings()

    @property
    def subscription(self) -> str:
        return self.topic or f"frames/+/{self.camera}"

    @model_validator(mode="after")
    def _topic_shape(self) -> CameraSettings:
        if self.topic is not None:
            parts = self.topic.split("/")
            if len(parts) != 3 or parts[0] != "frames" or parts[2] not in ("+", self.camera):
                raise ValueError(f"topic must look like frames/+/{self.camera} or frames/<device>/{self.camera}")
        return self


class VisionSettings(BaseModel):
    """Frames: newest-wins slots per (device, camera), one worker thread, batched inference.

    ``max_frame_bytes`` is checked at the door (network thread), so an
    oversized frame never takes memory in a slot. ``max_streams`` bounds the
    number of (device, camera) slots; frames from further streams are dropped
    and counted. ``max_batch`` bounds one interpreter call. ``max_age_ms``
    skips (and counts) frames whose capture ``ts`` is older than that when the
    worker takes them -- a backlog before the edge (a slow link, a broker
    queue) then costs dropped frames, not stale results.
    """

    model_config = _FROZEN

    cameras: Annotated[list[CameraSettings], Field(min_length=1)]
    qos: Literal[0, 1] = Field(default=0, description="subscription QoS; frames are acknowledged on receipt")
    max_frame_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = Field(default=2 * 1024 * 1024, description="larger frames are refused at the door")
    max_streams: Annotated[int, Field(ge=1, le=100_000)] = Field(default=256, description="(device, camera) slots; frames of further streams are dropped")
    max_batch: Annotated[int, Field(ge=1, le=256)] = Field(default=16, description="frames per interpreter call")
    max_age_ms: Annotated[float, Field(gt=0, le=3_600_000)] | None = Field(
        default=None, description="skip frames captured longer ago than this (needs synchronised clocks); None: no limit"
    )
    opencv_threads: Annotated[int, Field(ge=0, le=64)] = Field(
        default=1, description="OpenCV worker threads (0: OpenCV's default); 1 avoids thread hand-offs on small frames"
    )

    @model_validator(mode="after")
    def _unique(self) -> VisionSettings:
        names = [c.camera for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError("cameras: each camera name may appear only once")
        return self
