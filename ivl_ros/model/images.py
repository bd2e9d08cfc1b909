"""Model inputs: image files, PIL images and numpy camera frames -> an RGB PIL image.

One image rule for every front end (CLI, engine, eval, finetune data, node): an image larger than
``max_pixels`` (width * height) is refused, for files from the header before any pixel is decoded, so that a
small file declaring 100000x100000 pixels costs nothing. PIL's own decompression-bomb guard never surfaces.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal, Union, overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from ivl_ros.errors import ImageError
from ivl_ros.model.options import DEFAULT_MAX_PIXELS

ImageInput = Union[str, Path, Image.Image, np.ndarray]

# max_pixels is the guard: PIL's warning for images between its limit and twice it would only be noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

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


def check_pixels(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> None:
    """The size rule: at least 1x1 and at most ``max_pixels`` pixels (``what`` starts the message)."""
    if width < 1 or height < 1:
        raise ImageError(f"{what} has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"{what} is {width}x{height} = {width * height} pixels, over max_pixels={max_pixels}")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ImageError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: image file is empty (0 bytes)")


@overload
def _read_file(path: Path, max_pixels: int, decode: Literal[True]) -> Image.Image: ...
@overload
def _read_file(path: Path, max_pixels: int, decode: Literal[False]) -> tuple[int, int]: ...
def _read_file(path: Path, max_pixels: int, decode: bool) -> Image.Image | tuple[int, int]:
    """Open ``path`` (PIL reads the header only), apply the size rule, then decode when asked."""
    _check_file(path)
    try:
        with Image.open(path) as img:
            check_pixels(img.width, img.height, max_pixels, what=str(path))
            if not decode:
                return img.size
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError as exc:  # over twice PIL's own limit, which it checks inside open()
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "too many pixels"
        raise ImageError(f"{path}: image is {size}, over max_pixels={max_pixels}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: cannot read image ({exc})") from None


def check_image_file(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file that passes the size rule, from its header (no pixel is decoded)."""
    return _read_file(Path(path), max_pixels, decode=False)


def load_image(image: ImageInput, encoding: str = "rgb8", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open/convert any supported input to an RGB PIL image, as upstream's ``load_image`` does.

    Images over ``max_pixels`` are refused (files: from the header, before decoding)."""
    if isinstance(image, Image.Image):
        check_pixels(image.width, image.height, max_pixels)
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim == 2 and encoding == "rgb8":
            encoding = "mono8"
        rgb = frame_to_rgb(image, encoding)
        check_pixels(rgb.shape[1], rgb.shape[0], max_pixels, what="frame")
        return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    if isinstance(image, (str, Path)):
        return _read_file(Path(image), max_pixels, decode=True)
    raise ImageError(f"unsupported image input of type {type(image).__name__}; expected a path, PIL image or array")
