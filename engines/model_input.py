"""The input size a model runs at, from its shape, the config or its metadata."""

from __future__ import annotations

import ast

from engines.errors import ModelLayoutError


def model_input_size(path: str, shape: tuple, metadata: dict[str, str],
                configured: tuple[int, int] | None) -> tuple[int, int]:
    """The model's fixed H×W, else the configured size, else Ultralytics' `imgsz` metadata."""
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        return h, w
    if configured is not None:
        return configured
    try:
        size = ast.literal_eval(metadata.get("imgsz", ""))
        size = [size, size] if isinstance(size, int) else list(size)
        if len(size) == 2 and all(isinstance(d, int) and d > 0 for d in size):
            return size[0], size[1]
    except (ValueError, SyntaxError, TypeError):
        pass
    raise ModelLayoutError(
        f"{path}: input shape {list(shape)} has a dynamic size and no imgsz metadata; set model.input_size"
    )
