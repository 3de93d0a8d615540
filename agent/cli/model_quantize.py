"""`edge-agent models quantize`: calibrate, quantize, check accuracy, then (only then) write.

The INT8 model is written next to `--out` under a temporary name and renamed
into place only if the accuracy gate accepts it, so a refused model never
lands where a config could pick it up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.cli.calibration import SampledFrames
from engines import Detector, DetectorConfig, OnnxRuntimeConfig, load_detector, resolve_model_path
from engines.files import durable_replace
from engines.optimize.accuracy_gate import GateResult, Predictions, against_fp32, against_ground_truth
from engines.optimize.quantize import QuantizedModel, quantize_model, stamp_accuracy

EVAL_THRESHOLD = 0.05  # mAP ranks detections down to here, as `edge-agent eval` does


@dataclass(frozen=True)
class QuantizeResult:
    model: QuantizedModel
    gate: GateResult
    written: Path | None  # None: refused, nothing written
    fp32_bytes: int
    int8_bytes: int


def predictions(detector: Detector, frames: Sequence[np.ndarray], threshold: float = EVAL_THRESHOLD) -> Predictions:
    """Per-frame (class_id, score, box) down to `threshold`; the detector's own threshold is restored."""
    operating = detector.score_threshold
    detector.score_threshold = min(threshold, operating)
    try:
        return [[(d.class_id, d.score, d.box) for d in frame] for frame in detector.detect(list(frames))]
    finally:
        detector.score_threshold = operating


def calibration_tensors(detector: Detector, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each frame letterboxed exactly as inference will see it."""
    return [detector.input_tensor(detector.preprocess([frame])).copy() for frame in frames]


def quantize_with_gate(model: DetectorConfig, frames: SampledFrames, out: Path, target: str, method: str,
                       max_drop_points: float, min_agreement: float, gate_required: bool = True) -> QuantizeResult:
    """Quantize `model` on `frames.calibration`; keep it only if `frames.holdout` says it is accurate.

    `gate_required` false (`--no-gate`): written whatever the verdict; a refused model is stamped
    unverified in its metadata, which status and telemetry show.
    """
    cpu = model.model_copy(update={"engine": OnnxRuntimeConfig()})
    source = resolve_model_path(model.path)
    candidate = out.with_name(f".{out.name}.{os.getpid()}.candidate")
    fp32 = load_detector(cpu)
    try:
        tensors = calibration_tensors(fp32, frames.calibration)
        reference = predictions(fp32, frames.holdout)
        operating = fp32.score_threshold
        input_name = fp32.info.input_name
    finally:
        fp32.close()
    try:
        quantized = quantize_model(source, candidate, input_name, tensors, target, method)
        int8 = load_detector(cpu.model_copy(update={"path": str(candidate)}))
        try:
            got = predictions(int8, frames.holdout)
        finally:
            int8.close()
        if frames.holdout_truth is not None:
            gate = against_ground_truth(reference, got, frames.holdout_truth, max_drop_points)
        else:
            gate = against_fp32(reference, got, operating, min_agreement)
        int8_bytes = candidate.stat().st_size
        written = None
        if gate.passed or not gate_required:
            stamp_accuracy(candidate, gate.passed, gate.summary())
            durable_replace(candidate, out)
            written = out
        return QuantizeResult(quantized, gate, written, source.stat().st_size, int8_bytes)
    finally:
        candidate.unlink(missing_ok=True)
