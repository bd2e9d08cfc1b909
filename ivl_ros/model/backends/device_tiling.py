"""Dynamic tiling on the torch device, bit-identical to :func:`ivl_ros.model.tiling.pixel_values_for`.

The frame goes to the device once as uint8 (0.9 MB for 640x480, instead of 16.9 MB of float32 tiles), and
the resize, crop, thumbnail and normalisation run there.

Pillow's BICUBIC resize of an 8-bit image is integer arithmetic: per output pixel, fixed-point weights
(the bicubic kernel with a = -0.5, widened by the downscale factor, normalised to sum 1 in double precision,
then scaled by 2**22 and rounded away from zero) multiply the source pixels; the int32 sum, plus half a
unit, is shifted right by 22 and clipped to 0..255. It runs horizontally first into a uint8 image, then
vertically. This module computes the same weights in double precision on the host (Python floats are IEEE
doubles, as Pillow's C code uses) and applies each pass as one float64 matrix product: every product of a
uint8 pixel and an integer weight, and every partial sum, is an integer far below 2**53, so the float64
result is exact in any summation order and equals Pillow's int32 sum. Floor and clip then give Pillow's
uint8 values, and the normalisation looks them up in the same per-channel tables as the CPU path. The tests
compare the result with Pillow bit for bit.

Which pass runs first depends on the Pillow release (older ones always go horizontal first; Pillow 13
goes vertical first when the height shrinks much more than the width), and the two orders round
differently. So the order is not guessed: for each (source size, target size) it is read off the
installed Pillow once, by resizing a random probe image of that size both ways and keeping the order that
equals Pillow's result. If neither does (a future Pillow with another algorithm), that size is tiled on the
CPU, with a warning, so the pixels never silently differ from upstream's.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import cast

import numpy as np
import torch
from PIL import Image

from ivl_ros.model.tiling import dynamic_tile_grid, normalization_tables, pixel_values_for

log = logging.getLogger(__name__)

PRECISION_BITS = 22  # Pillow: 32 - 8 bits of result - 2 bits of headroom for negative lobes
BICUBIC_SUPPORT = 2.0
BICUBIC_A = -0.5


def _bicubic(x: float) -> float:
    # The Keys cubic with a = -0.5, written with Pillow's operation order (same double rounding).
    x = abs(x)
    if x < 1.0:
        return ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return 0.0


def _c_int(value: float) -> int:
    """C's (int) cast of a double: truncation toward zero."""
    return math.trunc(value)


@lru_cache(maxsize=32)
def resample_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64: Pillow's fixed-point BICUBIC weights for one axis (whole-image box).

    Entry [o, i] is the integer weight of source pixel i in output pixel o (zero outside its support).
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize {in_size} -> {out_size}: sizes must be positive")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    inv = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for o in range(out_size):
        center = (o + 0.5) * scale
        first = max(_c_int(center - support + 0.5), 0)
        count = min(_c_int(center + support + 0.5), in_size) - first
        weights = [_bicubic((i + first - center + 0.5) * inv) for i in range(count)]
        total = 0.0
        for w in weights:
            total += w
        if total != 0.0:
            weights = [w / total for w in weights]
        unit = float(1 << PRECISION_BITS)
        matrix[o, first : first + count] = [_c_int(w * unit + (0.5 if w >= 0 else -0.5)) for w in weights]
    return matrix


def _weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    return _device_weights(in_size, out_size, str(device))


@lru_cache(maxsize=32)
def _device_weights(in_size: int, out_size: int, device: str) -> torch.Tensor:
    return torch.from_numpy(resample_matrix(in_size, out_size)).to(device)


