"""The DFL rewrite: same numbers as Softmax + Conv from real ONNX Runtime sessions, only where it applies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from engines.config import OnnxRuntimeConfig
from engines.onnxruntime.backend import OnnxRuntimeBackend
from engines.optimize.dfl_rewrite import rewrite_dfl

ANCHORS = 210
BINS = 16


def dfl_model(opset: int = 17, transpose: bool = True, bias: bool = False, softmax_also_output: bool = False,
              weights: np.ndarray | None = None, dtype: type = np.float32) -> onnx.ModelProto:
    """Ultralytics' DFL: box logits [1, 64, A] → [1, 4, 16, A] → transpose → Softmax(1) → 1×1 Conv → [1, 4, A]."""
    w = np.arange(BINS, dtype=dtype) if weights is None else weights.astype(dtype)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(w.reshape(1, BINS, 1, 1), "dfl.w"),
             numpy_helper.from_array(np.array([1, 4, BINS, ANCHORS], np.int64), "bins_shape"),
             numpy_helper.from_array(np.array([1, 4, ANCHORS], np.int64), "dist_shape")]
    conv_inputs = ["bins_sm", "dfl.w"]
    if bias:
        inits.append(numpy_helper.from_array(np.array([0.25], dtype), "dfl.b"))
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
    outputs = [helper.make_tensor_value_info("output0", elem, [1, 4, ANCHORS])]
    if softmax_also_output:
        outputs.append(helper.make_tensor_value_info("bins_sm", elem, [1, BINS, 4, ANCHORS]))
    graph = helper.make_graph(nodes, "dfl", [helper.make_tensor_value_info("box", elem, [1, 4 * BINS, ANCHORS])],
                              outputs, inits)
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


def test_rewrite_follows_a_permutation_that_is_not_its_own_inverse(logits: np.ndarray) -> None:
    """Bins last before the transpose: [1, 4, A, 16] → perm [0, 3, 1, 2] → [1, 16, 4, A]."""
    model = dfl_model()
    nodes = model.graph.node
    shape = next(i for i in model.graph.initializer if i.name == "bins_shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([1, 4, ANCHORS, BINS], np.int64), "bins_shape"))
    transpose = next(n for n in nodes if n.op_type == "Transpose")
    transpose.attribute[0].CopyFrom(helper.make_attribute("perm", [0, 3, 1, 2]))
    x = logits.reshape(1, 4, BINS, ANCHORS).transpose(0, 1, 3, 2).reshape(1, 4 * BINS, ANCHORS).copy()
    expected = _run(model, x)
    assert rewrite_dfl(model) == 1
    onnx.checker.check_model(model, full_check=True)
    np.testing.assert_allclose(_run(model, x), expected, rtol=1e-5, atol=1e-4)


def test_fp16_model_stays_fp16(logits: np.ndarray) -> None:
    model = dfl_model(dtype=np.float16)
    x = logits.astype(np.float16)
    expected = _run(model, x)
    assert rewrite_dfl(model) == 1
    onnx.checker.check_model(model, full_check=True)
    got = _run(model, x)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=2e-2, atol=2e-2)


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
    with caplog.at_level(logging.INFO, logger="engines.onnxruntime.backend"):
        fast = OnnxRuntimeBackend(path, OnnxRuntimeConfig())
    assert any("DFL box decode rewritten" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="engines.onnxruntime.backend"):
        plain = OnnxRuntimeBackend(path, OnnxRuntimeConfig(fast_dfl=False))
    assert not caplog.records
    np.testing.assert_allclose(fast.infer(logits)[0], plain.infer(logits)[0], rtol=1e-5, atol=1e-4)
    assert onnx.load(str(path)).SerializeToString() == dfl_model().SerializeToString()  # the file is untouched


def test_a_rewritten_graph_onnxruntime_rejects_falls_back_to_the_file(
        tmp_path: Path, logits: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "dfl.onnx"
    onnx.save(dfl_model(), str(path))

    def broken_rewrite(model: onnx.ModelProto) -> int:  # stands in for a rewrite bug
        model.graph.node.append(helper.make_node("NoSuchOp", ["box"], ["junk"], name="junk"))
        return 1

    monkeypatch.setattr("engines.onnxruntime.backend.rewrite_dfl", broken_rewrite)
    with caplog.at_level(logging.WARNING, logger="engines.onnxruntime.backend"):
        backend = OnnxRuntimeBackend(path, OnnxRuntimeConfig())
    assert any("did not load" in r.getMessage() for r in caplog.records)
    np.testing.assert_allclose(backend.infer(logits)[0], _run(dfl_model(), logits), rtol=1e-6)
