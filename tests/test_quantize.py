"""INT8 quantization: head kept float, calibration from real sources, accuracy gate, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.cli.calibration import CalibrationSourceError, holdout_positions, sample_frames
from agent.cli.main import main
from agent.cli.model_quantize import predictions, quantize_with_gate
from agent.config import validate_config
from agent.demo.clips import write_clip
from agent.demo.scene import SceneGenerator
from engines import DEMO_MODEL_PATH, DetectorConfig, load_detector
from engines.optimize.accuracy_gate import against_fp32, against_ground_truth
from engines.optimize.float_head import find_float_head
from engines.optimize.quantize import QuantizationError, quantize_model
from engines.optimize.silu_fusion import fuse_silu


@pytest.fixture(scope="module")
def calib_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenes, 90 frames, with ground truth: enough for 48 calibration + 24 held-out frames."""
    return write_clip(tmp_path_factory.mktemp("quant") / "calib.mp4", seconds=6.0, seed=4242, scene_seconds=3.0)


def _conv(name: str, x: str, c_in: int, c_out: int, out: str) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    w = numpy_helper.from_array(np.zeros((c_out, c_in, 1, 1), np.float32), f"{name}.w")
    return helper.make_node("Conv", [x, w.name], [out], name=name), w


def test_float_head_stops_at_output_convs_and_walks_through_dfl() -> None:
    """A YOLOv8-shaped graph: feature convs → box/cls output convs → Softmax → DFL conv → decode."""
    nodes, inits = [], []
    for name, x, ci, co, out in [("backbone", "images", 3, 8, "f0"), ("neck", "f1", 8, 8, "f2"),
                                 ("box_out", "f2", 8, 64, "box"), ("cls_out", "f2", 8, 5, "cls"),
                                 ("dfl", "bins_t", 16, 1, "dist")]:
        node, w = _conv(name, x, ci, co, out)
        nodes.append(node)
        inits.append(w)
    inits += [numpy_helper.from_array(np.array([1, 4, 16, -1], np.int64), "bins_shape"),
              numpy_helper.from_array(np.array([1, 4, -1], np.int64), "dist_shape"),
              numpy_helper.from_array(np.array([1, 5, -1], np.int64), "cls_shape")]
    nodes += [
        helper.make_node("Sigmoid", ["f0"], ["f0s"], name="silu_sig"),
        helper.make_node("Mul", ["f0", "f0s"], ["f1"], name="silu_mul"),
        helper.make_node("Reshape", ["box", "bins_shape"], ["bins"], name="bins_reshape"),
        helper.make_node("Softmax", ["bins"], ["bins_sm"], name="dfl_softmax", axis=2),
        helper.make_node("Transpose", ["bins_sm"], ["bins_t"], name="dfl_transpose", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["dist", "dist_shape"], ["dist3"], name="dist_reshape"),
        helper.make_node("Shape", ["f2"], ["f2_shape"], name="feature_shape"),  # reads only the shape
        helper.make_node("Reshape", ["cls", "cls_shape"], ["cls3"], name="cls_reshape"),
        helper.make_node("Sigmoid", ["cls3"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["dist3", "scores"], ["output0"], name="concat", axis=1),
    ]
    graph = helper.make_graph(nodes, "v8_like", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                               [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("f2_shape", TensorProto.INT64, None)], inits)
    head = find_float_head(helper.make_model(graph))
    assert set(head.output_convs) == {"box_out", "cls_out", "dfl"}
    assert {"dfl_softmax", "dfl_transpose", "cls_sigmoid", "concat", "feature_shape"} <= head.nodes
    assert not {"backbone", "neck", "silu_sig", "silu_mul"} & head.nodes


def test_silu_fusion_is_exact_and_leaves_shared_sigmoids() -> None:
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["s"], name="silu_sig"),
             helper.make_node("Mul", ["s", "c"], ["silu"], name="silu_mul"),  # operands in either order
             helper.make_node("Sigmoid", ["silu"], ["g"], name="gate_sig"),  # shared: also a model output
             helper.make_node("Mul", ["silu", "g"], ["y"], name="gate_mul")]
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8]),
                               helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(0, 3, (1, 3, 8, 8)).astype(np.float32)

    def run(m: onnx.ModelProto) -> list[np.ndarray]:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})

    expected = run(model)
    assert fuse_silu(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv", "QuickGelu", "Sigmoid", "Mul"]
    for got, want in zip(run(model), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_stem_is_the_ungrouped_conv_over_the_image_channels() -> None:
    from engines.optimize.quantize import _stem_convs

    inits = [numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.float32), "stem.w"),
             numpy_helper.from_array(np.zeros((3, 1, 3, 3), np.float32), "dw.w"),
             numpy_helper.from_array(np.zeros((8, 16, 1, 1), np.float32), "next.w")]
    nodes = [helper.make_node("Conv", ["images", "stem.w"], ["a"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["images", "dw.w"], ["b"], name="depthwise", group=3, pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "next.w"], ["c"], name="next")]
    graph = helper.make_graph(nodes, "stems", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                             [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], inits)
    assert _stem_convs(helper.make_model(graph)) == ("stem",)


