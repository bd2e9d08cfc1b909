"""Text from semantic ground truth: what is in view (category, look, left/right, near/far) -> captions and
ObjectNav-style questions. Everything said is read off the instance map and depth of the very frame, so a model
trained on it learns what is visible, not what the scene file contains."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from habitat_sim_bridge.furniture import CATEGORIES
from habitat_sim_bridge.sources.base import Frame

STRUCTURE = {"floor", "ceiling", "wall"}
NAMES = {
    "chair": "chair",
    "sofa": "sofa",
    "table": "table",
    "bed": "bed",
    "plant": "potted plant",
    "tv": "TV",
    "cabinet": "cabinet",
    "lamp": "floor lamp",
    "bookshelf": "bookshelf",
}
PLURALS = {"bookshelf": "bookshelves", "plant": "potted plants", "lamp": "floor lamps", "tv": "TVs"}
NUMBERS = ["no", "one", "two", "three", "four", "five", "six"]
MIN_FRACTION = 0.008  # smaller slivers are not reliably recognisable, so they are not mentioned
NEAR_M, FAR_M = 1.6, 3.2


@dataclass
class Seen:
    instance_id: int
    category: str
    color: str
    fraction: float  # of the image
    side: str  # "left" | "center" | "right"
    distance: float  # median depth, metres
    col: float  # centroid column in [0, 1]

    @property
    def range(self) -> str:
        return "near" if self.distance < NEAR_M else "far" if self.distance > FAR_M else "mid"


def visible_objects(frame: Frame, min_fraction: float = MIN_FRACTION) -> list[Seen]:
    """Furniture instances covering at least ``min_fraction`` of the frame, largest first."""
    if frame.semantic is None:
        return []
    sem = frame.semantic
    h, w = sem.shape
    ids, counts = np.unique(sem, return_counts=True)
    out = []
    for iid, count in zip(ids.tolist(), counts.tolist(), strict=True):
        info = frame.objects.get(iid)
        if info is None or info.category in STRUCTURE or count / sem.size < min_fraction:
            continue
        mask = sem == iid
        col = float(np.nonzero(mask)[1].mean()) / w
        depth = float(np.median(frame.depth[mask])) if frame.depth is not None else 2.0
        side = "left" if col < 0.38 else "right" if col > 0.62 else "center"
        out.append(Seen(iid, info.category, info.color, count / sem.size, side, depth, col))
    return sorted(out, key=lambda s: (-s.fraction, s.instance_id))


def structure_words(frame: Frame) -> tuple[str, str]:
    """(wall colour, floor description) of the frame's structure, '' when unknown or not visible."""
    wall = floor = ""
    present = set(np.unique(frame.semantic).tolist()) if frame.semantic is not None else set()
    for iid, info in frame.objects.items():
        if iid in present and info.category == "wall":
            wall = info.color
        if iid in present and info.category == "floor":
            floor = info.color
    return wall, floor


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeio" else "a ") + phrase


def noun(category: str, count: int = 1) -> str:
    if count == 1:
        return NAMES.get(category, category)
    return PLURALS.get(category, NAMES.get(category, category) + "s")


def describe(seen: Seen, article: bool = True) -> str:
    """'a red sofa', 'a potted plant in a blue pot', 'a TV'."""
    name = NAMES.get(seen.category, seen.category)
    if seen.category == "plant":
        text = name  # the pot is often hidden or cut off, so its colour is not a reliable thing to say
    elif seen.category == "tv" or not seen.color:
        text = name
    else:
        text = f"{seen.color} {name}"
    return _article(text) if article else text


SIDE_WORDS = {
    "left": ["on the left", "to the left"],
    "right": ["on the right", "to the right"],
    "center": ["in front", "straight ahead", "in the middle"],
}
RANGE_WORDS = {
    "near": ["close to the robot", "nearby", "close by"],
    "far": ["in the distance", "far away", "at the far end of the room"],
    "mid": [""],
}


def where(seen: Seen, rng: np.random.Generator, with_range: bool = True) -> str:
    """'on the left', 'straight ahead in the distance', 'right in front of the robot'."""
    if seen.side == "center" and seen.range == "near":
        return ["right in front of the robot", "in front, close to the robot", "just ahead"][int(rng.integers(3))]
    side = SIDE_WORDS[seen.side]
    text = side[int(rng.integers(len(side)))]
    if with_range and seen.range != "mid":
        rw = RANGE_WORDS[seen.range]
        text += " " + rw[int(rng.integers(len(rw)))]
    return text


def join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _grouped(seen: list[Seen]) -> list[str]:
    """'two chairs', 'a wooden table': same-category objects counted, in order of size."""
    order: list[str] = []
    groups: dict[str, list[Seen]] = {}
    for s in seen:
        if s.category not in groups:
            order.append(s.category)
        groups.setdefault(s.category, []).append(s)
    out = []
    for cat in order:
        g = groups[cat]
        if len(g) == 1:
            out.append(describe(g[0]))
        else:
            colors = {s.color for s in g}
            look = f"{g[0].color} " if len(colors) == 1 and g[0].color and cat not in ("tv", "plant") else ""
            out.append(f"{NUMBERS[min(len(g), 6)]} {look}{noun(cat, len(g))}")
    return out


ROOM_CUES = {"bedroom": {"bed"}, "living room": {"sofa", "tv"}, "dining room": {"table"}, "office": {"bookshelf"}}


# each template: (frame seen objects, wall, floor, room type, rng) -> caption or None if it does not apply
def _t_positions(seen, wall, floor, room, rng):
    parts = [f"{describe(s)} {where(s, rng)}" for s in seen[:3]]
    return _cap(join(parts)) + "." if parts else None


