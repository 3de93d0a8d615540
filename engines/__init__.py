"""Running detection models: one interface, a backend per runtime.

Knows nothing of cameras, SQLite or MQTT (see DESIGN.md).
"""

from engines.config import DEMO_MODEL_PATH, DetectorConfig, OnnxRuntimeConfig, TensorRTConfig, resolve_model_path
from engines.detector import Detector, PreparedBatch, load_detector
from engines.errors import BackendUnavailable, ModelError, ModelLayoutError, ModelLoadError
from engines.gpu import GpuResources
from engines.gpu_budget import BudgetExceeded
from engines.types import Detection, EngineInfo

__all__ = [
    "DEMO_MODEL_PATH", "BackendUnavailable", "BudgetExceeded", "Detection", "Detector", "DetectorConfig", "EngineInfo",
    "GpuResources", "ModelError", "ModelLayoutError", "ModelLoadError", "OnnxRuntimeConfig", "PreparedBatch",
    "TensorRTConfig",
    "load_detector", "resolve_model_path",
]
