"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Every frame the node accepts becomes an HxWx3 uint8 RGB array (a view of the message buffer where the
encoding allows). Anything malformed raises :class:`FrameError` naming the field, the expected and the
given value, so the node can log it and keep running.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from ivl_ros.errors import ImageError
from ivl_ros.model.images import FRAME_ENCODINGS, frame_to_rgb

# The core's encodings (8-bit colour and mono): the model takes RGB, and a 16-bit or float image on the colour
# topic is almost always a depth frame sent to the wrong topic.
ENCODINGS = FRAME_ENCODINGS
DEPTH_ENCODINGS = {"16uc1", "32fc1", "mono16", "16sc1", "32sc1", "64fc1"}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
DEFAULT_MAX_PIXELS = 4096 * 4096


class FrameError(ImageError, ValueError):
    """A camera message that cannot be turned into a model input."""


def is_empty(msg) -> bool:
    """True for a default-constructed Image (the 'no image supplied' marker in Ask/Describe requests)."""
    return msg.width == 0 and msg.height == 0 and len(msg.data) == 0 and not msg.encoding


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise FrameError(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise FrameError(f"image is {width}x{height} = {width * height} pixels, over max_pixels={max_pixels}")


def image_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs/Image -> HxWx3 uint8 RGB (a strided view of ``msg.data`` for rgb8/bgr8/rgba8/bgra8)."""
    encoding = msg.encoding.strip().lower()
    if not encoding:
        raise FrameError(f"image encoding is empty; expected one of {', '.join(ENCODINGS)}")
    if encoding not in ENCODINGS:
        hint = " (a depth image on a colour topic?)" if encoding in DEPTH_ENCODINGS else ""
        raise FrameError(
            f"image encoding {msg.encoding!r} is not supported{hint}; expected one of {', '.join(ENCODINGS)}"
        )
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_pixels(width, height, max_pixels)
    channels = ENCODINGS[encoding]
    if step < width * channels:
        raise FrameError(
            f"image step {step} is less than width*channels = {width}*{channels} = {width * channels} for {encoding}"
        )
    size = len(msg.data)
    if size != step * height:
        raise FrameError(f"image data is {size} bytes; expected step*height = {step}*{height} = {step * height}")
    buffer = np.frombuffer(msg.data, dtype=np.uint8)
    # The strided view skips any row padding (step > width*channels) without copying.
    frame = np.ndarray((height, width, channels), np.uint8, buffer, 0, (step, channels, 1))
    return frame_to_rgb(frame, encoding)


def compressed_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs/CompressedImage (jpeg/png) -> HxWx3 uint8 RGB."""
    # image_transport writes e.g. "jpeg" or "rgb8; jpeg compressed bgr8"; the container format is what matters.
    fmt = msg.format.strip().lower()
    if not fmt:
        raise FrameError(f"compressed image format is empty; expected one of {', '.join(COMPRESSED_FORMATS)}")
    if not any(name in fmt for name in COMPRESSED_FORMATS):
        raise FrameError(f"compressed image format {msg.format!r} is not supported; expected jpeg or png")
    if len(msg.data) == 0:
        raise FrameError("compressed image has no data (0 bytes)")
    try:
        with PILImage.open(io.BytesIO(bytes(msg.data))) as img:
            # The header gives the size before decoding: refuse giant images without allocating them.
            _check_pixels(img.width, img.height, max_pixels)
            img.load()
            return np.asarray(img.convert("RGB"))
    except FrameError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, PILImage.DecompressionBombError) as exc:
        raise FrameError(f"compressed image ({msg.format}, {len(msg.data)} bytes) cannot be decoded: {exc}") from None


def rgb_to_image(frame: np.ndarray, encoding: str = "rgb8", header=None):
    """An HxWxC uint8 array (already in ``encoding``'s channel order) -> sensor_msgs/Image."""
    from sensor_msgs.msg import Image

    if encoding not in ENCODINGS:
        raise FrameError(f"encoding {encoding!r} is not supported; expected one of {', '.join(ENCODINGS)}")
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    channels = ENCODINGS[encoding]
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] != channels:
        raise FrameError(f"a {encoding} frame must be HxWx{channels}, got shape {frame.shape}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
    msg.encoding = encoding
    msg.step = msg.width * channels
    # bytes, never an ndarray: rclpy copies an ndarray element by element (~70 ms for VGA).
    msg.data = frame.tobytes()
    return msg


def rgb_to_compressed(frame: np.ndarray, fmt: str = "jpeg", header=None, quality: int = 90):
    """An HxWx3 uint8 RGB array -> sensor_msgs/CompressedImage (jpeg or png)."""
    from sensor_msgs.msg import CompressedImage

    buf = io.BytesIO()
    pil_format = "JPEG" if fmt in ("jpeg", "jpg") else "PNG"
    PILImage.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, pil_format, quality=quality)
    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = fmt
    msg.data = buf.getvalue()
    return msg
