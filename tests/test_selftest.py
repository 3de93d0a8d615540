"""`edge-agent selftest` on a machine without a GPU: CPU engines checked, GPU engines explained."""

from __future__ import annotations

import json

import pytest

from agent.cli.main import main


def test_selftest_checks_cpu_engines_and_says_why_gpu_ones_are_missing(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["selftest", "--json"])
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["engines"]}
    assert code == 0
    assert rows["onnxruntime-cpu fp32"]["status"] == "ok" and rows["onnxruntime-cpu fp32"]["ms_per_frame"] > 0
    int8 = rows["onnxruntime-cpu int8"]
    assert int8["status"] == "ok" and int8["agreement"] >= 0.9 and int8["ms_per_frame"] > 0
    for name in ("onnxruntime-cuda fp32", "onnxruntime-tensorrt fp16", "tensorrt fp16", "tensorrt int8"):
        assert rows[name]["status"] == "unavailable" and rows[name]["note"], name
    assert "TensorRT is not installed" in rows["tensorrt fp16"]["note"]
    assert "onnxruntime-gpu" in rows["onnxruntime-cuda fp32"]["note"]
    assert report["gpu_memory"]["budget_mb"] == 1024 and report["gpu_memory"]["peak_mb"] == 0
