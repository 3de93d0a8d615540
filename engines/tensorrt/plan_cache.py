"""Engine plans on disk, keyed by everything that makes a plan invalid.

A plan only runs on the TensorRT version, GPU (name and compute capability)
and JetPack/L4T release it was built with, for the same model bytes,
precision, input profile, workspace and DLA core. The key hashes all of them;
a plan that fails to deserialize anyway is discarded and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from engines.files import atomic_write

L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


@dataclass(frozen=True)
class EngineKey:
    model_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    l4t_release: str | None  # None off Jetson
    precision: str
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    workspace_bytes: int
    dla_core: int | None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def l4t_release(path: Path = L4T_RELEASE_FILE) -> str | None:
    """'36.3.0' from '# R36 (release), REVISION: 3.0, ...'; None when not on a Jetson."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{match[1]}.{match[2]}" if match else "unknown"


class PlanCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory.expanduser()

    def plan_path(self, key: EngineKey, model_stem: str) -> Path:
        return self.directory / f"{model_stem}-{key.precision}-{key.digest()[:20]}.plan"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """One timing cache per TensorRT version and GPU: tactics timed once, reused by every build."""
        scope = f"{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}|{key.l4t_release}"
        return self.directory / f"timing-{hashlib.sha256(scope.encode()).hexdigest()[:16]}.cache"

    def load(self, path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def store(self, path: Path, key: EngineKey, plan: bytes) -> None:
        atomic_write(path, plan)
        atomic_write(path.with_suffix(".json"), json.dumps(asdict(key), indent=1).encode())

    def discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        path.with_suffix(".json").unlink(missing_ok=True)