def test_demo_int8_keeps_head_float_and_is_accepted_on_ground_truth(calib_clip: Path, tmp_path: Path) -> None:
    frames = sample_frames(str(calib_clip), 48, 24, validate_config({}))
    assert frames.holdout_truth is not None and len(frames.holdout) == 24 and len(frames.calibration) == 48
    out = tmp_path / "demo.int8.onnx"
    result = quantize_with_gate(DetectorConfig(), frames, out, "cpu", "entropy", 1.0, 0.9)
    assert result.gate.passed, result.gate.summary()
    assert result.written == out and out.is_file()
    assert set(result.model.output_convs) == {"/net/box/Conv", "/net/cls/Conv"}
    assert result.model.stem_convs == ("/net/s4/s4.0/s4.0.0/Conv",)  # reads the image's 3 channels
    assert result.model.quantized_convs == result.model.total_convs - 3
    assert result.int8_bytes < result.fp32_bytes / 3  # INT8 weights
    assert result.gate.fp32_map50 > 0.9 and result.gate.drop_points <= 1.0
    graph = onnx.load(str(out)).graph
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 10
    assert sum(n.op_type == "QuickGelu" for n in graph.node) == 11  # every SiLU fused: one activation each
    assert [n.name for n in graph.node if n.op_type == "Sigmoid"] == ["/Sigmoid"]  # the float head's scores
    int8 = load_detector(DetectorConfig(path=str(out)))
    assert int8.info.precision == "int8" and "edge_agent_quantization" in int8.backend.metadata
    assert int8.info.accuracy_gate == {"verified": True, "summary": result.gate.summary()}
    fp32 = load_detector(DetectorConfig())
    held = frames.holdout[:8]
    agreement = against_fp32(predictions(fp32, held), predictions(int8, held), fp32.score_threshold)
    assert agreement.passed and agreement.agreement_map50 >= 0.9
    assert not list(tmp_path.glob(".*candidate"))


