"""INT8 QDQ models from calibration tensors, in the format each target runs fast.

Targets differ (measured with ONNX Runtime 1.32 on an AVX-512 VNNI CPU):
- `cpu`: U8 activations (asymmetric), S8 weights per channel. ONNX Runtime turns
  every quantized Conv into an INT8 kernel with U8 activations, few with S8.
- `tensorrt`: S8 activations and S8 per-channel weights, both symmetric (zero
  point 0), as TensorRT's explicit quantization requires.

Both are pre-processed with `quant_pre_process` (shape inference, folding) and
keep the detection head in float (`engines.optimize.float_head`); for `cpu`, SiLU is
fused into one op first (`engines.optimize.silu_fusion`). The stem convolution, the one
that reads the image's 3 channels, stays float too: INT8 kernels gain nothing on
so few input channels, and quantizing its output instead of the image keeps the
first quantization step off raw pixels (measured: the whole 640 YOLOv8n-sized
model 5-6% faster at 1 and 2 threads). Calibration needs
real frames; there is no calibration-free mode.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from engines.optimize.float_head import find_float_head
from engines.optimize.onnx_graph import attribute, producers
from engines.optimize.silu_fusion import fuse_silu

QuantTarget = Literal["cpu", "tensorrt"]
CalibrationName = Literal["entropy", "percentile", "minmax"]
TARGETS: tuple[str, ...] = ("cpu", "tensorrt")
METHODS: tuple[str, ...] = ("entropy", "percentile", "minmax")
MIN_CALIBRATION_FRAMES = 8
_STEM_CHANNELS = 4  # RGB or RGBA input: below this, INT8 convolution kernels do not pay
QUANTIZATION_KEY = "edge_agent_quantization"  # metadata key: how an INT8 model was made
ACCURACY_KEY = "edge_agent_accuracy"  # metadata key: {"verified": bool, "summary": the gate's verdict}


class QuantizationError(Exception):
    """The model could not be quantized; the message says why and what to try."""


@dataclass(frozen=True)
class QuantizedModel:
    path: Path
    target: str
    method: str
    calibration_frames: int
    float_nodes: int  # nodes kept in float (the head)
    output_convs: tuple[str, ...]
    stem_convs: tuple[str, ...]  # convolutions over the image's channels, kept float
    quantized_convs: int
    total_convs: int


class _TensorReader:
    """ONNX Runtime's CalibrationDataReader over a list of input tensors."""

    def __init__(self, input_name: str, tensors: list[np.ndarray]) -> None:
        self._input_name = input_name
        self._tensors: Iterator[np.ndarray] = iter(tensors)

    def get_next(self) -> dict[str, np.ndarray] | None:
        tensor = next(self._tensors, None)
        return None if tensor is None else {self._input_name: tensor}

    def rewind(self) -> None:  # pragma: no cover - only some calibrators call it
        raise QuantizationError("this calibration method needs a second pass, which is not supported")


def _pre_process(src: Path, dst: Path) -> None:
    """ONNX shape inference and graph folding; symbolic inference is skipped.

    ONNX Runtime recommends symbolic inference for transformers, not CNNs, and when it gives up
    on a dynamic shape it leaves `sym_shape_infer_temp.onnx` and its data in the working directory.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


def _settings(target: str) -> dict:
    from onnxruntime.quantization import QuantType

    if target == "cpu":
        return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}}
    if target == "tensorrt":
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": True}}
    raise QuantizationError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")


def _stem_convs(model: onnx.ModelProto) -> tuple[str, ...]:
    """Ungrouped convolutions fed straight by a model input with at most 4 channels: the image.

    A stem behind in-graph normalisation (Cast, Sub, Div) is not recognised and is quantized.
    """
    inputs = {i.name for i in model.graph.input}
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}

    def is_stem(node: onnx.NodeProto) -> bool:
        shape = shapes.get(node.input[1], ())
        return (node.input[0] in inputs and attribute(node, "group", 1) == 1
                and len(shape) == 4 and shape[1] <= _STEM_CHANNELS)

    return tuple(sorted(n.name for n in model.graph.node if n.op_type == "Conv" and is_stem(n)))


def _count_and_stamp(path: Path, provenance: dict) -> tuple[int, int]:
    """Count the INT8 convolutions and record how the model was made in its metadata (backends
    report such a model as `int8`); returns (quantized, total) convolutions."""
    model = onnx.load(str(path))
    made_by = producers(model.graph)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = sum(1 for n in convs if n.input[1] in made_by and made_by[n.input[1]].op_type == "DequantizeLinear")
    props = {p.key: p.value for p in model.metadata_props}
    props[QUANTIZATION_KEY] = json.dumps({**provenance, "quantized_convs": quantized, "total_convs": len(convs)},
                                         separators=(",", ":"))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return quantized, len(convs)


def stamp_accuracy(path: Path, verified: bool, summary: str) -> None:
    """Record the accuracy gate's verdict in the model, so status shows an unverified one for what it is."""
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props[ACCURACY_KEY] = json.dumps({"verified": verified, "summary": summary}, separators=(",", ":"))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def quantize_model(src: Path, dst: Path, input_name: str, tensors: Iterable[np.ndarray],
                   target: str = "cpu", method: str = "entropy") -> QuantizedModel:
    """Write an INT8 QDQ copy of `src` to `dst`, calibrated on `tensors` (pre-processed model inputs)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    calibration = [np.ascontiguousarray(t, np.float32) for t in tensors]
    if len(calibration) < MIN_CALIBRATION_FRAMES:
        raise QuantizationError(
            f"{len(calibration)} calibration frame(s); at least {MIN_CALIBRATION_FRAMES} are needed "
            "(quantization without calibration data is refused)")
    if method not in METHODS:
        raise QuantizationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    settings = _settings(target)
    with tempfile.TemporaryDirectory(prefix="edge-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            _pre_process(src, prepared)
            graph = onnx.load(str(prepared))
            fused = fuse_silu(graph) if target == "cpu" else 0
            if fused:
                onnx.save(graph, str(prepared))
            head = find_float_head(graph)
            stem = _stem_convs(graph)
        except ValueError as exc:
            raise QuantizationError(f"{src}: {exc}") from exc
        except Exception as exc:
            raise QuantizationError(f"{src}: cannot prepare the model for quantization: {exc}") from exc
        calibrate = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
                     "minmax": CalibrationMethod.MinMax}[method]
        out_tmp = Path(tmp) / "int8.onnx"
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the calibrators print progress
                quantize_static(
                    str(prepared), str(out_tmp), _TensorReader(input_name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=calibrate,
                    nodes_to_exclude=sorted(head.nodes | set(stem)), **settings,
                )
        except QuantizationError:
            raise
        except Exception as exc:  # e.g. percentile histograms on a tensor with no range
            raise QuantizationError(
                f"{method} calibration failed: {exc}; try another --method ({', '.join(METHODS)})") from exc
        quantized, total = _count_and_stamp(out_tmp, {"target": target, "method": method,
                                                      "calibration_frames": len(calibration), "fused_silu": fused})
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(out_tmp, dst)
    return QuantizedModel(dst, target, method, len(calibration), len(head.nodes), head.output_convs, stem,
                          quantized, total)
