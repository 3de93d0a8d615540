"""Model and runtime settings, validated; the agent embeds these in its config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

from engines.layouts import Layout

DEMO_MODEL_NAME = "demo"
DEMO_MODEL_PATH = Path(__file__).resolve().parent / "models" / "demo.onnx"


def resolve_model_path(path: str | Path) -> Path:
    """`demo` names the built-in demo model; anything else is a file path."""
    if str(path) == DEMO_MODEL_NAME:
        return DEMO_MODEL_PATH
    return Path(path).expanduser()


# $XDG_CACHE_HOME when set (the systemd unit points it at its CacheDirectory), else ~/.cache
DEFAULT_ENGINE_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "edge-agent" / "engines"
ProviderName = Literal["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CudaProviderConfig(_Strict):
    """ONNX Runtime CUDA EP. Its arena is capped by the GPU budget (`gpu_mem_limit`)."""

    device_id: int = Field(0, ge=0, le=15)
    # MiB of the GPU budget this session may use for its arena; None: all of what is left at load.
    mem_limit_mb: int | None = Field(None, ge=16, le=1 << 20)
    cudnn_workspace_limited: bool = Field(True, description="cap cuDNN's conv workspace instead of taking the max")


class TensorrtProviderConfig(_Strict):
    """ONNX Runtime TensorRT EP: builds its own engines, cached on disk."""

    device_id: int = Field(0, ge=0, le=15)
    fp16: bool = True
    int8: bool = Field(False, description="needed for QDQ (INT8) models; no calibration table is used")
    workspace_mb: int = Field(256, ge=16, le=65536)
    cache_dir: Path = DEFAULT_ENGINE_CACHE / "ort-trt"
    timing_cache: bool = True
    dla_core: int | None = Field(None, ge=0, le=1, description="Jetson DLA core; unsupported layers run on GPU")


class OnnxRuntimeConfig(_Strict):
    """ONNX Runtime session settings; providers are tried in order, CPU last."""

    type: Literal["onnxruntime"] = "onnxruntime"
    providers: list[ProviderName] = Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    # Frames in flight at once, each its own session.run on its own thread. On a CPU, runs side by side on
    # one thread each beat one run spread over every core (no barrier between cores at each operator, and a
    # decode thread that takes a core stalls one run, not all): 71 against 62 fps for YOLOv8n at 320 on 2 cores.
    concurrent_runs: int = Field(0, ge=0, le=16, description="0: auto (2 on a CPU of 2+ cores, 1 with a GPU provider)")
    intra_op_threads: int = Field(0, ge=0, le=256, description="0: auto (the usable cores shared by the runs)")
    # Spinning threads burn the cores that capture and decoding need; off by default.
    allow_spinning: bool = False
    cuda: CudaProviderConfig = Field(default_factory=CudaProviderConfig)
    tensorrt: TensorrtProviderConfig = Field(default_factory=TensorrtProviderConfig)
    # A GPU provider that fails to take the model makes ONNX Runtime run it on CPU without a word;
    # true: refuse such a session instead of running 20x slower than planned.
    require_gpu: bool = True
    # Run YOLOv8/YOLO11's DFL box decode as reductions instead of a Softmax over a non-last axis:
    # the same result within float rounding, 20x faster on CPU (engines/optimize/dfl_rewrite.py).
    fast_dfl: bool = True

    @field_validator("providers")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each provider at most once")
        return v


class TensorRTConfig(_Strict):
    """Native TensorRT: an engine built from the ONNX model on this device, cached on disk."""

    type: Literal["tensorrt"] = "tensorrt"
    # auto: INT8 (+FP16 for float layers) for a QDQ model, FP16 otherwise.
    precision: Literal["auto", "fp16", "fp32"] = "auto"
    workspace_mb: int = Field(256, ge=16, le=65536, description="builder workspace limit")
    cache_dir: Path = DEFAULT_ENGINE_CACHE / "tensorrt"
    device_id: int = Field(0, ge=0, le=15)
    dla_core: int | None = Field(None, ge=0, le=1, description="Jetson DLA core, with GPU fallback")
    build_timeout_s: float = Field(3600.0, gt=0, le=86_400, description="builds take minutes on a Jetson")


def _engine_type(value: Any) -> str | None:
    """The `type` tag; an engine section without one is ONNX Runtime (configs before the union)."""
    if isinstance(value, dict):
        return value.get("type", "onnxruntime")
    return getattr(value, "type", None)


# Named engine choices for `bench --engine` and `selftest`: one table, so both mean the same thing.
ENGINE_PRESETS: dict[str, dict[str, Any]] = {
    "onnxruntime-cpu": {"type": "onnxruntime", "providers": ["CPUExecutionProvider"]},
    "onnxruntime-cuda": {"type": "onnxruntime", "providers": ["CUDAExecutionProvider"]},
    "onnxruntime-tensorrt": {"type": "onnxruntime", "providers": ["TensorrtExecutionProvider"]},
    "tensorrt": {"type": "tensorrt"},
}

EngineConfig = Annotated[
    Annotated[OnnxRuntimeConfig, Tag("onnxruntime")] | Annotated[TensorRTConfig, Tag("tensorrt")],
    Discriminator(_engine_type),
]


InputSide = Annotated[int, Field(ge=32, le=4096)]  # a model input's height or width, pixels


class DetectorConfig(BaseModel):
    """Which model to run and how to read its outputs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = DEMO_MODEL_NAME
    labels: Path | None = None
    score_threshold: float = Field(0.4, gt=0.0, lt=1.0)
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    layout: Layout | Literal["auto"] = "auto"
    max_batch: int = Field(4, ge=1, le=64, description="cap for models with a dynamic batch dimension")
    input_size: tuple[InputSide, InputSide] | None = Field(
        None, description="[height, width] for models with a dynamic input size (default: their imgsz metadata)"
    )
    engine: EngineConfig = Field(default_factory=OnnxRuntimeConfig)

    @field_validator("path")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("model path must not be empty ('demo' names the built-in model)")
        return v
