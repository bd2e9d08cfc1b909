"""Furniture from primitives. Each builder returns parts in the object frame: y up, origin at the floor centre of
its footprint, back towards -z and front towards +z (so an object against a wall faces into the room)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (172, 38, 38),
    "blue": (44, 82, 176),
    "green": (58, 142, 70),
    "yellow": (226, 190, 52),
    "grey": (128, 128, 132),
    "black": (34, 34, 36),
    "white": (236, 236, 230),
    "orange": (226, 118, 38),
    "purple": (118, 58, 150),
    "pink": (226, 138, 170),
    "brown": (112, 70, 40),
    "beige": (214, 198, 164),
    "teal": (36, 138, 140),
}
WOOD_TONES = [(150, 100, 58), (186, 136, 84), (110, 70, 40), (200, 160, 110)]


@dataclass
class Part:
    mesh: trimesh.Trimesh
    color: tuple[int, int, int]
    texture: str | None = None  # a textures.MAKERS key, tiled per metre


@dataclass
class Built:
    parts: list[Part]
    size: tuple[float, float, float]  # footprint width (x), height (y), depth (z)
    color_word: str  # how captions name its look: "red", "wooden", ...


def box(w: float, h: float, d: float, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    """An axis-aligned box whose bottom face centre is at (x, y, z)."""
    return trimesh.creation.box(
        extents=(w, h, d), transform=trimesh.transformations.translation_matrix((x, y + h / 2, z))
    )


def cylinder(r: float, h: float, x: float = 0.0, y: float = 0.0, z: float = 0.0, sections: int = 20) -> trimesh.Trimesh:
    """An upright (y-axis) cylinder standing on (x, y, z); trimesh builds them along z, so rotate."""
    m = trimesh.creation.cylinder(radius=r, height=h, sections=sections)
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    m.apply_translation((x, y + h / 2, z))
    return m


def cone(r: float, h: float, y: float) -> trimesh.Trimesh:
    m = trimesh.creation.cone(radius=r, height=h, sections=20)
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    m.apply_translation((0, y, 0))
    return m


def _pick_color(rng: np.random.Generator, names: list[str]) -> tuple[str, tuple[int, int, int]]:
    name = names[int(rng.integers(len(names)))]
    return name, COLORS[name]


def _wood(rng: np.random.Generator) -> tuple[int, int, int]:
    return WOOD_TONES[int(rng.integers(len(WOOD_TONES)))]


def _legs(w: float, d: float, h: float, t: float, color: tuple, texture: str | None = None) -> list[Part]:
    return [
        Part(box(t, h, t, sx * (w / 2 - t), 0, sz * (d / 2 - t)), color, texture) for sx in (-1, 1) for sz in (-1, 1)
    ]


def chair(rng: np.random.Generator) -> Built:
    if rng.random() < 0.4:
        word, col, tex = "wooden", _wood(rng), "wood"
    else:
        word, col = _pick_color(rng, ["red", "blue", "green", "black", "white", "orange", "teal", "yellow"])
        tex = None
    w = d = 0.48
    parts = _legs(w, d, 0.43, 0.045, col, tex)
    parts.append(Part(box(w, 0.05, d, 0, 0.43, 0), col, tex))
    parts.append(Part(box(w, 0.5, 0.05, 0, 0.48, -d / 2 + 0.025), col, tex))
    return Built(parts, (w, 0.98, d), word)


def sofa(rng: np.random.Generator) -> Built:
    word, col = _pick_color(rng, ["grey", "blue", "red", "green", "beige", "brown", "purple", "teal"])
    w, d = float(rng.uniform(1.7, 2.3)), 0.9
    dark = tuple(int(c * 0.8) for c in col)
    parts = [
        Part(box(w, 0.42, d, 0, 0.0, 0), col, "fabric"),
        Part(box(w, 0.45, 0.22, 0, 0.42, -d / 2 + 0.11), dark, "fabric"),
        Part(box(0.2, 0.22, d, -w / 2 + 0.1, 0.42, 0), dark, "fabric"),
        Part(box(0.2, 0.22, d, w / 2 - 0.1, 0.42, 0), dark, "fabric"),
    ]
    for i in range(2):  # seat cushions read as a sofa even from the front
        parts.append(
            Part(box((w - 0.44) / 2 - 0.02, 0.1, d - 0.3, (i - 0.5) * (w - 0.44) / 2, 0.42, 0.1), col, "fabric")
        )
    return Built(parts, (w, 0.87, d), word)


def table(rng: np.random.Generator) -> Built:
    if rng.random() < 0.7:
        word, col, tex = "wooden", _wood(rng), "wood"
    else:
        word, col = _pick_color(rng, ["white", "black", "grey"])
        tex = None
    w, d = float(rng.uniform(1.1, 1.6)), float(rng.uniform(0.7, 0.9))
    parts = _legs(w, d, 0.72, 0.06, col, tex) + [Part(box(w, 0.05, d, 0, 0.72, 0), col, tex)]
    return Built(parts, (w, 0.77, d), word)


def bed(rng: np.random.Generator) -> Built:
    word, blanket = _pick_color(rng, ["blue", "red", "green", "yellow", "pink", "purple", "grey", "teal"])
    frame = _wood(rng)
    w, d = float(rng.choice([1.4, 1.6, 1.8])), 2.05
    parts = [
        Part(box(w, 0.3, d, 0, 0, 0), frame, "wood"),
        Part(box(w - 0.06, 0.22, d - 0.08, 0, 0.3, 0.02), COLORS["white"], "fabric"),
        Part(box(w - 0.04, 0.05, d * 0.6, 0, 0.52, d * 0.2), blanket, "fabric"),
        Part(box(w, 0.75, 0.08, 0, 0.3, -d / 2 + 0.04), frame, "wood"),
    ]
    for i in (-1, 1):
        parts.append(Part(box(w / 2 - 0.15, 0.12, 0.35, i * w / 4, 0.52, -d / 2 + 0.3), COLORS["white"], "fabric"))
    return Built(parts, (w, 1.05, d), word)


def plant(rng: np.random.Generator) -> Built:
    pot_word, pot = (
        ("terracotta", (180, 92, 56)) if rng.random() < 0.6 else _pick_color(rng, ["white", "black", "blue"])
    )
    h = float(rng.uniform(0.3, 0.45))
    leaf = (int(rng.integers(40, 80)), int(rng.integers(110, 160)), int(rng.integers(40, 70)))
    parts = [Part(cylinder(0.2, h, sections=16), pot), Part(cylinder(0.18, 0.03, y=h), (70, 50, 30))]
    r = float(rng.uniform(0.28, 0.38))
    for dx, dy, dz, s in ((0, r, 0, 1.0), (0.12, r * 1.5, 0.05, 0.7), (-0.1, r * 1.4, -0.08, 0.75)):
        ball = trimesh.creation.icosphere(subdivisions=1, radius=r * s)
        ball.apply_translation((dx, h + dy, dz))
        parts.append(Part(ball, leaf))
    parts.append(Part(cylinder(0.02, r, y=h), (60, 90, 40)))
    return Built(parts, (0.5, h + 2.4 * r, 0.5), "green" if pot_word == "terracotta" else pot_word)


def tv(rng: np.random.Generator) -> Built:
    w = float(rng.uniform(0.9, 1.3))
    stand_word, stand = ("wooden", _wood(rng)) if rng.random() < 0.6 else ("black", COLORS["black"])
    screen = (int(rng.integers(20, 50)), int(rng.integers(40, 80)), int(rng.integers(90, 140)))
    parts = [
        Part(box(w + 0.3, 0.45, 0.42, 0, 0, 0), stand, "wood" if stand_word == "wooden" else None),
        Part(box(0.3, 0.04, 0.2, 0, 0.45, 0), COLORS["black"]),
        Part(box(0.06, 0.1, 0.06, 0, 0.49, -0.02), COLORS["black"]),
        Part(box(w, w * 0.58, 0.06, 0, 0.57, -0.03), COLORS["black"]),
        Part(box(w - 0.06, w * 0.58 - 0.06, 0.01, 0, 0.6, 0.005), screen),
    ]
    return Built(parts, (w + 0.3, 0.57 + w * 0.58, 0.42), "black")


def cabinet(rng: np.random.Generator) -> Built:
    if rng.random() < 0.5:
        word, col, tex = "wooden", _wood(rng), "wood"
    else:
        word, col = _pick_color(rng, ["white", "grey", "blue", "green", "yellow"])
        tex = None
    w, h, d = float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.9, 1.9)), 0.45
    dark = tuple(int(c * 0.55) for c in col)
    parts = [Part(box(w, h, d), col, tex), Part(box(0.015, h - 0.1, 0.01, 0, 0.05, d / 2), dark)]
    for sx in (-1, 1):
        parts.append(Part(box(0.03, 0.18, 0.03, sx * 0.06, h * 0.55, d / 2 + 0.015), (200, 200, 205)))
    return Built(parts, (w, h, d), word)


def lamp(rng: np.random.Generator) -> Built:
    word, shade = _pick_color(rng, ["white", "beige", "yellow", "orange", "red"])
    metal = COLORS["black"] if rng.random() < 0.5 else (180, 180, 185)
    h = float(rng.uniform(1.4, 1.7))
    parts = [
        Part(cylinder(0.17, 0.03, sections=16), metal),
        Part(cylinder(0.02, h - 0.3, y=0.03, sections=8), metal),
        Part(cone(0.25, 0.35, h - 0.35), shade),
    ]
    return Built(parts, (0.45, h, 0.45), word)


def bookshelf(rng: np.random.Generator) -> Built:
    word, col, tex = ("wooden", _wood(rng), "wood") if rng.random() < 0.7 else ("white", COLORS["white"], None)
    w, h, d = float(rng.uniform(0.8, 1.2)), float(rng.uniform(1.5, 2.0)), 0.35
    t = 0.03
    parts = [Part(box(t, h, d, sx * (w / 2 - t / 2), 0, 0), col, tex) for sx in (-1, 1)]
    parts.append(Part(box(w, h, t, 0, 0, -d / 2 + t / 2), col, tex))
    shelves = 4
    book_colors = [COLORS[c] for c in ("red", "blue", "green", "yellow", "white", "black", "orange", "teal")]
    for i in range(shelves + 1):
        y = i * (h - t) / shelves
        parts.append(Part(box(w, t, d, 0, y, 0), col, tex))
        if i == shelves:
            break
        x = -w / 2 + t + 0.02
        while x < w / 2 - 0.1:  # a row of books of random width and height on each shelf
            bw = float(rng.uniform(0.03, 0.07))
            bh = float(rng.uniform(0.18, 0.3))
            parts.append(Part(box(bw, bh, d * 0.75, x + bw / 2, y + t, 0.02), book_colors[int(rng.integers(8))]))
            x += bw + 0.005
    return Built(parts, (w, h, d), word)


BUILDERS: dict[str, Callable[[np.random.Generator], Built]] = {
    "chair": chair,
    "sofa": sofa,
    "table": table,
    "bed": bed,
    "plant": plant,
    "tv": tv,
    "cabinet": cabinet,
    "lamp": lamp,
    "bookshelf": bookshelf,
}
CATEGORIES = list(BUILDERS)
