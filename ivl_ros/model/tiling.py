"""Dynamic tiling and pixel values, identical to upstream InternVL2 ``dynamic_preprocess``.

Only PIL and numpy are used so that the ONNX/TensorRT runtime path needs no torch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ivl_ros.errors import OptionError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class TileGrid:
    """The tiling chosen for one image: ``cols`` x ``rows`` crops, plus a thumbnail when more than one."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def num_tiles(self) -> int:
        return self.cols * self.rows + (1 if self.thumbnail else 0)


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (cols, rows) with ``min_tiles <= cols*rows <= max_tiles`` in upstream's order.

    Upstream builds a Python ``set`` of (i, j) tuples and stably sorts it by ``i*j``; the order
    inside one product is CPython's set iteration order, which depends only on the tuple hashes
    and the insertion sequence. Rebuilding the same set the same way reproduces it exactly.
    """
    if min_tiles < 1 or max_tiles < min_tiles:
        raise OptionError(f"tile range must satisfy 1 <= min_tiles <= max_tiles, got {min_tiles}..{max_tiles}")
    grids = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return sorted(grids, key=lambda g: g[0] * g[1])


def dynamic_tile_grid(
    width: int, height: int, tile_size: int, max_tiles: int, min_tiles: int = 1, use_thumbnail: bool = True
) -> TileGrid:
    """Choose the tile grid for a ``width`` x ``height`` image as upstream does.

    The grid whose aspect ratio is closest to the image's wins; on an exact tie a later (larger)
    grid replaces the current best only when the image area exceeds half the grid's pixel area.
    """
    if width < 1 or height < 1:
        raise OptionError(f"image size must be at least 1x1, got {width}x{height}")
    if tile_size < 1:
        raise OptionError(f"tile size must be positive, got {tile_size}")
    aspect = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    cols, rows = best
    return TileGrid(cols, rows, thumbnail=use_thumbnail and cols * rows != 1)


def tile_image(image: Image.Image, tile_size: int, max_tiles: int, use_thumbnail: bool = True) -> list[Image.Image]:
    """Resize and crop ``image`` into tiles: row-major crops, then the thumbnail last."""
    grid = dynamic_tile_grid(image.width, image.height, tile_size, max_tiles, use_thumbnail=use_thumbnail)
    # PIL's default resample (BICUBIC for RGB) is what upstream gets by not passing one.
    resized = image.resize((tile_size * grid.cols, tile_size * grid.rows))
    tiles = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            box = (c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size)
            tiles.append(resized.crop(box))
    if grid.thumbnail:
        tiles.append(image.resize((tile_size, tile_size)))
    return tiles


def normalize_tile(tile: Image.Image, tile_size: int) -> np.ndarray:
    """One tile -> float32 CHW, as torchvision Resize + ToTensor + Normalize(ImageNet) compute it."""
    if tile.size != (tile_size, tile_size):
        tile = tile.resize((tile_size, tile_size), Image.Resampling.BICUBIC)
    x = np.asarray(tile.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _channel_tables() -> np.ndarray:
    """(3, 256) float32: every uint8 value normalised per channel with ``normalize_tile``'s float32 ops.

    Each op is one correctly rounded float32 operation on the value alone, so looking the result up is
    bit-identical to computing it per pixel, and a lookup costs a fraction of the three passes.
    """
    x = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).T)


_TABLES = _channel_tables()


def normalization_tables() -> np.ndarray:
    """A copy of the (3, 256) per-channel tables every tiler normalises uint8 pixels with (CPU and device)."""
    return _TABLES.copy()


_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ivl-thumbnail")


def _normalize_into(out: np.ndarray, rgb: np.ndarray) -> None:
    """HxWx3 uint8 ``rgb`` -> ``out`` (3, H, W) float32, one table lookup per channel plane."""
    for ch in range(3):
        np.take(_TABLES[ch], rgb[:, :, ch], out=out[ch])


def pixel_values_for(image: Image.Image, tile_size: int, max_tiles: int, use_thumbnail: bool = True) -> np.ndarray:
    """``image`` -> pixel values of shape (num_tiles, 3, tile_size, tile_size), float32.

    Same values as normalising each tile of :func:`tile_image` with :func:`normalize_tile`, but the
    resized image is read into numpy once and sliced (no per-tile crop and copy), and every tile is
    written straight into the output (no float32 temporaries, no stack).
    """
    if image.mode != "RGB":
        # Resizing then converting is not the same as converting then resizing for every mode: keep the
        # reference order for the rare non-RGB input.
        return np.stack([normalize_tile(t, tile_size) for t in tile_image(image, tile_size, max_tiles, use_thumbnail)])
    s = tile_size
    grid = dynamic_tile_grid(image.width, image.height, s, max_tiles, use_thumbnail=use_thumbnail)
    # The same resizes as tile_image (PIL's default resample), so the uint8 pixels are identical.
    # Pillow releases the GIL while it resamples: the thumbnail resize runs beside the large one.
    thumb = _POOL.submit(image.resize, (s, s)) if grid.thumbnail else None
    resized = np.asarray(image.resize((s * grid.cols, s * grid.rows)))
    out = np.empty((grid.num_tiles, 3, s, s), dtype=np.float32)
    for r in range(grid.rows):
        for c in range(grid.cols):
            _normalize_into(out[r * grid.cols + c], resized[r * s : (r + 1) * s, c * s : (c + 1) * s])
    if thumb is not None:
        _normalize_into(out[-1], np.asarray(thumb.result()))
    return out
