"""ONNX Runtime execution providers from config, inside the GPU budget.

CUDA EP: its BFC arena is capped with `gpu_mem_limit` (reserved from the budget
up front, since the arena may grow to it), grows only by what is asked
(`kSameAsRequested`, not powers of two), picks conv algorithms heuristically
(exhaustive search allocates large trial workspaces) and keeps cuDNN's
workspace capped. TensorRT EP: engine and timing caches on disk, FP16/INT8
flags, workspace limit; TensorRT allocates its weights itself, so this provider
is budgeted by estimate (workspace + weights), not per allocation — the native
`tensorrt` engine is the one that enforces the budget allocation by allocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engines.config import OnnxRuntimeConfig
from engines.gpu_budget import MIB, GpuMemoryBudget

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (CUDA, TENSORRT)


@dataclass
class ProviderPlan:
    providers: list[tuple[str, dict[str, str]]]
    reservations: list[tuple[str, int]] = field(default_factory=list)  # (holder, bytes) taken from the budget

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]


def _flag(value: bool) -> str:
    return "1" if value else "0"


def plan_providers(config: OnnxRuntimeConfig, model_path: Path, budget: GpuMemoryBudget | None,
                   holder: str) -> ProviderPlan:
    """Provider list with options; reserves GPU memory for them (the caller releases on failure/close)."""
    plan = ProviderPlan([])
    wants_gpu = any(p in GPU_PROVIDERS for p in config.providers)
    if wants_gpu and budget is None:
        raise ValueError("a GPU execution provider needs gpu.memory_budget_mb")
    try:
        for name in config.providers:
            if name == TENSORRT:
                trt = config.tensorrt
                estimate = trt.workspace_mb * MIB + 2 * model_path.stat().st_size
                budget.reserve(estimate, f"{holder}:tensorrt-ep")
                plan.reservations.append((f"{holder}:tensorrt-ep", estimate))
                cache = trt.cache_dir.expanduser()
                options = {
                    "device_id": str(trt.device_id),
                    "trt_max_workspace_size": str(trt.workspace_mb * MIB),
                    "trt_fp16_enable": _flag(trt.fp16),
                    "trt_int8_enable": _flag(trt.int8),
                    "trt_engine_cache_enable": "1",
                    "trt_engine_cache_path": str(cache),
                    "trt_timing_cache_enable": _flag(trt.timing_cache),
                    "trt_timing_cache_path": str(cache),
                }
                if trt.dla_core is not None:
                    options.update(trt_dla_enable="1", trt_dla_core=str(trt.dla_core))
                plan.providers.append((name, options))
            elif name == CUDA:
                cuda = config.cuda
                limit = cuda.mem_limit_mb * MIB if cuda.mem_limit_mb else budget.available()
                budget.reserve(limit, f"{holder}:cuda-arena")
                plan.reservations.append((f"{holder}:cuda-arena", limit))
                plan.providers.append((name, {
                    "device_id": str(cuda.device_id),
                    "gpu_mem_limit": str(limit),
                    "arena_extend_strategy": "kSameAsRequested",
                    "cudnn_conv_algo_search": "HEURISTIC",
                    "cudnn_conv_use_max_workspace": _flag(not cuda.cudnn_workspace_limited),
                    "do_copy_in_default_stream": "1",
                }))
            else:
                plan.providers.append((name, {}))
    except Exception:
        release(plan, budget)
        raise
    if CPU not in plan.names:
        plan.providers.append((CPU, {}))  # ops a GPU provider lacks still run; checked by `fell_back`
    return plan


def release(plan: ProviderPlan, budget: GpuMemoryBudget | None) -> None:
    for holder, nbytes in plan.reservations:
        budget.release(nbytes, holder)
    plan.reservations.clear()


def fell_back(requested: list[str], active: list[str]) -> list[str]:
    """GPU providers asked for that the session did not register (ONNX Runtime then runs on CPU)."""
    return [p for p in requested if p in GPU_PROVIDERS and p not in active]
