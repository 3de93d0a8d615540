"""The values that cross the engine interface."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Detection:
    """One object found in a frame; box is x1, y1, x2, y2 in that frame's pixels."""

    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "class_id": self.class_id, "score": round(self.score, 4),
                "box": [round(v, 1) for v in self.box]}


@dataclass(frozen=True)
class EngineInfo:
    """What is loaded and how it runs: shown in status, telemetry and bench output."""

    backend: str
    model_path: str
    model_sha256: str
    input_name: str
    input_height: int
    input_width: int
    max_batch: int
    layout: str
    labels: tuple[str, ...]
    precision: str
    providers: tuple[str, ...]
    # an INT8 model's accuracy check: {"verified": bool, "summary": str}; None: no check on record (FP32)
    accuracy_gate: dict | None = None
