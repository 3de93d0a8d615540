"""Decoding, letterbox, NMS, labels and model errors, on real ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines import DetectorConfig, ModelLayoutError, ModelLoadError, load_detector
from engines.letterbox import LetterboxWriter
from tests.onnx_models import end2end_output, make_constant_model, yolov5_output, yolov8_output

NAMES = "{0: 'person', 1: 'car', 2: 'dog'}"  # as Ultralytics writes it


def load(path: Path, **settings) -> object:
    return load_detector(DetectorConfig(path=str(path), **settings))


def frame(width: int = 640, height: int = 360) -> np.ndarray:
    return np.zeros((height, width, 3), np.uint8)


def test_letterbox_writes_rgb_chw_with_grey_padding() -> None:
    writer = LetterboxWriter(1, 320, 320)
    blue = np.zeros((360, 640, 3), np.uint8)
    blue[..., 0] = 255  # BGR blue
    box = writer.write(0, blue)
    assert (box.scale, box.pad_x, box.pad_y) == (0.5, 0.0, 70.0)
    t = writer.tensor[0]
    assert t.shape == (3, 320, 320)
    assert np.allclose(t[2, 70:250], 1.0) and np.allclose(t[0, 70:250], 0.0)  # RGB order
    assert np.allclose(t[:, :70], 114 / 255) and np.allclose(t[:, 250:], 114 / 255)


def test_letterbox_reuses_its_buffers() -> None:
    writer = LetterboxWriter(2, 192, 320)
    tensor_id = id(writer.tensor)
    for _ in range(3):
        writer.write(0, frame(640, 360))
        writer.write(1, frame(1280, 720))
    assert id(writer.tensor) == tensor_id
    assert len(writer._resized) == 1  # both frames resize to 320×180


def test_yolov8_layout_boxes_in_frame_pixels_and_class_aware_nms(tmp_path: Path) -> None:
    objects = [
        (0, 0.9, (100, 120, 180, 200)),  # person
        (0, 0.8, (102, 121, 181, 203)),  # duplicate person: suppressed
        (1, 0.7, (102, 121, 181, 203)),  # same place, other class: kept
        (2, 0.2, (10, 80, 50, 120)),  # below threshold
    ]
    model = make_constant_model(tmp_path / "v8.onnx", yolov8_output(objects, 3), metadata={"names": NAMES})
    det = load(model, score_threshold=0.4, iou_threshold=0.5)
    assert det.info.layout == "yolov8" and det.labels == ["person", "car", "dog"]
    result = det.detect([frame()])[0]
    assert [(d.label, round(d.score, 2)) for d in result] == [("person", 0.9), ("car", 0.7)]
    # input 320×320, frame 640×360: scale 0.5, 70 px bars top and bottom
    assert np.allclose(result[0].box, (200, 100, 360, 260), atol=0.01)
    assert np.allclose(result[1].box, (204, 102, 362, 266), atol=0.01)


def test_yolov5_layout_multiplies_objectness_and_class_score(tmp_path: Path) -> None:
    objects = [
        (2, 0.9, 0.9, (40, 110, 80, 150)),  # 0.81
        (1, 0.9, 0.3, (200, 110, 260, 150)),  # 0.27: dropped at 0.4
        (0, 0.3, 0.99, (150, 150, 190, 190)),  # objectness too low
    ]
    model = make_constant_model(tmp_path / "v5.onnx", yolov5_output(objects, 3), metadata={"names": NAMES})
    det = load(model, score_threshold=0.4)
    assert det.info.layout == "yolov5"
    (d,) = det.detect([frame()])[0]
    assert d.label == "dog" and d.score == pytest.approx(0.81, abs=1e-4)
    assert np.allclose(d.box, (80, 80, 160, 160), atol=0.01)


def test_end2end_layout_keeps_overlaps_and_ignores_padding_rows(tmp_path: Path) -> None:
    objects = [(1, 0.95, (100, 120, 180, 200)), (1, 0.9, (104, 124, 184, 204))]  # NMS already done upstream
    model = make_constant_model(tmp_path / "e2e.onnx", end2end_output(objects), metadata={"names": NAMES})
    det = load(model)
    assert det.info.layout == "end2end"
    result = det.detect([frame()])[0]
    assert [d.label for d in result] == ["car", "car"]
    assert np.allclose(result[1].box, (208, 108, 368, 268), atol=0.01)


def test_dynamic_batch_maps_each_frame_with_its_own_letterbox(tmp_path: Path) -> None:
    out = yolov8_output([(0, 0.9, (100, 120, 180, 200))], 3)
    model = make_constant_model(tmp_path / "dyn.onnx", out, dynamic_batch=True, metadata={"names": NAMES})
    det = load(model, max_batch=3)
    assert det.max_batch == 3
    wide, tall, square = det.detect([frame(640, 360), frame(360, 640), frame(160, 160)])
    assert np.allclose(wide[0].box, (200, 100, 360, 260), atol=0.01)
    assert np.allclose(tall[0].box, (100 * 2 - 70 * 2, 240, 180 * 2 - 70 * 2, 400), atol=0.01)
    assert np.allclose(square[0].box, (50, 60, 90, 100), atol=0.01)


def test_ultralytics_dynamic_export_uses_imgsz_metadata_and_learns_anchor_count(tmp_path: Path) -> None:
    out = yolov8_output([(1, 0.9, (100, 120, 180, 200))], 3, anchors=8400)
    model = make_constant_model(tmp_path / "dyn.onnx", out, ultralytics_dynamic=True,
                                metadata={"names": NAMES, "imgsz": "[320, 320]"})
    det = load(model)
    assert (det.input_h, det.input_w, det.info.layout, det.labels[1]) == (320, 320, "yolov8", "car")
    assert np.allclose(det.detect([frame()])[0][0].box, (200, 100, 360, 260), atol=0.01)
    no_imgsz = make_constant_model(tmp_path / "bare.onnx", out, ultralytics_dynamic=True)
    with pytest.raises(ModelLayoutError, match=r"set model\.input_size"):
        load(no_imgsz)
    assert load(no_imgsz, input_size=(320, 320)).input_w == 320


def test_boxes_are_clipped_to_the_frame(tmp_path: Path) -> None:
    out = yolov8_output([(0, 0.9, (-30, 40, 350, 300))], 3)  # spills over every edge of the picture
    det = load(make_constant_model(tmp_path / "spill.onnx", out))
    assert det.detect([frame()])[0][0].box == (0.0, 0.0, 640.0, 360.0)


def test_unreadable_labels_file_is_a_model_error(tmp_path: Path) -> None:
    model = make_constant_model(tmp_path / "m.onnx", yolov8_output([], 3))
    bad = tmp_path / "labels.yaml"
    bad.write_text("names: [unclosed\n")
    for labels in (bad, tmp_path / "absent.txt"):
        with pytest.raises(ModelLoadError, match="cannot read labels"):
            load(model, labels=labels)


def test_labels_file_then_metadata_then_class_n(tmp_path: Path) -> None:
    out = yolov8_output([(2, 0.9, (10, 10, 50, 50))], 3)
    plain = make_constant_model(tmp_path / "plain.onnx", out)
    assert load(plain).labels == ["class_0", "class_1", "class_2"]
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ncow\nowl\n")
    assert load(plain, labels=labels).detect([frame()])[0][0].label == "owl"
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("names:\n  0: a\n  1: b\n  2: c\n")
    assert load(plain, labels=data_yaml).labels == ["a", "b", "c"]


def test_one_class_yolov5_needs_the_layout_setting(tmp_path: Path) -> None:
    out = yolov5_output([(0, 0.9, 0.9, (10, 10, 50, 50))], 1)  # [N, 6]: reads as end2end
    model = make_constant_model(tmp_path / "one.onnx", out)
    assert load(model).info.layout == "end2end"
    det = load(model, layout="yolov5")
    assert det.info.layout == "yolov5" and det.detect([frame(320, 320)])[0][0].box == pytest.approx((10, 10, 50, 50))


def test_unknown_output_layout_names_file_and_shape(tmp_path: Path) -> None:
    model = make_constant_model(tmp_path / "odd.onnx", np.zeros((9, 9), np.float32), metadata={"names": NAMES})
    with pytest.raises(ModelLayoutError) as err:
        load(model)
    assert "odd.onnx" in str(err.value) and "[1, 9, 9]" in str(err.value)


def test_missing_and_corrupt_model_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model file not found: .*absent\.onnx"):
        load(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    with pytest.raises(ModelLoadError, match=r"cannot load model .*corrupt\.onnx"):
        load(corrupt)


def test_demo_model_is_packaged_with_ultralytics_style_metadata() -> None:
    det = load("demo")
    assert det.info.layout == "yolov8"
    assert det.labels == ["circle", "square", "triangle", "star", "cross"]
    assert Path(det.info.model_path).stat().st_size <= 5 * 1024 * 1024


def test_run_plan_splits_the_cores_between_concurrent_runs_on_cpu_only() -> None:
    from engines.config import OnnxRuntimeConfig
    from engines.onnxruntime.backend import run_plan

    cpu = OnnxRuntimeConfig()
    assert run_plan(cpu, cores=2) == (2, 1)  # two frames at once, one thread each
    assert run_plan(cpu, cores=8) == (2, 4)
    assert run_plan(cpu, cores=1) == (1, 1)
    assert run_plan(OnnxRuntimeConfig(concurrent_runs=1), cores=4) == (1, 4)  # one run over every core
    assert run_plan(OnnxRuntimeConfig(concurrent_runs=3, intra_op_threads=2), cores=2) == (3, 2)  # as set
    gpu = OnnxRuntimeConfig(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert run_plan(gpu, cores=8) == (1, 0)  # the device serialises runs; ONNX Runtime picks its CPU threads


def test_each_run_in_flight_letterboxes_into_its_own_buffer(tmp_path: Path) -> None:
    model = make_constant_model(tmp_path / "m.onnx", yolov8_output([(0, 0.9, (10, 10, 50, 50))], 2))
    det = load_detector(DetectorConfig(path=str(model), engine={"concurrent_runs": 2}))
    first = det.preprocess([np.full((64, 64, 3), 10, np.uint8)], buffer=0)
    before = first.tensor.copy()
    second = det.preprocess([np.full((64, 64, 3), 200, np.uint8)], buffer=1)
    assert np.array_equal(first.tensor, before)  # the second frame did not overwrite the first's input
    assert not np.array_equal(second.tensor, before)
    assert [len(r) for r in (det.postprocess(first, det.infer(first)), det.postprocess(second, det.infer(second)))] \
        == [1, 1]
