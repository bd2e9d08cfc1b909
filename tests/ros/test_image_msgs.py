"""sensor_msgs/Image and CompressedImage -> RGB arrays, in process (no DDS needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from ivl_ros.node.image_msgs import (
    FrameError,
    compressed_to_rgb,
    image_to_rgb,
    is_empty,
    rgb_to_compressed,
    rgb_to_image,
)
from tests.ros.procs.common import make_frame

RGB = make_frame(1, 20, 10)


def raw(encoding: str, arr: np.ndarray, pad: int = 0) -> Image:
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1)
    padded = np.concatenate([rows, np.zeros((h, pad), np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize(
    "encoding, arr",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
        ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
    ],
)
def test_colour_encodings_with_row_padding(encoding, arr, pad):
    out = image_to_rgb(raw(encoding, np.ascontiguousarray(arr), pad))
    assert out.shape == RGB.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    out = image_to_rgb(raw("mono8", np.ascontiguousarray(grey), pad=3))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


def test_round_trip_helpers():
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image(RGB)), RGB)
    png = rgb_to_compressed(RGB, "png")
    np.testing.assert_array_equal(compressed_to_rgb(png), RGB)
    jpeg = compressed_to_rgb(rgb_to_compressed(RGB, "jpeg"))
    assert jpeg.shape == RGB.shape and np.abs(jpeg.astype(int) - RGB).mean() < 20
    assert is_empty(Image()) and not is_empty(rgb_to_image(RGB))


def _bad(**fields) -> Image:
    msg = raw("rgb8", RGB)
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize(
    "msg, message",
    [
        (_bad(data=bytes(10)), "image data is 10 bytes; expected step*height = 60*10 = 600"),
        (_bad(step=30), "step 30 is less than width*channels = 20*3 = 60"),
        (_bad(encoding=""), "encoding is empty"),
        (_bad(encoding="yuv422"), "'yuv422' is not supported"),
        (_bad(encoding="32FC1"), "a depth image on a colour topic?"),
        (_bad(encoding="16UC1"), "a depth image on a colour topic?"),
        (_bad(width=0, height=0, step=0, data=b""), "zero size (0x0)"),
        (_bad(width=5000, height=5000, step=15000, data=b""), "over max_pixels"),
    ],
)
def test_malformed_images_raise_clear_errors(msg, message):
    with pytest.raises(FrameError) as info:
        image_to_rgb(msg)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_max_pixels_is_configurable():
    with pytest.raises(FrameError, match="200 pixels, over max_pixels=100"):
        image_to_rgb(raw("rgb8", RGB), max_pixels=100)


def _jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt, data, message",
    [
        ("jpeg", b"\xff\xd8\xff\xe0" + bytes(100), "cannot be decoded"),
        ("jpeg", _jpeg(40, 30)[:60], "cannot be decoded"),
        ("jpeg", b"", "no data"),
        ("", b"abc", "format is empty"),
        ("tiff", b"abc", "'tiff' is not supported"),
        ("jpeg", _jpeg(300, 300), "over max_pixels=1000"),
    ],
)
def test_malformed_compressed_images(fmt, data, message):
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(FrameError, match=message.replace("?", r"\?")):
        compressed_to_rgb(msg, max_pixels=1000)


def test_image_transport_format_strings_are_accepted():
    msg = rgb_to_compressed(RGB, "png")
    msg.format = "rgb8; png compressed rgb8"
    np.testing.assert_array_equal(compressed_to_rgb(msg), RGB)


def test_debug_image_draws_the_caption_on_a_copy():
    from ivl_ros.node.debug_image import annotate

    frame = np.full((48, 64, 3), 200, np.uint8)
    out = annotate(frame, "a chair next to a table", "/camera/image_raw")
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert (frame == 200).all() and (out[:4] != 200).any()
