"""Native TensorRT backend logic against the FAKE TensorRT/CUDA in tests/fake_tensorrt.py.

What is real here: the build child process and its progress channel, the plan
cache on disk, budget accounting, the arena, the pinned/device buffer copies,
and detections compared with ONNX Runtime. What is fake: TensorRT and CUDA.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from agent.demo.scene import SceneGenerator
from engines import BudgetExceeded, DetectorConfig, GpuResources, load_detector
from engines.errors import BackendUnavailable
from engines.gpu_budget import MIB, GpuMemoryBudget
from engines.tensorrt.arena import ActivationArena
from engines.tensorrt.backend import TrtHost
from engines.tensorrt.features import TrtFeatures
from engines.tensorrt.plan_cache import EngineKey, PlanCache, l4t_release
from tests import fake_tensorrt
from tests.onnx_models import make_constant_model, yolov8_output


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> callable:
    """GpuResources whose TensorRT host is FAKE; `version` is what the FAKE TensorRT reports."""

    def make(budget_mb: int = 256, version: str = "10.3.0") -> GpuResources:
        monkeypatch.setenv("FAKE_TRT_VERSION", version)  # the build child imports the fake afresh
        monkeypatch.setattr(fake_tensorrt, "__version__", version)

        def host(budget: GpuMemoryBudget, device_id: int) -> TrtHost:
            return TrtHost(budget, device_id, trt=fake_tensorrt, cuda=fake_tensorrt.CUDA,
                           trt_module="tests.fake_tensorrt", cuda_factory="tests.fake_tensorrt:shared_cuda")

        return GpuResources(budget_mb, trt_host_factory=host)

    return make


def _trt_config(tmp_path: Path, **engine) -> DetectorConfig:
    return DetectorConfig(engine={"type": "tensorrt", "cache_dir": str(tmp_path / "engines"), **engine})


def test_version_gating_by_number_not_platform() -> None:
    jp5, jp61, x86 = TrtFeatures.parse("8.5.2.2"), TrtFeatures.parse("10.3.0"), TrtFeatures.parse("10.13.0.35")
    assert not jp5.async_allocator and not jp5.user_managed_strategy and not jp5.device_memory_v2
    assert jp61.async_allocator and jp61.device_memory_v2 and not jp61.strongly_typed_qdq
    assert x86.strongly_typed_qdq and TrtFeatures.parse("11.0").strongly_typed_qdq
    assert jp61.precision_plan(True, "auto") == "int8+fp16"
    assert x86.precision_plan(True, "auto") == "int8-strongly-typed"
    assert jp5.precision_plan(False, "auto") == "fp16" and jp5.precision_plan(False, "fp32") == "fp32"
    with pytest.raises(BackendUnavailable, match=r"8\.5 or newer"):
        TrtFeatures.parse("8.4.1")


def test_every_key_field_changes_the_plan_file(tmp_path: Path) -> None:
    key = EngineKey("ab" * 32, "10.3.0", "Orin", "8.7", "36.3.0", "fp16", "images", (1, 3, 192, 320),
                    (4, 3, 192, 320), (4, 3, 192, 320), 256 * MIB, None)
    cache = PlanCache(tmp_path)
    changes = {"model_sha256": "cd" * 32, "tensorrt_version": "10.3.1", "gpu_name": "Xavier",
               "compute_capability": "7.2", "l4t_release": "36.4.0", "precision": "int8+fp16",
               "max_shape": (8, 3, 192, 320), "workspace_bytes": 512 * MIB, "dla_core": 0}
    paths = {cache.plan_path(dataclasses.replace(key, **{k: v}), "m") for k, v in changes.items()}
    assert len(paths | {cache.plan_path(key, "m")}) == len(changes) + 1
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36106755, BOARD: generic, EABI: aarch64\n")
    assert l4t_release(release) == "36.3.0" and l4t_release(tmp_path / "absent") is None


def test_budget_refuses_with_needed_and_available_and_counts() -> None:
    budget = GpuMemoryBudget.from_mb(10)
    budget.reserve(8 * MIB, "a")
    with pytest.raises(BudgetExceeded, match=r"needs 4194304 bytes .* 2097152 bytes \(2.0 MiB\) of the 10 MiB"):
        budget.reserve(4 * MIB, "b")
    budget.release(8 * MIB, "a")
    snap = budget.snapshot()
    assert snap.used_bytes == 0 and snap.peak_bytes == 8 * MIB and snap.refusals == 1 and snap.holders == {}
    with pytest.raises(ValueError):
        budget.release(1, "a")


def test_arena_is_sized_to_the_largest_engine_and_rebinds_on_growth() -> None:
    cuda = fake_tensorrt.FakeCudaRuntime()
    budget = GpuMemoryBudget.from_mb(8)
    arena = ActivationArena(cuda, budget)
    bound: dict[str, tuple[int, int]] = {}
    arena.attach("small", 1 * MIB, lambda p, s: bound.__setitem__("small", (p, s)))
    arena.attach("big", 3 * MIB, lambda p, s: bound.__setitem__("big", (p, s)))
    assert arena.size == 3 * MIB and bound["small"] == bound["big"] == (arena.ptr, 3 * MIB)
    assert budget.snapshot().used_bytes == 3 * MIB and cuda.in_use == 3 * MIB  # one buffer, not 4 MiB
    with pytest.raises(BudgetExceeded):
        arena.attach("huge", 9 * MIB, lambda p, s: None)
    assert arena.size == 3 * MIB and cuda.in_use == 3 * MIB  # a refusal changes nothing
    arena.detach("big")
    assert arena.size == 1 * MIB and bound["small"] == (arena.ptr, 1 * MIB) and cuda.in_use == 1 * MIB
    arena.detach("small")
    assert cuda.in_use == 0 and budget.snapshot().used_bytes == 0


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_detections_match_onnxruntime_and_the_plan_is_cached(fake_trt, tmp_path: Path, version: str) -> None:
    gpu = fake_trt(version=version)
    progress: list[str] = []
    trt_det = load_detector(_trt_config(tmp_path), gpu, progress.append)
    assert progress and progress[-1] == "done" and any("building fp16 engine" in p for p in progress)
    cpu_det = load_detector(DetectorConfig())
    frames = [SceneGenerator(seed=(7, i)).next_frame()[0] for i in range(3)]
    for batch in (frames[:1], frames):  # dynamic batch: 1 and 3 through the same buffers
        got, want = trt_det.detect(batch), cpu_det.detect(batch)
        assert [[(d.class_id, round(d.score, 4)) for d in f] for f in got] == \
            [[(d.class_id, round(d.score, 4)) for d in f] for f in want]
        assert sum(len(f) for f in got) > 0
    assert trt_det.info.backend == "tensorrt" and trt_det.info.precision == "fp16"
    report = gpu.report()
    assert 0 < report["used_mb"] <= report["budget_mb"] and report["activation_arena_mb"] > 0
    plan = trt_det.backend.plan_path
    assert plan.is_file() and plan.with_suffix(".json").is_file()
    assert len(list(plan.parent.glob("timing-*.cache"))) == 1
    trt_det.close()
    assert gpu.budget.snapshot().used_bytes == 0 and fake_tensorrt.CUDA.in_use == 0  # everything given back
    again: list[str] = []
    load_detector(_trt_config(tmp_path), gpu, again.append).close()
    assert again == []  # loaded from the cache, not rebuilt


def test_dla_on_a_device_without_one_builds_for_the_gpu(fake_trt, tmp_path: Path) -> None:
    progress: list[str] = []
    det = load_detector(_trt_config(tmp_path, dla_core=0), fake_trt(), progress.append)
    assert any("no DLA core 0" in p for p in progress) and det.backend._engine.header["dla_core"] is None
    det.close()


def test_a_corrupt_cached_plan_is_rebuilt(fake_trt, tmp_path: Path) -> None:
    gpu = fake_trt()
    first = load_detector(_trt_config(tmp_path), gpu)
    plan = first.backend.plan_path
    first.close()
    plan.write_bytes(b"half a plan, the power went out")
    progress: list[str] = []
    det = load_detector(_trt_config(tmp_path), gpu, progress.append)
    assert "done" in progress and det.detect([SceneGenerator(seed=3).next_frame()[0]])
    det.close()


def test_qdq_model_builds_int8_with_fp16_then_strongly_typed_on_10_12(fake_trt, tmp_path: Path) -> None:
    from agent.cli.model_quantize import calibration_tensors
    from engines.optimize.quantize import quantize_model

    cpu = load_detector(DetectorConfig())
    frames = [SceneGenerator(seed=(5, i)).next_frame()[0] for i in range(8)]
    qdq = tmp_path / "demo.trt-int8.onnx"
    quantize_model(Path(cpu.info.model_path), qdq, "images", calibration_tensors(cpu, frames), "tensorrt", "minmax")
    for version, flags, strongly in (("10.3.0", ["FP16", "INT8"], False), ("10.13.0", [], True)):
        det = load_detector(_trt_config(tmp_path, precision="auto").model_copy(update={"path": str(qdq)}),
                            fake_trt(version=version))
        header = det.backend._engine.header
        assert header["flags"] == flags and header["strongly_typed"] is strongly and det.info.precision == "int8"
        det.close()


def test_weights_that_do_not_fit_are_refused_with_bytes(fake_trt, tmp_path: Path) -> None:
    model = make_constant_model(tmp_path / "big.onnx", yolov8_output([(0, 0.9, (10, 10, 50, 50))], 80),
                                input_hw=(640, 640))
    gpu = fake_trt(budget_mb=64)
    load_detector(_trt_config(tmp_path).model_copy(update={"path": str(model)}), gpu).close()  # fits
    gpu.budget.reserve(63 * MIB, "someone else")
    with pytest.raises(BudgetExceeded, match=r"needs \d+ bytes"):
        load_detector(_trt_config(tmp_path).model_copy(update={"path": str(model)}), gpu)
    assert gpu.budget.snapshot().used_bytes == 63 * MIB  # the refused load holds nothing
    assert fake_tensorrt.CUDA.in_use == 0


def test_a_failed_pinned_allocation_holds_nothing(fake_trt, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_constant_model(tmp_path / "m.onnx", yolov8_output([(0, 0.9, (10, 10, 50, 50))], 80))
    gpu = fake_trt()

    def no_pinned_memory(nbytes: int) -> None:
        raise MemoryError("FAKE: cudaHostAlloc failed")

    monkeypatch.setattr(fake_tensorrt.CUDA, "host_alloc", no_pinned_memory)
    with pytest.raises(MemoryError):
        load_detector(_trt_config(tmp_path).model_copy(update={"path": str(model)}), gpu)
    assert fake_tensorrt.CUDA.in_use == 0  # the device buffer malloc'd just before was freed
    assert gpu.budget.snapshot().used_bytes == 0


def test_two_engines_share_one_arena_inside_the_budget(fake_trt, tmp_path: Path) -> None:
    gpu = fake_trt(budget_mb=128)
    big = make_constant_model(tmp_path / "square.onnx", yolov8_output([(1, 0.8, (5, 5, 60, 60))], 5),
                              input_hw=(320, 320))
    a = load_detector(_trt_config(tmp_path), gpu)
    b = load_detector(_trt_config(tmp_path).model_copy(update={"path": str(big)}), gpu)
    arena = gpu.trt_host().arena
    need_a, need_b = a.backend._engine.device_memory_size, b.backend._engine.device_memory_size
    assert arena.size == max(need_a, need_b) and need_a != need_b
    frame = SceneGenerator(seed=1).next_frame()[0]
    assert a.detect([frame]) and b.detect([frame])  # both run from the same arena
    assert fake_tensorrt.CUDA.peak <= gpu.budget.limit
    assert gpu.budget.snapshot().peak_bytes <= gpu.budget.limit
    a.close()
    b.close()
    assert arena.size == 0 and fake_tensorrt.CUDA.in_use == 0


def test_tensorrt_missing_is_reported_not_fatal(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        load_detector(_trt_config(tmp_path), GpuResources(256))
    np.testing.assert_equal(len(load_detector(DetectorConfig()).labels), 5)  # CPU still works
