"""The seam between model formats and runtimes: run a tensor, get tensors back.

A backend knows one runtime (ONNX Runtime, TensorRT) and nothing of boxes or
classes; `engines.detector.Detector` adds pre-processing and decoding on top,
so every runtime gets the same, tested model-format handling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # str/None: a dynamic dimension


class InferenceBackend(ABC):
    """One loaded model on one runtime; a backend sets `_input`, `_outputs` and `_metadata` when it loads."""

    name: str
    precision: str = "fp32"
    concurrent_runs: int = 1  # how many `infer` calls may run at once, from as many threads
    _input: TensorSpec
    _outputs: list[TensorSpec]
    _metadata: dict[str, str]

    @property
    def input(self) -> TensorSpec:
        return self._input

    @property
    def outputs(self) -> list[TensorSpec]:
        return self._outputs

    @property
    def metadata(self) -> dict[str, str]:
        return self._metadata

    @property
    @abstractmethod
    def providers(self) -> tuple[str, ...]: ...

    @abstractmethod
    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on an NCHW float32 batch; outputs in the model's order."""

    def close(self) -> None:
        """Release runtime resources (sessions, device memory)."""
