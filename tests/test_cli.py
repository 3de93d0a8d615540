"""The command line as a user runs it: demo-clip, detect, run on the demo, store stats/export."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from agent.cli.console import StatusPrinter
from agent.ids import uuid7
from agent.store.store import DB_NAME, connect, migrate, transaction
from engines.metrics import _iou


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=timeout)


def test_demo_clip_writes_video_and_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    result = cli("demo-clip", "--out", str(out), "--seconds", "2", "--seed", "5")
    assert result.returncode == 0, result.stderr
    truth = json.loads((tmp_path / "clip.mp4.json").read_text())
    assert truth["labels"] == ["circle", "square", "triangle", "star", "cross"]
    assert [f["index"] for f in truth["frames"]] == list(range(30))
    obj = truth["frames"][0]["objects"][0]
    assert set(obj) == {"label", "class_id", "box"} and truth["labels"][obj["class_id"]] == obj["label"]
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 30


def test_detect_prints_one_json_object_per_image_in_image_pixels(tmp_path: Path, short_clip: Path) -> None:
    truth = json.loads(Path(str(short_clip) + ".json").read_text())
    cap = cv2.VideoCapture(str(short_clip))
    images, expected = [], []
    for index in range(2):
        ok, frame = cap.read()
        assert ok
        path = tmp_path / f"frame{index}.png"
        cv2.imwrite(str(path), frame)
        images.append(str(path))
        expected.append(truth["frames"][index]["objects"])
    result = cli("detect", "--model", "demo", "--json", *images)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    for line, objects in zip(lines, expected):
        assert line["detections"], "the demo detector should find the demo's objects"
        gt = np.array([o["box"] for o in objects], float)
        for det in line["detections"]:
            assert set(det) == {"label", "class_id", "score", "box"}
        matched = sum(
            1 for o in objects
            if any(d["label"] == o["label"] and _iou(d["box"], np.array([o["box"]], float))[0] > 0.5
                   for d in line["detections"])
        )
        assert matched >= len(gt) - 1  # in original pixels: boxes line up with the ground truth


def test_detect_reports_a_missing_model_clearly(tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    result = cli("detect", "--model", str(tmp_path / "missing.onnx"), str(image))
    assert result.returncode != 0 and "model file not found" in result.stderr and "missing.onnx" in result.stderr


def test_run_demo_then_inspect_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = cli("run", "--data-dir", str(data), "--duration", "15")  # the demo clips are made first (~8 s on 2 cores)
    assert result.returncode == 0, result.stderr
    assert "demo-1" in result.stdout and "demo-2" in result.stdout  # status lines
    stats = json.loads(cli("store", "stats", "--data-dir", str(data), "--json").stdout)
    assert stats["detections"] > 0 and set(stats["per_camera"]) == {"demo-1", "demo-2"}
    exported = [json.loads(line) for line in cli("store", "export", "--data-dir", str(data),
                                                  "--kind", "detections").stdout.splitlines()]
    assert len(exported) == stats["detections"]
    assert len({row["id"] for row in exported}) == len(exported)
    assert {"id", "camera", "ts_ms", "frame", "label", "class_id", "score", "box"} <= set(exported[0])
    assert (data / "device_id").read_text().strip().startswith("edge-")
    assert (data / "edge-agent.db").is_file()  # the name README documents and installed devices have


def test_store_export_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    db = connect(tmp_path / DB_NAME)
    migrate(db)
    with transaction(db):  # megabytes of JSON lines: far more than a pipe holds
        db["detections"].insert_all(
            {"id": uuid7(1_700_000_000_000 + i), "camera": "gate", "ts_ms": 1_700_000_000_000 + i, "frame": i,
             "label": "person", "class_id": 0, "score": 0.5, "x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0}
            for i in range(20_000))
    db.conn.close()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "store", "export", "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()  # the reader goes away, as `edge-agent store export | head -1` does
    stderr = proc.stderr.read()
    proc.wait(60)
    assert first["camera"] == "gate" and first["frame"] == 0
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_status_lines_into_a_closed_pipe_stop_without_an_error() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `edge-agent run | head -1` after head has exited
    out = os.fdopen(write_end, "w")
    camera = {"state": "running", "fps": 10.0, "stages": {"infer": {"p50_ms": 3.0}}, "detections": 1,
              "frames_dropped": 0, "reconnects": 0, "last_error": None}
    snapshots = []

    def snapshot() -> dict:
        snapshots.append(1)
        return {"cameras": {"gate": camera}, "store": {"dropped": 0, "write_errors": 0}}

    printer = StatusPrinter(snapshot, 0.05, out)  # not a terminal: its own thread prints every 10 s at most
    printer.start()
    printer.print_once()  # EPIPE here must not escape: the agent runs on
    printer.print_once()
    printer.stop()
    assert len(snapshots) == 1  # nothing more is computed for a reader that is gone
    with contextlib.suppress(BrokenPipeError):
        out.close()
