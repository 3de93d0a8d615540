"""Model and runtime settings, validated; the agent embeds these in its config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engines.layouts import Layout

DEMO_MODEL_NAME = "demo"
DEMO_MODEL_PATH = Path(__file__).resolve().parent / "models" / "demo.onnx"


def resolve_model_path(path: str | Path) -> Path:
    """`demo` names the built-in demo model; anything else is a file path."""
    if str(path) == DEMO_MODEL_NAME:
        return DEMO_MODEL_PATH
    return Path(path).expanduser()


class OnnxRuntimeConfig(BaseModel):
    """ONNX Runtime session settings."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    intra_op_threads: int = Field(0, ge=0, le=256, description="0: ONNX Runtime's default (one per core)")
    # Spinning threads burn the cores that capture and decoding need; off by default.
    allow_spinning: bool = False


class DetectorConfig(BaseModel):
    """Which model to run and how to read its outputs."""

    model_config = ConfigDict(extra="forbid")

    path: str = DEMO_MODEL_NAME
    labels: Path | None = None
    score_threshold: float = Field(0.4, gt=0.0, lt=1.0)
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    layout: Layout | Literal["auto"] = "auto"
    max_batch: int = Field(4, ge=1, le=64, description="cap for models with a dynamic batch dimension")
    input_size: tuple[int, int] | None = Field(
        None, description="[height, width] for models with a dynamic input size (default: their imgsz metadata)"
    )
    engine: OnnxRuntimeConfig = Field(default_factory=OnnxRuntimeConfig)

    @field_validator("input_size")
    @classmethod
    def _sane_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(32 <= d <= 4096 for d in v):
            raise ValueError("input_size must be [height, width], each 32 to 4096")
        return v

    @field_validator("path")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model path must not be empty ('demo' names the built-in model)")
        return v
