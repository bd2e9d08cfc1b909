"""Device tiling (torch) gives Pillow's BICUBIC pixels and the CPU path's pixel values bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ivl_ros.model.backends.device_tiling import DeviceTiler, resize_bicubic, vertical_first
from ivl_ros.model.tiling import pixel_values_for


def _pil_resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((width, height)))  # upstream's call: default resample


def _device_resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    chw = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float64)
    order = vertical_first(rgb.shape[1], rgb.shape[0], width, height)  # read off Pillow with another image
    assert order is not None
    return resize_bicubic(chw, width, height, order).to(torch.uint8).permute(1, 2, 0).numpy()


# (source w, h) -> (target w, h): up, down, mixed, one axis unchanged, extreme ratios, tiny sources.
RESIZES = [
    ((640, 480), (1344, 896)),
    ((640, 480), (448, 448)),
    ((1920, 1080), (896, 448)),
    ((1920, 1080), (448, 448)),
    ((333, 120), (448, 224)),
    ((97, 1000), (112, 1344)),
    ((448, 300), (448, 448)),
    ((300, 448), (448, 448)),
    ((1, 1), (448, 448)),
    ((5, 3), (7, 2)),
    ((4000, 3), (448, 448)),
    ((1000, 997), (999, 1001)),
    ((300, 200), (400, 100)),
    ((200, 300), (100, 50)),
    ((128, 130), (47, 2)),
    ((79, 79), (65, 50)),
]


@pytest.mark.parametrize("src,dst", RESIZES)
def test_resize_matches_pillow_bit_for_bit(src, dst):
    rgb = np.random.default_rng(src[0] * 31 + dst[1] + 1).integers(0, 256, (src[1], src[0], 3), dtype=np.uint8)
    got = _device_resize(rgb, *dst)
    ref = _pil_resize(rgb, *dst)
    assert got.shape == ref.shape
    assert np.array_equal(got, ref), f"{int((got != ref).sum())} of {ref.size} values differ"


def test_resize_matches_pillow_on_edges_and_saturation():
    # Hard edges make the negative lobes overshoot: Pillow clips, so must we.
    rgb = np.zeros((120, 160, 3), dtype=np.uint8)
    rgb[:, 80:] = 255
    rgb[40:80, :, 1] = 255
    rgb[::7, ::5, 2] = 255
    for dst in ((448, 448), (896, 448), (37, 29)):
        assert np.array_equal(_device_resize(rgb, *dst), _pil_resize(rgb, *dst))


# The tiling test's sizes (tests/core/test_tiling.py) at tile 112, plus camera-like frames at the real tile size.
TILINGS = [
    ((640, 480), 6, True, 112),
    ((300, 200), 6, True, 112),
    ((97, 1000), 12, True, 112),
    ((250, 250), 1, True, 112),
    ((640, 480), 6, False, 112),
    ((333, 120), 4, True, 112),
    ((200, 150), 6, True, 112),
    ((640, 480), 6, True, 448),
    ((1280, 720), 12, True, 448),
]


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size,max_tiles,thumb,tile", TILINGS)
def test_device_pixel_values_bit_identical_to_cpu_path(size, max_tiles, thumb, tile, device):
    rng = np.random.default_rng(size[0] * 7 + size[1] + tile)
    rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    ref = pixel_values_for(Image.fromarray(rgb), tile, max_tiles, thumb)
    got = DeviceTiler(device)(rgb, tile, max_tiles, thumb)
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape and got.device.type == device
    assert np.array_equal(got.cpu().numpy().view(np.uint32), ref.view(np.uint32))


def test_device_tiler_takes_pil_images_and_refuses_other_layouts():
    rgb = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    tiler = DeviceTiler("cpu")
    assert torch.equal(tiler(Image.fromarray(rgb), 112, 6), tiler(rgb, 112, 6))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        tiler(rgb[:, :, 0], 112, 6)
