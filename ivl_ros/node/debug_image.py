"""The captioned frame with its caption written on a dark band at the top (for rqt_image_view / rviz)."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw

LINE_HEIGHT = 12  # PIL's built-in bitmap font is ~11 px high


def annotate(rgb: np.ndarray, caption: str, camera: str = "") -> np.ndarray:
    """HxWx3 uint8 RGB -> a new HxWx3 uint8 RGB array with the caption drawn on it."""
    img = Image.fromarray(np.ascontiguousarray(rgb))
    chars_per_line = max(8, img.width // 6)
    lines = textwrap.wrap(f"{camera}: {caption}" if camera else caption, chars_per_line)[:6] or [""]
    band = min(img.height, LINE_HEIGHT * len(lines) + 4)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, img.width, band), fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((3, 2 + i * LINE_HEIGHT), line, fill=(255, 255, 255))
    return np.asarray(img)
