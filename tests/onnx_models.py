"""Small ONNX models built in the tests, one per output layout.

Each model returns a fixed tensor (plus 0 × the input, so the input is really
consumed and the batch dimension follows the input): the tests then know
exactly which boxes the decoder must produce.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_constant_model(path: Path, output: np.ndarray, input_hw: tuple[int, int] = (320, 320),
                        dynamic_batch: bool = False, metadata: dict[str, str] | None = None,
                        ultralytics_dynamic: bool = False) -> Path:
    """`output` is one image's output ([C, N] or [N, C]); the model adds the batch dim.

    `ultralytics_dynamic` declares shapes as Ultralytics' `dynamic=True` export does:
    input ['batch', 3, 'height', 'width'], output ['batch', C, 'anchors'].
    """
    h, w = input_hw
    batch: int | str = "batch" if dynamic_batch or ultralytics_dynamic else 1
    in_shape = [batch, 3, "height", "width"] if ultralytics_dynamic else [batch, 3, h, w]
    out_shape = [batch, output.shape[0], "anchors"] if ultralytics_dynamic else [batch, *output.shape]
    const = numpy_helper.from_array(output[None].astype(np.float32), "const")
    shape = numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceSum", ["images", "axes"], ["sum"], keepdims=1),
        helper.make_node("Reshape", ["sum", "shape3"], ["sum3"]),
        helper.make_node("Mul", ["sum3", "zero"], ["nothing"]),
        helper.make_node("Add", ["const", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "constant_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        initializer=[const, shape, zero, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def yolov8_output(objects: list[tuple[int, float, tuple[float, float, float, float]]], num_classes: int,
                  anchors: int = 100) -> np.ndarray:
    """[4+nc, N]: each object (class, score, x1y1x2y2 in input px) in its own anchor column."""
    out = np.zeros((4 + num_classes, anchors), np.float32)
    for i, (cls, score, (x1, y1, x2, y2)) in enumerate(objects):
        out[:4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        out[4 + cls, i] = score
    return out


def yolov5_output(objects: list[tuple[int, float, float, tuple[float, float, float, float]]], num_classes: int,
                  anchors: int = 100) -> np.ndarray:
    """[N, 5+nc]: (class, objectness, class score, box) per row."""
    out = np.zeros((anchors, 5 + num_classes), np.float32)
    for i, (cls, obj, score, (x1, y1, x2, y2)) in enumerate(objects):
        out[i, :5] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj]
        out[i, 5 + cls] = score
    return out


def end2end_output(objects: list[tuple[int, float, tuple[float, float, float, float]]], rows: int = 300) -> np.ndarray:
    """[N, 6]: x1, y1, x2, y2, score, class; unused rows are zero, as exporters pad them."""
    out = np.zeros((rows, 6), np.float32)
    for i, (cls, score, box) in enumerate(objects):
        out[i] = [*box, score, cls]
    return out