def _t_sees(seen, wall, floor, room, rng):
    lead = ["The robot sees", "In view:", "The camera shows", "Visible here:"][int(rng.integers(4))]
    return f"{lead} {join(_grouped(seen[:4]))}." if seen else None


def _t_room(seen, wall, floor, room, rng):
    cats = {s.category for s in seen}
    if not seen or not room or not (ROOM_CUES.get(room, set()) & cats):
        return None
    return _cap(f"{_article(room)} with {join(_grouped(seen[:3]))}.")


def _t_counts(seen, wall, floor, room, rng):
    if not seen:
        return None
    groups = _grouped(seen[:4])
    verb = "are" if len(groups) > 1 or not groups[0].startswith(("a ", "an ")) else "is"
    return f"There {verb} {join(groups)} in view."


def _t_nearest(seen, wall, floor, room, rng):
    if len(seen) < 2:
        return None
    by_dist = sorted(seen[:4], key=lambda s: s.distance)
    a, b = by_dist[0], by_dist[-1]
    if b.distance - a.distance < 1.0:
        return None
    return _cap(f"{describe(a)} {SIDE_WORDS[a.side][0]} is closest, with {describe(b)} further back.")


def _t_decor(seen, wall, floor, room, rng):
    if not seen or not wall:
        return None
    floor_txt = f" and {_article(floor + ' floor') if 'carpet' not in floor else _article(floor)}" if floor else ""
    return _cap(f"{join(_grouped(seen[:2]))} in a room with {wall} walls{floor_txt}.")


def _t_empty(seen, wall, floor, room, rng):
    if seen:
        return None
    options = []
    if wall:
        options.append(f"A plain {wall} wall with nothing in front of it.")
        options.append(f"An empty part of the room with {wall} walls.")
    if floor:
        options.append(f"Only the {floor if 'carpet' in floor else floor + ' floor'} and the walls are in view.")
    options.append("No furniture is in view.")
    return options[int(rng.integers(len(options)))]


TEMPLATES = [_t_positions, _t_sees, _t_room, _t_counts, _t_nearest, _t_decor, _t_empty]


def captions(frame: Frame, rng: np.random.Generator, room_type: str = "", n: int = 1) -> list[str]:
    """Up to ``n`` different captions of ``frame`` from randomly ordered templates that apply to it."""
    seen = visible_objects(frame)
    wall, floor = structure_words(frame)
    out: list[str] = []
    for idx in rng.permutation(len(TEMPLATES)):
        text = TEMPLATES[int(idx)](seen, wall, floor, room_type, rng)
        if text and text not in out:
            out.append(text)
        if len(out) == n:
            break
    return out or ["No furniture is in view."]


# --------------------------------------------------------------------------- questions
def objectnav_qa(frame: Frame, rng: np.random.Generator, categories: Sequence[str] = CATEGORIES) -> tuple[str, str]:
    """One question about the frame with its ground-truth answer; about half are about visible categories."""
    seen = visible_objects(frame)
    present = {s.category for s in seen}
    if present and rng.random() < 0.5:
        cat = sorted(present)[int(rng.integers(len(present)))]
    else:
        absent = [c for c in categories if c not in present] or list(categories)
        cat = absent[int(rng.integers(len(absent)))]
    hits = [s for s in seen if s.category == cat]
    kind = int(rng.integers(5))
    name = noun(cat)
    if kind == 0:
        q = f"Would {_article(name)} be found here?"
        a = f"Yes, there is {describe(hits[0])} {where(hits[0], rng)}." if hits else f"No, there is no {name} in view."
    elif kind == 1:
        q = f"Is there {_article(name)} in this view? Answer yes or no."
        a = "Yes." if hits else "No."
    elif kind == 2:
        q = f"How many {noun(cat, 2)} can you see?"
        a = _cap(NUMBERS[min(len(hits), 6)]) + "." if hits else "None."
    elif kind == 3 and hits:
        q = f"Where is the {name}?"
        a = _cap(where(hits[0], rng)) + "."
    else:
        q = f"I am looking for {_article(name)}. Should I search here?"
        a = (
            f"Yes, {describe(hits[0])} is {where(hits[0], rng, with_range=True)}."
            if hits
            else f"No, I cannot see {_article(name)} here; look elsewhere."
        )
    return q, a


def trajectory_qa(frames: Sequence[Frame], goal: str, rng: np.random.Generator) -> tuple[str, str]:
    """A question over several frames of one episode (passed objects, or where the goal shows up)."""
    seen_per = [visible_objects(f) for f in frames]
    if rng.random() < 0.5:
        name = noun(goal)
        q = f"The robot is looking for {_article(name)}. In which image is it visible?"
        hits = [f"Image-{i + 1}" for i, seen in enumerate(seen_per) if any(s.category == goal for s in seen)]
        if not hits:
            a = f"The {name} is not visible in any of these images."
        elif len(hits) == 1:
            a = f"{hits[0]} shows the {name}."
        else:
            a = f"The {name} is visible in {join(hits)}."
        return q, a
    q = [
        "These are views from a robot moving through a room. What did it see along the way?",
        "Describe the objects the robot passed, in order.",
    ][int(rng.integers(2))]
    order: list[Seen] = []
    seen_ids: set[int] = set()
    for seen in seen_per:
        for s in seen[:3]:
            if s.instance_id not in seen_ids:
                seen_ids.add(s.instance_id)
                order.append(s)
    if not order:
        return q, "It saw only walls and the floor."
    return q, f"It saw {join(describe(s) for s in order[:5])}."
