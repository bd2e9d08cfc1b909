"""Eval fixtures: real COCO and nlg-eval files from tests/data, small generated image sets and a fake engine."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TEST_DATA


@pytest.fixture
def coco_sample() -> Path:
    """2 real COCO images with captions.json, and two 1000-caption results files (tests/data/coco_sample)."""
    return TEST_DATA / "coco_sample"


@pytest.fixture
def nlgeval() -> Path:
    """nlg-eval's example hyp.txt, ref1.txt, ref2.txt (tests/data/nlgeval)."""
    return TEST_DATA / "nlgeval"


# Four tiny images with distinct reference captions: enough for CIDEr's IDF to be non-trivial.
SCENES = {
    101: ((200, 30, 30), ["a red square on a table", "a red box sitting on a wooden table"]),
    102: ((30, 160, 40), ["a green field under the sky", "green grass in a wide open field"]),
    103: ((30, 40, 200), ["a blue car parked on the street", "a small blue car next to the road"]),
    104: ((220, 220, 40), ["a yellow banana on a plate", "a ripe yellow banana lying on a white plate"]),
}


@pytest.fixture
def coco_set(tmp_path) -> tuple[Path, Path]:
    """(image root, COCO caption annotation file) for the four SCENES images."""
    root = tmp_path / "images"
    root.mkdir()
    images, anns = [], []
    for image_id, (color, caps) in SCENES.items():
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.new("RGB", (64, 48), color).save(root / name)
        images.append({"id": image_id, "file_name": name})
        anns += [{"image_id": image_id, "id": len(anns), "caption": c} for c in caps]
    ann_file = tmp_path / "captions.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns}))
    return root, ann_file


@dataclass
class FakeAnswer:
    answer: str
    token_ids: list[int]
    num_tiles: int = 1


@dataclass
class FakeEngine:
    """Captions an image from its file name; records calls; can fail on the N-th call (an interruption)."""

    model_id: str = "fake-model"
    fail_on_call: int | None = None
    calls: list[str] = field(default_factory=list)

    def caption(self, image, *, max_tiles=6):
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise KeyboardInterrupt("injected interruption")
        self.calls.append(Path(image).name)
        image_id = int(Path(image).stem.rsplit("_", 1)[-1])
        caption = SCENES[image_id][1][0] if image_id in SCENES else "a photo"
        return FakeAnswer(caption, list(range(len(caption.split()))))


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()
