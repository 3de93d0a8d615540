"""The device's identity on disk: durable, checked when read back, never silently replaced."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from agent.config import NAME_PATTERN
from agent.device.identity import ID_FILE, resolve_device_id
from engines.files import atomic_write


def test_a_generated_id_is_kept_and_read_back(tmp_path: Path) -> None:
    first = resolve_device_id(None, tmp_path)
    assert re.fullmatch(NAME_PATTERN, first) and first.startswith("edge-")
    assert resolve_device_id(None, tmp_path) == first
    assert resolve_device_id("gate-7", tmp_path) == "gate-7"  # the config wins, the file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == [ID_FILE]  # no temporary file left behind


@pytest.mark.parametrize("content", ["", "\n", "edge/#1\n", "a b", "x" * 200])
def test_an_id_file_unfit_for_topics_is_set_aside_and_replaced_loudly(
        tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ID_FILE).write_text(content)  # e.g. a zero-length file after a power cut, or a bad edit
    with caplog.at_level(logging.ERROR, logger="agent.device.identity"):
        new = resolve_device_id(None, tmp_path)
    assert re.fullmatch(NAME_PATTERN, new)
    (aside,) = tmp_path.glob(f"{ID_FILE}.invalid-*")
    assert aside.read_text() == content  # kept for the operator
    assert "cannot name MQTT topics" in caplog.text and aside.name in caplog.text
    assert resolve_device_id(None, tmp_path) == new


def test_atomic_write_syncs_the_file_and_its_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    target = tmp_path / "cache" / "timing.cache"
    atomic_write(target, b"tactics")
    assert target.read_bytes() == b"tactics"
    assert str(target.parent) in synced  # the rename itself survives a power cut
    assert any(Path(s).parent == target.parent and s != str(target.parent) for s in synced)  # the data first
    assert [p.name for p in target.parent.iterdir()] == ["timing.cache"]
