"""The engine interface: load a model, run a batch of frames, report info.

`Detector` = letterbox pre-processing + a runtime backend + output decoding and
NMS. The three stages are separate methods so the pipeline can time each one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from engines.backend import InferenceBackend
from engines.config import DetectorConfig, OnnxRuntimeConfig, resolve_model_path
from engines.errors import ModelLayoutError, ModelLoadError
from engines.gpu import GpuResources
from engines.labels import pad_labels, resolve_labels
from engines.layouts import Layout, decode, detect_layout
from engines.letterbox import Letterbox, LetterboxWriter
from engines.model_input import model_input_size
from engines.nms import nms
from engines.onnxruntime.backend import OnnxRuntimeBackend
from engines.optimize.quantize import ACCURACY_KEY
from engines.types import Detection, EngineInfo


@dataclass
class PreparedBatch:
    """Frames letterboxed into the input tensor, ready for `infer`."""

    size: int
    letterboxes: list[Letterbox]
    tensor: np.ndarray  # the model input: a view of buffer `buffer`, which the next preprocess into it overwrites
    buffer: int = 0


def _accuracy_gate(meta: dict[str, str]) -> dict | None:
    """The accuracy verdict `models quantize` stamped into the model, if any (a malformed one says so)."""
    raw = meta.get(ACCURACY_KEY)
    if raw is None:
        return None
    try:
        verdict = json.loads(raw)
        return {"verified": verdict["verified"] is True, "summary": str(verdict.get("summary", ""))}
    except (ValueError, KeyError, TypeError):
        return {"verified": False, "summary": "unreadable accuracy record in the model's metadata"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Detector:
    """A loaded detection model, owned by one inference worker.

    Not thread-safe, except `infer`: up to `concurrent_runs` calls may run at once from as many
    threads, each on a batch prepared into its own buffer.
    """

    def __init__(self, backend: InferenceBackend, config: DetectorConfig, model_path: Path,
                 model_sha256: str) -> None:
        self.backend = backend
        self.score_threshold = config.score_threshold
        self.iou_threshold = config.iou_threshold
        path = self._path = str(model_path)
        shape = backend.input.shape
        if len(shape) != 4 or not (shape[1] == 3 or not isinstance(shape[1], int)):
            raise ModelLayoutError(f"{path}: input shape {list(shape)} is not [batch, 3, height, width]")
        self.input_h, self.input_w = model_input_size(path, shape, backend.metadata, config.input_size)
        # a dynamic H×W: the input size is a knob (model.input_size; the quality levels' input_scale)
        self.dynamic_input = not all(isinstance(d, int) and d > 0 for d in shape[2:4])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.max_batch = self.fixed_batch or config.max_batch
        meta = backend.metadata
        try:
            names = resolve_labels(meta, config.labels)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ModelLoadError(f"{path}: cannot read labels {config.labels}: {exc}") from exc
        override = None if config.layout == "auto" else Layout(config.layout)
        end2end = str(meta.get("end2end", "")).lower() == "true"
        self.layout, num_classes = detect_layout(
            path, self._output_shape(), len(names) or None, end2end, override
        )
        self.labels = pad_labels(names, num_classes)
        # one input buffer per run in flight: a buffer is free again once its `infer` returned
        self.concurrent_runs = max(1, backend.concurrent_runs)
        self._writers = [LetterboxWriter(self.max_batch, self.input_h, self.input_w)
                         for _ in range(self.concurrent_runs)]
        self.info = EngineInfo(
            backend=backend.name, model_path=path, model_sha256=model_sha256,
            input_name=backend.input.name, input_height=self.input_h, input_width=self.input_w,
            max_batch=self.max_batch, layout=self.layout.value, labels=tuple(self.labels),
            precision=backend.precision, providers=backend.providers,
            accuracy_gate=_accuracy_gate(meta),
        )

    def _output_shape(self) -> tuple:
        """The first output's shape; dynamic dims beyond batch are learned by one dry run."""
        shape = self.backend.outputs[0].shape
        if all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return shape
        dummy = np.zeros((self.fixed_batch or 1, 3, self.input_h, self.input_w), np.float32)
        try:
            out = self.backend.infer(dummy)[0]
        except Exception as exc:
            raise ModelLayoutError(f"{self._path}: a test run to learn the output shape failed: {exc}") from exc
        return (shape[0], *out.shape[1:])

    def preprocess(self, frames: Sequence[np.ndarray], buffer: int = 0,
                   source_sizes: Sequence[tuple[int, int] | None] | None = None) -> PreparedBatch:
        """Letterbox `frames` into input buffer `buffer` (0 to concurrent_runs - 1).

        `source_sizes`: per frame, the stream's (width, height) if it was decoded smaller; boxes come
        back in those pixels.
        """
        if not 0 < len(frames) <= self.max_batch:
            raise ValueError(f"batch of {len(frames)} frames; this model takes 1 to {self.max_batch}")
        writer = self._writers[buffer]
        sizes = source_sizes or [None] * len(frames)
        boxes = [writer.write(i, f, size) for i, (f, size) in enumerate(zip(frames, sizes))]
        tensor = writer.tensor if self.fixed_batch else writer.tensor[: len(frames)]
        return PreparedBatch(len(frames), boxes, tensor, buffer)

    def input_tensor(self, prepared: PreparedBatch) -> np.ndarray:
        """The model input for `prepared` (a view of the buffer the next `preprocess` into it overwrites)."""
        return prepared.tensor

    def infer(self, prepared: PreparedBatch) -> list[np.ndarray]:
        return self.backend.infer(self.input_tensor(prepared))

    def postprocess(self, prepared: PreparedBatch, outputs: list[np.ndarray]) -> list[list[Detection]]:
        results = []
        out = outputs[0]
        for i in range(prepared.size):
            cand = decode(self.layout, out[i], self.score_threshold)
            keep = nms(cand.boxes, cand.scores, cand.class_ids, self.iou_threshold) if cand.needs_nms \
                else np.arange(len(cand.scores))
            boxes = prepared.letterboxes[i].to_frame(cand.boxes[keep].astype(np.float32))
            results.append([
                Detection(int(c), self._label(int(c)), float(s), (float(b[0]), float(b[1]), float(b[2]), float(b[3])))
                for b, s, c in zip(boxes, cand.scores[keep], cand.class_ids[keep])
            ])
        return results

    def _label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else f"class_{class_id}"

    def detect(self, frames: Sequence[np.ndarray]) -> list[list[Detection]]:
        """All three stages, in chunks of at most `max_batch` frames."""
        results: list[list[Detection]] = []
        for start in range(0, len(frames), self.max_batch):
            prepared = self.preprocess(frames[start : start + self.max_batch])
            results.extend(self.postprocess(prepared, self.infer(prepared)))
        return results

    def close(self) -> None:
        self.backend.close()


