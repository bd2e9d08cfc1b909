"""Model inputs: image files, PIL images and numpy camera frames -> an RGB PIL image."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ivl_ros.errors import ImageError

ImageInput = Union[str, Path, Image.Image, np.ndarray]

# Camera encodings accepted for numpy frames (the ROS node uses the same table): name -> channels.
FRAME_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def frame_to_rgb(frame: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """A uint8 camera frame in ``encoding`` -> an HxWx3 RGB uint8 array (a view where possible)."""
    if encoding not in FRAME_ENCODINGS:
        raise ImageError(f"frame encoding {encoding!r} is not supported; expected one of {tuple(FRAME_ENCODINGS)}")
    if not isinstance(frame, np.ndarray):
        raise ImageError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise ImageError(f"frame dtype is {frame.dtype}; expected uint8")
    channels = FRAME_ENCODINGS[encoding]
    if channels == 1:
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim != 2:
            raise ImageError(f"a mono8 frame must be HxW, got shape {frame.shape}")
        if frame.size == 0:
            raise ImageError(f"frame is empty (shape {frame.shape})")
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.ndim != 3 or frame.shape[2] != channels:
        raise ImageError(f"a {encoding} frame must be HxWx{channels}, got shape {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ImageError(f"frame is empty (shape {frame.shape})")
    if encoding.startswith("bgr"):
        frame = frame[:, :, 2::-1]
    return frame[:, :, :3]


def load_image(image: ImageInput, encoding: str = "rgb8") -> Image.Image:
    """Open/convert any supported input to an RGB PIL image, as upstream's ``load_image`` does."""
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ImageError(f"image is empty ({image.width}x{image.height})")
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2 and encoding == "rgb8":
            encoding = "mono8"
        return Image.fromarray(np.ascontiguousarray(frame_to_rgb(image, encoding)), mode="RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"{path}: image file not found")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: image file is empty (0 bytes)")
        try:
            with Image.open(path) as img:
                img.load()
                if img.width == 0 or img.height == 0:
                    raise ImageError(f"{path}: image has zero size")
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise ImageError(f"{path}: cannot read image ({exc})") from None
    raise ImageError(f"unsupported image input of type {type(image).__name__}; expected a path, PIL image or array")
