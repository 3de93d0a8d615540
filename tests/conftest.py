"""Fixtures: short generated clips (real files written by OpenCV)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.demo.clips import write_clip


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def short_clip(clip_dir: Path) -> Path:
    """1 s, 15 frames, 640×360, with its ground-truth sidecar."""
    return write_clip(clip_dir / "short.mp4", seconds=1.0, seed=11)


@pytest.fixture(scope="session")
def other_clip(clip_dir: Path) -> Path:
    return write_clip(clip_dir / "other.mp4", seconds=1.0, seed=12)