def _open_backend(config: DetectorConfig, path: Path, sha256: str, gpu: GpuResources | None,
                  on_progress: Callable[[str], None] | None) -> InferenceBackend:
    engine = config.engine
    if isinstance(engine, OnnxRuntimeConfig):
        return OnnxRuntimeBackend(path, engine, gpu.budget if gpu else None)
    if gpu is None:
        raise ModelLoadError(f"{path}: the tensorrt engine needs a GPU budget (gpu.memory_budget_mb)")
    from engines.tensorrt.backend import TensorRTBackend

    return TensorRTBackend(path, engine, gpu.trt_host(), sha256, config.max_batch,
                           config.input_size, on_progress)


def load_detector(config: DetectorConfig, gpu: GpuResources | None = None,
                  on_progress: Callable[[str], None] | None = None) -> Detector:
    """Open the configured model on its runtime; raises ModelError with the reason.

    `gpu` holds the memory budget every GPU engine loads inside; CPU engines need none.
    `on_progress` hears TensorRT build phases (builds take minutes on a Jetson).
    """
    path = resolve_model_path(config.path)
    try:
        sha256 = file_sha256(path)  # also the plan cache's key: read the file once
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {path}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc}") from exc
    backend = _open_backend(config, path, sha256, gpu, on_progress)
    try:
        return Detector(backend, config, path, sha256)
    except Exception:
        backend.close()
        raise
