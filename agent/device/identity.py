"""The device id: from config, else generated once and kept in the data dir."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

ID_FILE = "device_id"


def resolve_device_id(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured
    path = data_dir / ID_FILE
    try:
        existing = path.read_text(encoding="utf-8").strip()
        if existing:
            return existing
    except FileNotFoundError:
        pass
    device_id = f"edge-{secrets.token_hex(4)}"
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ID_FILE}.{os.getpid()}")
    tmp.write_text(device_id + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return device_id
