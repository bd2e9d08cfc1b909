"""Tile grids and pixel values: upstream's worked examples and normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ivl_ros.cli import main
from ivl_ros.model.tiling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    candidate_grids,
    dynamic_tile_grid,
    normalize_tile,
    pixel_values_for,
    tile_image,
)

# (size, max 6 -> (cols, rows, tiles), max 12 -> (cols, rows, tiles)); tile 448. Written down from upstream's
# dynamic_preprocess run on these sizes, not from our tiler.
WORKED = [
    ((640, 480), (3, 2, 7), (4, 3, 13)),
    ((1280, 720), (2, 1, 3), (4, 2, 9)),
    ((1920, 1080), (2, 1, 3), (4, 2, 9)),
    ((2048, 2048), (2, 2, 5), (3, 3, 10)),
    ((560, 448), (1, 1, 1), (4, 3, 13)),
    ((300, 300), (1, 1, 1), (1, 1, 1)),
    ((1, 1000), (1, 6, 7), (1, 12, 13)),
]


@pytest.mark.parametrize("size,max6,max12", WORKED)
def test_worked_examples(size, max6, max12):
    for max_tiles, expected in ((6, max6), (12, max12)):
        g = dynamic_tile_grid(*size, tile_size=448, max_tiles=max_tiles)
        assert (g.cols, g.rows, g.num_tiles) == expected


def test_candidate_order_matches_upstream():
    assert candidate_grids(1, 6) == [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 1),
        (1, 3),
        (4, 1),
        (1, 4),
        (2, 2),
        (1, 5),
        (5, 1),
        (6, 1),
        (2, 3),
        (1, 6),
        (3, 2),
    ]
    assert candidate_grids(1, 12)[:12] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (3, 1),
        (1, 3),
        (2, 2),
        (4, 1),
        (1, 4),
        (5, 1),
        (1, 5),
        (1, 6),
        (6, 1),
    ]
    assert len(candidate_grids(1, 12)) == 35


def test_max_one_tile_is_always_one():
    for size in [(10, 2000), (2000, 10), (4000, 3000)]:
        assert dynamic_tile_grid(*size, 448, 1).num_tiles == 1


def test_cli_tiles_json(capsys):
    sizes = [f"{w}x{h}" for (w, h), _, _ in WORKED]
    args = ["tiles", "--tile-size", "448", "--max-tiles", "6", "--json"]
    for s in sizes:
        args += ["--size", s]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["size"] for r in rows] == [list(s) for s, _, _ in WORKED]
    assert [(*r["grid"], r["num_tiles"]) for r in rows] == [m6 for _, m6, _ in WORKED]


def test_tiles_row_major_and_thumbnail_last():
    # Four coloured quadrants at 2:1 -> 2x1 grid: left tile red/blue halves, right tile green/yellow.
    img = Image.new("RGB", (224, 112))
    img.paste((255, 0, 0), (0, 0, 112, 112))
    img.paste((0, 255, 0), (112, 0, 224, 112))
    tiles = tile_image(img, tile_size=112, max_tiles=6)
    assert len(tiles) == 3
    assert tiles[0].getpixel((50, 50)) == (255, 0, 0)
    assert tiles[1].getpixel((50, 50)) == (0, 255, 0)
    assert tiles[2].size == (112, 112)  # thumbnail of the whole image last
    assert tiles[2].getpixel((20, 50))[0] > 200 and tiles[2].getpixel((90, 50))[1] > 200


def test_pixel_values_normalisation_and_bicubic():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    pv = pixel_values_for(img, tile_size=112, max_tiles=6)
    grid = dynamic_tile_grid(300, 200, 112, 6)
    assert pv.shape == (grid.num_tiles, 3, 112, 112) and pv.dtype == np.float32
    resized = np.asarray(img.resize((112 * grid.cols, 112 * grid.rows), Image.Resampling.BICUBIC), np.float32)
    first = (resized[:112, :112] / np.float32(255) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_array_equal(pv[0], first.transpose(2, 0, 1))


def _reference_pixel_values(img, tile_size, max_tiles, use_thumbnail=True):
    """The per-tile path pixel_values_for used to take: crop each tile, normalise it, stack."""
    return np.stack([normalize_tile(t, tile_size) for t in tile_image(img, tile_size, max_tiles, use_thumbnail)])


@pytest.mark.parametrize(
    "size,max_tiles,thumb,mode",
    [
        ((640, 480), 6, True, "RGB"),
        ((300, 200), 6, True, "RGB"),
        ((97, 1000), 12, True, "RGB"),
        ((250, 250), 1, True, "RGB"),
        ((640, 480), 6, False, "RGB"),
        ((333, 120), 4, True, "L"),
        ((200, 150), 6, True, "RGBA"),
    ],
)
def test_pixel_values_bit_identical_to_per_tile_path(size, max_tiles, thumb, mode):
    rng = np.random.default_rng(size[0] * 7 + size[1])
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), mode="RGBA")
    img = rgb.convert(mode)
    got = pixel_values_for(img, tile_size=112, max_tiles=max_tiles, use_thumbnail=thumb)
    ref = _reference_pixel_values(img, 112, max_tiles, thumb)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))  # bit for bit, not just close
