"""A generated InternVL-format dataset (shapes with captions), for tests, demos and benchmarks.

Each image shows one coloured shape at a position; its caption names colour, shape and position, so a
model can only caption it well by looking. All four upstream sample types are produced on request.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30)}
SHAPES = ("square", "circle", "triangle")
POSITIONS = ("left", "right")
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."


def draw(colour: str, shape: str, position: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    w, h = size
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    s = min(w, h) // 3
    cx = w // 4 if position == "left" else 3 * w // 4
    cx += rng.randint(-w // 16, w // 16)
    cy = h // 2 + rng.randint(-h // 8, h // 8)
    box = (cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2)
    fill = COLOURS[colour]
    if shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "circle":
        d.ellipse(box, fill=fill)
    else:
        d.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return img


def references(colour: str, shape: str, position: str) -> list[str]:
    return [
        f"A {colour} {shape} on the {position}.",
        f"There is a {colour} {shape} on the {position} side.",
        f"A {colour} {shape} on the {position} of the image.",
    ]


def make_caption_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (112, 112),
    mixed: bool = False,
    name: str = "shapes",
) -> dict:
    """Write images, ``<name>.jsonl`` and ``meta.json`` under ``out_dir``.

    ``mixed``: every 4th line is pure text, multi-image, video (frame folder) or single image in turn.
    Returns {"meta": path, "items": [(image path, colour, shape, position)]} for the single-image lines.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines, items = [], []
    for i in range(n):
        colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS)
        kind = ("image", "text", "multi_image", "video")[i % 4] if mixed else "image"
        caption = rng.choice(references(colour, shape, position))
        if kind == "image":
            rel = f"images/{i:05d}.png"
            draw(colour, shape, position, size, rng).save(out / rel)
            items.append((out / rel, colour, shape, position))
            lines.append(
                {
                    "id": i,
                    "image": rel,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
                        {"from": "gpt", "value": caption},
                    ],
                }
            )
        elif kind == "text":
            lines.append(
                {
                    "id": i,
                    "conversations": [
                        {"from": "human", "value": f"What colour is a {colour} {shape}?"},
                        {"from": "gpt", "value": f"It is {colour}."},
                        {"from": "human", "value": "And which shape?"},
                        {"from": "gpt", "value": f"A {shape}."},
                    ],
                }
            )
        elif kind == "multi_image":
            rels = []
            for j in range(2):
                rel = f"images/{i:05d}_{j}.png"
                draw(colour, shape, POSITIONS[j], size, rng).save(out / rel)
                rels.append(rel)
            lines.append(
                {
                    "id": i,
                    "image": rels,
                    "conversations": [
                        {
                            "from": "human",
                            "value": "Image-1: <image>\nImage-2: <image>\nWhere is the shape in each image?",
                        },
                        {"from": "gpt", "value": f"Left in Image-1, right in Image-2; both are {colour} {shape}s."},
                    ],
                }
            )
        else:
            rel = f"videos/{i:05d}"
            (out / rel).mkdir(parents=True, exist_ok=True)
            for j in range(3):
                draw(colour, shape, POSITIONS[j % 2], size, rng).save(out / rel / f"frame_{j:03d}.png")
            lines.append(
                {
                    "id": i,
                    "video": rel,
                    "conversations": [
                        {"from": "human", "value": "<video>\nWhat moves in the video?"},
                        {"from": "gpt", "value": f"A {colour} {shape} moves from side to side."},
                    ],
                }
            )
    ann = out / f"{name}.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = out / "meta.json"
    meta.write_text(
        json.dumps(
            {
                name: {
                    "root": str(out),
                    "annotation": str(ann),
                    "data_augment": False,
                    "repeat_time": 1,
                    "length": len(lines),
                }
            },
            indent=2,
        )
        + "\n"
    )
    return {"meta": meta, "items": items}
