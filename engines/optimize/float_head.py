"""Which nodes of a detector are its head, to be kept in float when quantizing.

Quantizing the detection head ruins a detector: the class logits span a wide
range whose low end (the scores near the threshold) falls into one INT8 step,
and the box decode (DFL softmax, anchor arithmetic) loses pixels. So INT8
stops at the last feature maps: the output convolutions and everything after
them stay float.

The head is found from the graph, not from layer names: walk back from each
model output through every node until a Conv is reached; that Conv is an
output convolution and the walk stops there. The one exception is YOLOv8's DFL,
a fixed Conv fed by a Softmax over box bins: it belongs to the decode, so the
walk goes on through it to the real box convolutions. This covers the demo
model, YOLOv5 (Detect convs, then sigmoid and grid arithmetic), YOLOv8/YOLO11
(Detect cv2/cv3 output convs, DFL, decode) and end-to-end exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from engines.optimize.onnx_graph import producers

# Ops that only move data around; looked through when asking "is this Conv fed by a Softmax?"
_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_SHAPE_ONLY = frozenset({"Shape", "Size"})


@dataclass(frozen=True)
class FloatHead:
    nodes: frozenset[str]  # node names to keep float (output convs and the decode after them)
    output_convs: tuple[str, ...]  # the Conv nodes among them, for the report


def _fed_by_softmax(node: onnx.NodeProto, made_by: dict[str, onnx.NodeProto]) -> bool:
    source = made_by.get(node.input[0])
    while source is not None and source.op_type in _LAYOUT_OPS:
        source = made_by.get(source.input[0])
    return source is not None and source.op_type == "Softmax"


def find_float_head(model: onnx.ModelProto) -> FloatHead:
    """The nodes between the last feature convolutions and the model outputs (inclusive)."""
    unnamed = [n for n in model.graph.node if not n.name]
    if unnamed:
        raise ValueError(f"{len(unnamed)} graph node(s) have no name; cannot exclude the head from quantization")
    made_by = producers(model.graph)
    head: set[str] = set()
    convs: list[str] = []
    pending = [o.name for o in model.graph.output]
    while pending:
        node = made_by.get(pending.pop())
        if node is None or node.name in head:
            continue
        head.add(node.name)
        if node.op_type in _SHAPE_ONLY:
            continue  # reads only the shape of its input, not its values
        if node.op_type == "Conv":
            convs.append(node.name)
            if not _fed_by_softmax(node, made_by):
                continue  # an output convolution: the feature maps before it are quantized
        pending.extend(i for i in node.input if i)
    if not convs:
        raise ValueError("no convolution found between the model outputs and its input; not a CNN detector")
    if len(head) == len(model.graph.node):
        raise ValueError("the whole graph is head; nothing would be quantized")
    return FloatHead(frozenset(head), tuple(sorted(convs)))
