"""The DFL rewrite: same numbers as Softmax + Conv from real ONNX Runtime sessions, only where it applies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from engines.config import OnnxRuntimeConfig
from engines.dfl_rewrite import rewrite_dfl
from engines.onnxruntime_backend import OnnxRuntimeBackend

ANCHORS = 210
BINS = 16


def dfl_model(opset: int = 17, transpose: bool = True, bias: bool = False, softmax_also_output: bool = False,
              weights: np.ndarray | None = None) -> onnx.ModelProto:
    """Ultralytics' DFL: box logits [1, 64, A] → [1, 4, 16, A] → transpose → Softmax(1) → 1×1 Conv → [1, 4, A]."""
    w = np.arange(BINS, dtype=np.float32) if weights is None else weights
    inits = [numpy_helper.from_array(w.reshape(1, BINS, 1, 1), "dfl.w"),
             numpy_helper.from_array(np.array([1, 4, BINS, ANCHORS], np.int64), "bins_shape"),
             numpy_helper.from_array(np.array([1, 4, ANCHORS], np.int64), "dist_shape")]
    conv_inputs = ["bins_sm", "dfl.w"]
    if bias:
        inits.append(numpy_helper.from_array(np.array([0.25], np.float32), "dfl.b"))
        conv_inputs.append("dfl.b")
    if transpose:
        nodes = [helper.make_node("Reshape", ["box", "bins_shape"], ["bins"], name="bins_reshape"),
                 helper.make_node("Transpose", ["bins"], ["bins_t"], name="dfl_transpose", perm=[0, 2, 1, 3]),
                 helper.make_node("Softmax", ["bins_t"], ["bins_sm"], name="dfl_softmax", axis=1)]
    else:  # bins already on axis 1: [1, 16, 4, A]
        inits[1] = numpy_helper.from_array(np.array([1, BINS, 4, ANCHORS], np.int64), "bins_shape")
        nodes = [helper.make_node("Reshape", ["box", "bins_shape"], ["bins"], name="bins_reshape"),
                 helper.make_node("Softmax", ["bins"], ["bins_sm"], name="dfl_softmax", axis=1)]
    nodes += [helper.make_node("Conv", conv_inputs, ["dist"], name="dfl_conv"),
              helper.make_node("Reshape", ["dist", "dist_shape"], ["output0"], name="dist_reshape")]
    outputs = [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, ANCHORS])]
    if softmax_also_output:
        outputs.append(helper.make_tensor_value_info("bins_sm", TensorProto.FLOAT, [1, BINS, 4, ANCHORS]))
    graph = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("box", TensorProto.FLOAT,
                                                                           [1, 4 * BINS, ANCHORS])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["output0"], {"box": x})[0]


@pytest.fixture
def logits() -> np.ndarray:
    """Box logits as a trained head gives them: some anchors sure of one bin, some spread out."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 2.0, (1, 4 * BINS, ANCHORS)).astype(np.float32)
    x[:, :, ::3] *= 12.0  # peaked distributions: exp() of these would overflow without the max shift
    return x


@pytest.mark.parametrize("opset", [13, 17, 18, 21])
@pytest.mark.parametrize("transpose", [True, False])
def test_rewrite_gives_the_softmax_conv_result(opset: int, transpose: bool, logits: np.ndarray) -> None:
    model = dfl_model(opset, transpose)
    expected = _run(model, logits)
    assert rewrite_dfl(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "Softmax" not in ops and "Conv" not in ops
    assert "dfl.w" not in {i.name for i in model.graph.initializer}  # the replaced weights are dropped
    got = _run(model, logits)
    assert got.shape == expected.shape == (1, 4, ANCHORS)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert np.isfinite(got).all()


def test_rewrite_keeps_conv_bias_and_any_bin_weights(logits: np.ndarray) -> None:
    weights = np.linspace(-3.0, 7.0, BINS, dtype=np.float32)
    model = dfl_model(bias=True, weights=weights)
    expected = _run(model, logits)
    assert rewrite_dfl(model) == 1
    np.testing.assert_allclose(_run(model, logits), expected, rtol=1e-5, atol=1e-4)


def test_patterns_it_must_not_touch() -> None:
    shared = dfl_model(softmax_also_output=True)  # the softmax is used elsewhere too
    before = shared.SerializeToString()
    assert rewrite_dfl(shared) == 0 and shared.SerializeToString() == before
    old = dfl_model(opset=12)  # Softmax(axis=1) meant "over all trailing axes" before opset 13
    assert rewrite_dfl(old) == 0


def test_onnxruntime_backend_runs_the_rewritten_graph_with_the_same_result(
        tmp_path: Path, logits: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dfl.onnx"
    onnx.save(dfl_model(), str(path))
    with caplog.at_level(logging.INFO, logger="engines.onnxruntime_backend"):
        fast = OnnxRuntimeBackend(path, OnnxRuntimeConfig())
    assert any("DFL box decode rewritten" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines.onnxruntime_backend"):
        plain = OnnxRuntimeBackend(path, OnnxRuntimeConfig(fast_dfl=False))
    assert not caplog.records
    np.testing.assert_allclose(fast.infer(logits)[0], plain.infer(logits)[0], rtol=1e-5, atol=1e-4)
    assert onnx.load(str(path)).SerializeToString() == dfl_model().SerializeToString()  # the file is untouched
