"""Small procedural textures (wood, floor planks, tiles, carpet, fabric) so generated rooms are not flat grey."""

from __future__ import annotations

import numpy as np
from PIL import Image

SIZE = 128


def _noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((size // scale + 2, size // scale + 2)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size + 2 * scale, size + 2 * scale), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)[scale : scale + size, scale : scale + size] / 255.0


def _to_image(base: np.ndarray, shade: np.ndarray) -> Image.Image:
    rgb = np.clip(base[None, None, :] * shade[:, :, None], 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, mode="RGB")


def wood(rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    """Grain lines along u with slow waviness."""
    y = np.arange(SIZE, dtype=np.float32)[:, None]
    wobble = _noise(rng, SIZE, 32) * 6.0
    grain = 0.5 + 0.5 * np.sin((y + wobble) * 0.9 + _noise(rng, SIZE, 8) * 2.0)
    return _to_image(np.array(base, np.float32), 0.78 + 0.3 * grain)


def planks(rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    """Wood planks with dark seams and per-plank tint, for floors."""
    shade = np.asarray(wood(rng, (255, 255, 255)), dtype=np.float32)[:, :, 0] / 255.0
    rows = np.arange(SIZE) // 32
    shade = shade * (0.85 + 0.25 * rng.random(rows.max() + 1)[rows])[:, None]
    shade[np.arange(SIZE) % 32 < 2, :] *= 0.45
    return _to_image(np.array(base, np.float32), shade)


def tiles(rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    """Square tiles with grout lines and a faint checker."""
    idx = np.arange(SIZE)
    checker = ((idx[:, None] // 64 + idx[None, :] // 64) % 2) * 0.08
    shade = 0.95 - checker + 0.05 * _noise(rng, SIZE, 16)
    grout = (idx % 64 < 3)[:, None] | (idx % 64 < 3)[None, :]
    shade[grout] = 0.6
    return _to_image(np.array(base, np.float32), shade)


def carpet(rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    return _to_image(np.array(base, np.float32), 0.85 + 0.2 * _noise(rng, SIZE, 4) + 0.05 * rng.random((SIZE, SIZE)))


def fabric(rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    """A fine woven cross-hatch."""
    idx = np.arange(SIZE)
    weave = 0.06 * ((idx[:, None] % 4 < 2) ^ (idx[None, :] % 4 < 2))
    return _to_image(np.array(base, np.float32), 0.9 + weave + 0.08 * _noise(rng, SIZE, 16))


MAKERS = {"wood": wood, "planks": planks, "tiles": tiles, "carpet": carpet, "fabric": fabric}


def make_texture(kind: str, rng: np.random.Generator, base: tuple[int, int, int]) -> Image.Image:
    return MAKERS[kind](rng, base)
