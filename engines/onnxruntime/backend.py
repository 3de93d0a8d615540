"""ONNX Runtime backend: CPU by default, execution providers configurable."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from engines.backend import InferenceBackend, TensorSpec
from engines.config import OnnxRuntimeConfig
from engines.errors import BackendUnavailable, ModelLoadError
from engines.gpu_budget import GpuMemoryBudget
from engines.onnxruntime import providers as ort_providers
from engines.optimize.dfl_rewrite import rewrite_dfl
from engines.optimize.quantize import QUANTIZATION_KEY

log = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (a container's cpuset, taskset), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def run_plan(config: OnnxRuntimeConfig, cores: int) -> tuple[int, int]:
    """(concurrent runs, intra-op threads per run) for the config's auto values (0) on `cores` cores.

    CPU only: two runs of one frame each, the cores split between them. A GPU provider keeps one
    run (the device serialises them anyway) and ONNX Runtime's own thread default for the CPU parts.
    """
    on_cpu = config.providers == ["CPUExecutionProvider"]
    runs = config.concurrent_runs or (min(2, cores) if on_cpu else 1)
    threads = config.intra_op_threads or (max(1, cores // runs) if on_cpu else 0)
    return runs, threads


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _session_model(path: Path, config: OnnxRuntimeConfig) -> str | bytes:
    """The model ONNX Runtime is given: the file, or its bytes with the DFL decode rewritten.

    The TensorRT provider fuses the Softmax itself and keys its engine cache on the file, so it gets
    the file. A model the rewrite cannot read is left to ONNX Runtime to report.
    """
    if not config.fast_dfl or "TensorrtExecutionProvider" in config.providers:
        return str(path)
    import onnx

    try:
        model = onnx.load(str(path))
        if not rewrite_dfl(model):
            return str(path)
        data = model.SerializeToString()
    except Exception as exc:  # a corrupt file, or one over protobuf's 2 GB: load it as it is
        log.debug("%s: DFL rewrite skipped: %s", path.name, _first_line(exc))
        return str(path)
    log.info("%s: DFL box decode rewritten as reductions (same result, faster on CPU)", path.name)
    return data


class OnnxRuntimeBackend(InferenceBackend):
    name = "onnxruntime"

    def __init__(self, path: Path, config: OnnxRuntimeConfig, budget: GpuMemoryBudget | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a packaging error
            raise BackendUnavailable(f"onnxruntime is not installed: {exc}") from exc
        available = ort.get_available_providers()
        missing = [p for p in config.providers if p not in available]
        if missing:
            short = ", ".join(p.removesuffix("ExecutionProvider") for p in available)
            raise BackendUnavailable(f"{', '.join(missing)} is not in this onnxruntime build (it has {short}); "
                                     "a GPU needs onnxruntime-gpu")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.concurrent_runs, threads = run_plan(config, usable_cores())
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
        options.log_severity_level = 3
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        self._budget = budget
        try:
            self._plan = ort_providers.plan_providers(config, path, budget, f"onnxruntime:{path.name}")
        except ValueError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        try:
            self._session = self._create_session(ort, path, config, options)
            lost = ort_providers.fell_back(config.providers, self._session.get_providers())
            if lost and config.require_gpu:
                raise ModelLoadError(f"{', '.join(lost)} did not take the model and ONNX Runtime would run it "
                                     "on CPU instead (set require_gpu: false to allow that)")
        except ModelLoadError:
            ort_providers.release(self._plan, budget)
            raise
        except Exception as exc:  # ORT raises several unrelated types for bad files
            ort_providers.release(self._plan, budget)
            raise ModelLoadError(f"cannot load model {path}: {_first_line(exc)}") from exc
        inp = self._session.get_inputs()[0]
        self._input = TensorSpec(inp.name, tuple(inp.shape))
        self._input_fp16 = inp.type == "tensor(float16)"
        self._outputs = [TensorSpec(o.name, tuple(o.shape)) for o in self._session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        self._metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.precision = "int8" if QUANTIZATION_KEY in self._metadata else "fp16" if self._input_fp16 else "fp32"

    def _create_session(self, ort: ModuleType, path: Path, config: OnnxRuntimeConfig, options: Any) -> Any:
        model = _session_model(path, config)
        try:
            return ort.InferenceSession(model, options, providers=self._plan.providers)
        except Exception as exc:
            if isinstance(model, str):
                raise
            # the rewrite must never cost a model that loads as it is
            log.warning("%s: the DFL-rewritten graph did not load (%s); loading the file as it is",
                        path.name, _first_line(exc))
            return ort.InferenceSession(str(path), options, providers=self._plan.providers)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._session.get_providers())

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        feed = batch.astype(np.float16) if self._input_fp16 else batch
        return self._session.run(self._output_names, {self._input.name: feed})

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
        ort_providers.release(self._plan, self._budget)