def test_tensorrt_target_is_symmetric_s8(calib_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = sample_frames(str(calib_clip), 16, 8, validate_config({}))
    out = tmp_path / "demo.trt.onnx"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the service's working directory must stay clean
    result = quantize_with_gate(DetectorConfig(), frames, out, "tensorrt", "minmax", 100.0, 0.0)
    assert result.written == out
    assert list(workdir.iterdir()) == []
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    q_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q_nodes
    assert not any(n.domain == "com.microsoft" for n in model.graph.node)  # TensorRT parses standard ops only
    for node in q_nodes:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name


def test_a_model_calibrated_on_the_wrong_scene_is_refused_and_not_written(calib_clip: Path, tmp_path: Path) -> None:
    frames = sample_frames(str(calib_clip), 16, 24, validate_config({}))
    # a camera that saw flat grey (fog, a covered lens): activation ranges far from what the scene needs
    frames.calibration = [np.full_like(f, 128) for f in frames.calibration]
    out = tmp_path / "bad.int8.onnx"
    result = quantize_with_gate(DetectorConfig(), frames, out, "cpu", "minmax", 1.0, 0.9)
    assert not result.gate.passed
    assert result.gate.drop_points > 1.0
    assert "REFUSED" in result.gate.summary()
    assert result.written is None and not out.exists()
    assert list(tmp_path.iterdir()) == []  # the candidate is gone too


def test_gate_figures_and_refusals() -> None:
    box = (10.0, 10.0, 50.0, 50.0)
    miss = (200.0, 200.0, 240.0, 240.0)
    truths = [[(0, box)], [(1, box)]] * 6
    perfect = [[(0, 0.9, box)], [(1, 0.9, box)]] * 6
    half = [[(0, 0.9, box)], [(1, 0.9, miss)]] * 6
    ok = against_ground_truth(perfect, perfect, truths, 1.0)
    assert ok.passed and ok.drop_points == 0.0
    bad = against_ground_truth(perfect, half, truths, 1.0)
    assert not bad.passed and bad.drop_points == pytest.approx(50.0)
    assert "REFUSED" in bad.summary() and "+50.00 points" in bad.summary()
    agree = against_fp32(perfect, half, 0.5, 0.9)
    assert not agree.passed and agree.agreement_map50 == pytest.approx(0.5)
    low = [[(0, 0.2, box)], [(1, 0.2, box)]] * 6  # FP32 finds nothing at its operating threshold
    empty = against_fp32(low, perfect, 0.5, 0.9)
    assert not empty.passed and "detected nothing" in empty.reason
    few = against_fp32(perfect[:3], perfect[:3], 0.5, 0.9)  # 3 objects: an agreement of 1.0 would mean nothing
    assert not few.passed and "only 3 objects" in few.reason
    assert not against_ground_truth(perfect, perfect, [[], []], 1.0).passed
    # the truth is of classes the model does not know: 0.000 against 0.000 is no "drop of 0 points"
    foreign = [[(c + 40, b) for c, b in frame] for frame in truths]
    vacuous = against_ground_truth(perfect, perfect, foreign, 1.0)
    assert not vacuous.passed and vacuous.fp32_map50 == 0.0 and "does not fit this model" in vacuous.reason
    assert "REFUSED" in vacuous.summary()


def test_quantization_without_enough_calibration_data_is_refused(tmp_path: Path) -> None:
    frame = np.zeros((1, 3, 192, 320), np.float32)
    with pytest.raises(QuantizationError, match="at least 8 are needed"):
        quantize_model(DEMO_MODEL_PATH, tmp_path / "x.onnx", "images", [frame] * 3)
    with pytest.raises(QuantizationError, match="at least 8 are needed"):
        quantize_model(DEMO_MODEL_PATH, tmp_path / "x.onnx", "images", [])
    assert not (tmp_path / "x.onnx").exists()


def test_holdout_positions_are_spread_and_disjoint_from_calibration() -> None:
    held = holdout_positions(96, 32)
    assert len(held) == 32 and min(held) < 3 and max(held) > 92
    assert len(holdout_positions(10, 10)) == 10


def test_calibration_sources_folder_and_camera_name(tmp_path: Path, calib_clip: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:02d}.png"), SceneGenerator(seed=(i, 1)).next_frame()[0])
    (folder / "notes.txt").write_text("not an image")
    frames = sample_frames(str(folder), 8, 4, validate_config({}))
    assert len(frames.calibration) == 8 and len(frames.holdout) == 4 and frames.holdout_truth is None
    with pytest.raises(CalibrationSourceError, match="12 image"):
        sample_frames(str(folder), 10, 4, validate_config({}))
    config = validate_config({"cameras": [{"name": "yard", "source": str(calib_clip)}]})
    by_name = sample_frames("yard", 8, 4, config)
    assert by_name.holdout_truth is not None and len(by_name.calibration) == 8
    with pytest.raises(CalibrationSourceError, match="cameras: yard"):
        sample_frames("gate", 8, 4, config)


def test_cli_quantize_prints_the_figure_and_exit_codes(calib_clip: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.int8.onnx"
    code = main(["models", "quantize", "--model", "demo", "--calib", str(calib_clip), "--frames", "16",
                 "--holdout", "16", "--method", "minmax", "--out", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["accepted"] and report["out"] == str(out) and out.is_file()
    assert report["gate"]["mode"] == "ground_truth" and "drop_points" in report["gate"]
    code = main(["models", "quantize", "--model", "demo", "--calib", str(tmp_path / "missing"),
                 "--out", str(tmp_path / "no.onnx")])
    assert code == 2 and "not a folder, a video file or a configured camera" in capsys.readouterr().err


def test_no_gate_writes_a_refused_model_marked_unverified_and_status_says_so(calib_clip: Path, tmp_path: Path) -> None:
    from agent.runtime import Runtime

    frames = sample_frames(str(calib_clip), 16, 16, validate_config({}))
    assert frames.holdout_truth is not None
    # an operator's own model on the demo clip: its truth is of classes the model does not have
    frames.holdout_truth = [[(c + 40, box) for c, box in objects] for objects in frames.holdout_truth]
    out = tmp_path / "foreign.int8.onnx"
    refused = quantize_with_gate(DetectorConfig(), frames, out, "cpu", "minmax", 1.0, 0.9)
    assert not refused.gate.passed and "does not fit" in refused.gate.reason and not out.exists()
    forced = quantize_with_gate(DetectorConfig(), frames, out, "cpu", "minmax", 1.0, 0.9, gate_required=False)
    assert forced.written == out and not forced.gate.passed
    runtime = Runtime(validate_config({"cameras": [], "model": {"path": str(out)},
                                       "storage": {"path": str(tmp_path / "data")}, "web": {"listen": None}}))
    runtime.start()
    try:
        gate = runtime.status()["engine"]["accuracy_gate"]
        assert gate["verified"] is False and "does not fit" in gate["summary"]
        assert runtime.telemetry.read()["engine"]["accuracy_gate"] == gate
    finally:
        runtime.stop()
