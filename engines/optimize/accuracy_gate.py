"""Accept or refuse a quantized model by what it detects on held-out frames.

With ground truth (a demo clip's sidecar) the figure is the mAP@0.5 drop of
INT8 against FP32, in points. Without it (a real camera) the FP32 model's own
detections at its operating threshold are the reference, and the figure is the
agreement mAP@0.5 of the INT8 detections against them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engines.metrics import Box, mean_average_precision

Predictions = Sequence[Sequence[tuple[int, float, Box]]]  # per frame: (class_id, score, box)
DEFAULT_MAX_DROP_POINTS = 1.0
DEFAULT_MIN_AGREEMENT = 0.90


@dataclass(frozen=True)
class GateResult:
    mode: Literal["ground_truth", "agreement"]
    frames: int
    reference_objects: int
    passed: bool
    limit: float  # max drop in points, or min agreement
    fp32_map50: float | None = None
    int8_map50: float | None = None
    drop_points: float | None = None
    agreement_map50: float | None = None
    reason: str = ""

    def summary(self) -> str:
        verdict = "accepted" if self.passed else "REFUSED"
        if self.mode == "ground_truth":
            figure = (f"mAP@0.5 FP32 {self.fp32_map50:.3f}, INT8 {self.int8_map50:.3f}: "
                      f"drop {self.drop_points:+.2f} points (limit {self.limit:.2f})")
        elif self.agreement_map50 is not None:
            figure = (f"agreement mAP@0.5 of INT8 against FP32 {self.agreement_map50:.3f} "
                      f"(limit {self.limit:.2f}, {self.reference_objects} FP32 detections)")
        else:
            figure = "no agreement figure"
        tail = f"; {self.reason}" if self.reason else ""
        return f"{verdict}: {figure} on {self.frames} held-out frames{tail}"


def _above(predictions: Predictions, threshold: float) -> list[list[tuple[int, float, Box]]]:
    return [[p for p in frame if p[1] >= threshold] for frame in predictions]


def against_ground_truth(fp32: Predictions, int8: Predictions, truths: Sequence[Sequence[tuple[int, Box]]],
                         max_drop_points: float = DEFAULT_MAX_DROP_POINTS) -> GateResult:
    """Both models scored on the truth; refused when INT8 loses more than `max_drop_points`."""
    objects = sum(len(t) for t in truths)
    if objects == 0:
        return GateResult("ground_truth", len(truths), 0, False, max_drop_points,
                          reason="the held-out frames have no ground-truth objects")
    ref = mean_average_precision(fp32, truths, 0.5).map
    got = mean_average_precision(int8, truths, 0.5).map
    drop = (ref - got) * 100.0
    return GateResult("ground_truth", len(truths), objects, drop <= max_drop_points, max_drop_points,
                      fp32_map50=ref, int8_map50=got, drop_points=drop)


def against_fp32(fp32: Predictions, int8: Predictions, operating_threshold: float,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT) -> GateResult:
    """FP32 detections at the operating threshold as truth; INT8 ranked by its own scores."""
    reference = [[(c, b) for c, _, b in frame] for frame in _above(fp32, operating_threshold)]
    objects = sum(len(r) for r in reference)
    if objects == 0:
        return GateResult("agreement", len(reference), 0, False, min_agreement,
                          reason="FP32 detected nothing on the held-out frames, so agreement cannot be "
                                 "measured; calibrate on frames that show the objects of interest")
    agreement = mean_average_precision(int8, reference, 0.5).map
    return GateResult("agreement", len(reference), objects, agreement >= min_agreement, min_agreement,
                      agreement_map50=agreement)
