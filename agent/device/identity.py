"""The device id: from config, else generated once and kept in the data dir.

It names every topic of this device, so it is written durably (a power cut must not leave an
empty file and with it a new identity) and checked like `device.id` when read back: a file that
is empty or holds something unfit for a topic (`#`, `/`) is set aside, kept for the operator,
and replaced by a fresh id, loudly.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path

from agent.config import NAME_PATTERN
from engines.files import atomic_write

log = logging.getLogger(__name__)

ID_FILE = "device_id"


def resolve_device_id(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured
    path = data_dir / ID_FILE
    try:
        existing = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if re.fullmatch(NAME_PATTERN, existing):
            return existing
        aside = path.with_name(f"{ID_FILE}.invalid-{int(time.time())}")
        path.replace(aside)
        log.error("device id file %s held %r, which cannot name MQTT topics; kept as %s, a new id is made "
                  "(set device.id in the config to choose one)", path, existing[:80], aside.name)
    device_id = f"edge-{secrets.token_hex(4)}"
    atomic_write(path, (device_id + "\n").encode())
    return device_id
