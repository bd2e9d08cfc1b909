"""Shared by the test helper processes and the tests: deterministic frames and the ROS test environment."""

from __future__ import annotations

import numpy as np


def make_frame(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A reproducible HxWx3 uint8 RGB frame (smooth gradient + noise, so JPEG stays small)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, seed * 37 % 256)], axis=2
    )
    noise = rng.integers(0, 32, (height, width, 3))
    return ((base + noise) % 256).astype(np.uint8)
