"""Running detection models: one interface, a backend per runtime.

Knows nothing of cameras, SQLite or MQTT (see DESIGN.md).
"""

from engines.config import DEMO_MODEL_PATH, DetectorConfig, OnnxRuntimeConfig, resolve_model_path
from engines.detector import Detector, PreparedBatch, load_detector
from engines.errors import BackendUnavailable, ModelError, ModelLayoutError, ModelLoadError
from engines.types import Detection, EngineInfo

__all__ = [
    "DEMO_MODEL_PATH", "BackendUnavailable", "Detection", "Detector", "DetectorConfig", "EngineInfo",
    "ModelError", "ModelLayoutError", "ModelLoadError", "OnnxRuntimeConfig", "PreparedBatch",
    "load_detector", "resolve_model_path",
]
