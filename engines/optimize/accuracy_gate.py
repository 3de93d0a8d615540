"""Accept or refuse a quantized model by what it detects on held-out frames.

With ground truth (a demo clip's sidecar) the figure is the mAP@0.5 drop of
INT8 against FP32, in points. Without it (a real camera) the FP32 model's own
detections at its operating threshold are the reference, and the figure is the
agreement mAP@0.5 of the INT8 detections against them.

A gate with (almost) nothing to compare on refuses instead of passing vacuously:
ground truth the FP32 model does not find (other classes than it knows: an
Ultralytics COCO model on the demo clip scores 0.000 both ways, a "drop" of 0),
or FP32 detections too few to measure agreement on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from engines.metrics import Box, mean_average_precision

Predictions = Sequence[Sequence[tuple[int, float, Box]]]  # per frame: (class_id, score, box)
DEFAULT_MAX_DROP_POINTS = 1.0
DEFAULT_MIN_AGREEMENT = 0.90
MIN_REFERENCE_MAP = 0.05  # FP32 mAP@0.5 on the truth below this: the truth does not fit the model
MIN_REFERENCE_OBJECTS = 10  # FP32 detections needed to measure agreement on


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
    if ref < MIN_REFERENCE_MAP:
        return GateResult("ground_truth", len(truths), objects, False, max_drop_points, fp32_map50=ref,
                          int8_map50=got, drop_points=drop,
                          reason=f"FP32 itself finds almost none of the {objects} ground-truth objects (mAP@0.5 "
                                 f"below {MIN_REFERENCE_MAP:.2f}), so a drop means nothing: the clip's truth does "
                                 "not fit this model's classes; calibrate on frames of the objects it detects")
    return GateResult("ground_truth", len(truths), objects, drop <= max_drop_points, max_drop_points,
                      fp32_map50=ref, int8_map50=got, drop_points=drop)


def against_fp32(fp32: Predictions, int8: Predictions, operating_threshold: float,
                 min_agreement: float = DEFAULT_MIN_AGREEMENT) -> GateResult:
    """FP32 detections at the operating threshold as truth; INT8 ranked by its own scores."""
    reference = [[(c, b) for c, _, b in frame] for frame in _above(fp32, operating_threshold)]
    objects = sum(len(r) for r in reference)
    if objects < MIN_REFERENCE_OBJECTS:
        found = "nothing" if objects == 0 else f"only {objects} objects"
        return GateResult("agreement", len(reference), objects, False, min_agreement,
                          reason=f"FP32 detected {found} on the held-out frames (at least {MIN_REFERENCE_OBJECTS} "
                                 "needed), so agreement cannot be measured; calibrate on frames that show the "
                                 "objects of interest")
    agreement = mean_average_precision(int8, reference, 0.5).map
    return GateResult("agreement", len(reference), objects, agreement >= min_agreement, min_agreement,
                      agreement_map50=agreement)
