"""Lookups over an ONNX graph that the graph rewrites and the quantizer share."""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx
from onnx import helper


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name → the node that produces it."""
    return {out: node for node in graph.node for out in node.output}


def use_counts(graph: onnx.GraphProto) -> Counter[str]:
    """Tensor name → how many node inputs and graph outputs read it (subgraphs not counted)."""
    return Counter([name for node in graph.node for name in node.input] + [o.name for o in graph.output])


def attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of a node's attribute, or `default` where the node does not set it."""
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)