def _to_uint8_levels(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8: (sum + 2**21) >> 22, clipped to 0..255 (still float64, exact integers)."""
    half = float(1 << (PRECISION_BITS - 1))
    return torch.floor((acc + half) * (1.0 / (1 << PRECISION_BITS))).clamp_(0.0, 255.0)


def resize_bicubic(chw: torch.Tensor, width: int, height: int, vertical_first: bool = False) -> torch.Tensor:
    """(3, H, W) float64 uint8 levels -> (3, height, width) float64 uint8 levels, as ``Image.resize`` with the
    passes in the given order (see :func:`vertical_first`)."""
    _, h, w = chw.shape

    def horizontal(x: torch.Tensor) -> torch.Tensor:
        return x if width == w else _to_uint8_levels(torch.matmul(x, _weights(w, width, chw.device).T))

    def vertical(x: torch.Tensor) -> torch.Tensor:
        return x if height == h else _to_uint8_levels(torch.matmul(_weights(h, height, chw.device), x))

    return horizontal(vertical(chw)) if vertical_first else vertical(horizontal(chw))


@lru_cache(maxsize=64)
def vertical_first(width: int, height: int, out_width: int, out_height: int, device: str = "cpu") -> bool | None:
    """Whether the installed Pillow resizes (width, height) -> (out_width, out_height) vertically first.

    Read off Pillow with a random probe image of that size; None when neither order reproduces it.
    """
    if width == out_width or height == out_height:
        return False  # one pass only: the order does not exist
    rgb = np.random.default_rng(width * 7919 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    expected = torch.from_numpy(np.array(Image.fromarray(rgb).resize((out_width, out_height))))
    chw = torch.from_numpy(rgb).to(device).permute(2, 0, 1).to(torch.float64)
    for order in (False, True):
        got = resize_bicubic(chw, out_width, out_height, order).permute(1, 2, 0).to("cpu", torch.uint8)
        if torch.equal(got, expected):
            return order
    return None


class DeviceTiler:
    """``pixel_values_for`` on a torch device: same tiles, same float32 values, computed where the ViT runs."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.tables = torch.from_numpy(normalization_tables()).to(self.device)  # (3, 256) float32
        self._channel = torch.arange(3, device=self.device).view(3, 1, 1)

    def _normalize_into(self, out: torch.Tensor, levels: torch.Tensor) -> None:
        """(..., 3, h, w) float64 levels -> ``out`` (same shape) float32 via the CPU path's lookup tables."""
        out.copy_(self.tables[self._channel, levels.to(torch.long)])

    @torch.inference_mode()
    def __call__(
        self, image: Image.Image | np.ndarray, tile_size: int, max_tiles: int, use_thumbnail: bool = True
    ) -> torch.Tensor:
        """An RGB image (PIL, or HxWx3 uint8) -> (tiles, 3, S, S) float32 on the device."""
        rgb = np.asarray(image)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"device tiling needs an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        s = tile_size
        grid = dynamic_tile_grid(w, h, s, max_tiles, use_thumbnail=use_thumbnail)
        sizes = [(s * grid.cols, s * grid.rows)] + ([(s, s)] if grid.thumbnail else [])
        found = [vertical_first(w, h, *size, device=str(self.device)) for size in sizes]
        if None in found:
            log.warning("device tiling cannot reproduce this Pillow's resize of %dx%d; tiling on the CPU", w, h)
            return torch.from_numpy(pixel_values_for(Image.fromarray(rgb), s, max_tiles, use_thumbnail)).to(self.device)
        orders = cast("list[bool]", found)  # every order is known: a None returned above
        if not (rgb.flags.c_contiguous and rgb.flags.writeable):  # np.asarray(PIL image) is read-only
            rgb = np.array(rgb, order="C")
        src = torch.from_numpy(rgb).to(self.device)
        chw = src.permute(2, 0, 1).to(torch.float64)
        resized = resize_bicubic(chw, *sizes[0], orders[0])
        out = torch.empty((grid.num_tiles, 3, s, s), dtype=torch.float32, device=self.device)
        crops = resized.view(3, grid.rows, s, grid.cols, s).permute(1, 3, 0, 2, 4)
        self._normalize_into(out[: grid.cols * grid.rows].view(grid.rows, grid.cols, 3, s, s), crops)
        if grid.thumbnail:
            self._normalize_into(out[-1], resize_bicubic(chw, s, s, orders[1]))
        return out
