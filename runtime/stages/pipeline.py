"""A preprocessing pipeline: sample stages -> window -> batch stages.

Built once at startup from config; building checks every stage against the
shape it will receive, so a mis-sized statistic or a model that expects other
features is a startup error, never a crash at the first message.
"""

from __future__ import annotations

from typing import Annotated, Union

import numpy as np
from pydantic import Field, TypeAdapter

from edgeloop.errors import PayloadError
from edgeloop.edge.stages.features import FeaturesConfig, Normalize, NormalizeConfig
from edgeloop.edge.stages.sample import ScaleConfig, SelectConfig, StandardizeConfig
from edgeloop.edge.stages.window import StreamKey, Window, WindowConfig, Windower

StageConfig = Annotated[
    Union[SelectConfig, ScaleConfig, StandardizeConfig, WindowConfig, FeaturesConfig, NormalizeConfig],
    Field(discriminator="type"),
]
_SAMPLE = (SelectConfig, ScaleConfig, StandardizeConfig)
_BATCH = (FeaturesConfig, NormalizeConfig)
_STAGES = TypeAdapter(list[StageConfig])


class PipelineError(ValueError):
    """A stage cannot be built; ``index`` is its position in the stage list."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"stages[{index}]: {message}")
        self.index = index


def parse_stages(raw: list[dict]) -> list[StageConfig]:
    return _STAGES.validate_python(raw)


class Pipeline:
    def __init__(self, configs: list[StageConfig], in_channels: int, model_stats: dict | None = None) -> None:
        self.in_channels = in_channels
        self.sample_stages = []
        self.batch_stages = []
        self.windower: Windower | None = None
        channels = in_channels
        shape: tuple[int, ...] | None = None
        for index, cfg in enumerate(configs):
            try:
                if isinstance(cfg, _SAMPLE):
                    if shape is not None:
                        raise ValueError(f"{cfg.type} works on samples and must come before window/feature stages")
                    stage = cfg.build(channels)
                    channels = stage.out_channels
                    self.sample_stages.append(stage)
                elif isinstance(cfg, WindowConfig):
                    if shape is not None:
                        raise ValueError("only one window stage, before the feature stages")
                    self.windower = Windower(cfg.size, cfg.hop, channels)
                    shape = (cfg.size, channels)
                else:
                    if shape is None:
                        shape = (channels,)  # no window: each one-sample reading is a vector
                    stage = cfg.build(shape, model_stats) if isinstance(cfg, NormalizeConfig) else cfg.build(shape)
                    shape = stage.out_shape
                    self.batch_stages.append(stage)
            except ValueError as exc:
                raise PipelineError(index, str(exc)) from None
        if shape is None:
            shape = (channels,)
        self.output_shape: tuple[int, ...] = tuple(shape)

    def push(self, key: StreamKey, samples: np.ndarray, ts: float, rate_hz: float | None, seq: int) -> list[Window]:
        """Feed one reading's samples ``(n, C)``; return the windows it completed."""
        if samples.shape[1] != self.in_channels:
            raise PayloadError(
                "wrong_shape", f"reading has {samples.shape[1]} channels, pipeline expects {self.in_channels}"
            )
        for stage in self.sample_stages:
            samples = stage.apply(samples)
        if self.windower is not None:
            return self.windower.push(key, samples, ts, rate_hz, seq)
        if samples.shape[0] != 1:
            raise PayloadError("wrong_shape", "without a window stage each reading must be a single sample")
        return [Window(key, samples[0], ts, seq)]

    def transform(self, datas: list[np.ndarray]) -> np.ndarray:
        """Stack windows into one batch and run the batch stages over it."""
        batch = np.stack(datas).astype(np.float32, copy=False)
        for stage in self.batch_stages:
            batch = stage.apply(batch)
        return batch

    def transform_with_raw(self, datas: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Like ``transform``, plus the raw features: the batch just before the first ``normalize``.

        The edge sends raw features home for retraining, so a new model can fit
        its own normalisation (the final output if there is no normalize stage).
        """
        batch = np.stack(datas).astype(np.float32, copy=False)
        raw = None
        for stage in self.batch_stages:
            if raw is None and isinstance(stage, Normalize):
                raw = batch
            batch = stage.apply(batch)
        return batch, (batch if raw is None else raw)

    def reset(self, key: StreamKey) -> None:
        if self.windower is not None:
            self.windower.reset(key)


def build_pipeline(configs: list[StageConfig] | list[dict], in_channels: int, model_stats: dict | None = None) -> Pipeline:
    if configs and isinstance(configs[0], dict):
        configs = parse_stages(configs)  # type: ignore[arg-type]
    return Pipeline(configs, in_channels, model_stats)  # type: ignore[arg-type]
