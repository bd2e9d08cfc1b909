"""Shared fixtures: one tiny upstream-layout checkpoint per test session (built, never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"  # real third-party files, origins and licences in each SOURCES.md

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from ivl_ros.model.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-internvl2")


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from ivl_ros.model.engine import VisionLanguageEngine

    return VisionLanguageEngine.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def sample_frame():
    """A deterministic 320x240 RGB frame with structure (not noise), as a numpy array."""
    import numpy as np

    y, x = np.mgrid[0:240, 0:320]
    frame = np.stack([(x * 255 // 319), (y * 255 // 239), ((x + y) % 64) * 4], axis=-1).astype(np.uint8)
    frame[60:180, 100:220] = (200, 40, 40)
    return frame
