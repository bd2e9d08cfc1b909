"""Label masking and per-sample preprocessing, checked against upstream's rules built independently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from finetune.data import check_data
from finetune.preprocess import IGNORE_INDEX, build_example, render_training_conversation
from ivl_ros.model.spec import load_spec
from ivl_ros.model.tiling import dynamic_tile_grid


@pytest.fixture(scope="module")
def spec_tok(tiny_checkpoint):
    _, spec, tok = load_spec(tiny_checkpoint)
    return spec, tok


def _dataset(tmp_path, lines, images=()):
    for name, size in images:
        Image.new("RGB", size, (120, 30, 200)).save(tmp_path / name)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = {
        "d": {
            "root": str(tmp_path),
            "annotation": str(tmp_path / "a.jsonl"),
            "data_augment": False,
            "repeat_time": 1,
            "length": len(lines),
        }
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    report = check_data(tmp_path / "meta.json")
    assert not report.problems, report.problems
    return report.samples


def test_two_turn_mask_is_upstream(tmp_path, spec_tok):
    spec, tok = spec_tok
    conv = [
        {"from": "human", "value": "What is in front of the robot? "},
        {"from": "gpt", "value": " A red chair."},
        {"from": "human", "value": "Would a sofa be found here?"},
        {"from": "gpt", "value": "Yes, on the left."},
    ]
    (sample,) = _dataset(tmp_path, [{"conversations": conv}])
    ex = build_example(sample, tok, spec, 6, 4096)
    # Upstream's supervised stretches, tokenized piece by piece: (text, supervised?)
    pieces = [
        (f"<|im_start|>system\n{spec.system_message}<|im_end|>", False),
        ("<|im_start|>user\nWhat is in front of the robot?<|im_end|>", False),
        ("<|im_start|>assistant\n", False),
        ("A red chair.", True),
        ("<|im_end|>", True),
        ("<|im_start|>user\nWould a sofa be found here?<|im_end|><|im_start|>assistant\n", False),
        ("Yes, on the left.", True),
        ("<|im_end|>", True),
    ]
    ids, supervised = [tok.bos_id], [False]
    for text, sup in pieces:
        piece = tok.encode(text, add_bos=False)
        ids += piece
        supervised += [sup] * len(piece)
    assert ex.input_ids == ids
    expected = [i if s else IGNORE_INDEX for i, s in zip(ids, supervised, strict=True)]
    assert ex.labels == expected
    kept = [i for i in ex.labels if i != IGNORE_INDEX]
    im_end = tok.token_to_id("<|im_end|>")
    assert tok.decode(kept) == "A red chair.Yes, on the left." and kept.count(im_end) == 2
    assert kept[-1] == im_end and kept[len(tok.encode("A red chair.", add_bos=False))] == im_end
    assert ex.pixel_values is None and not ex.masked_all
    # the rendered text is the core template (system, turns closed by <|im_end|>, no newline after it)
    assert render_training_conversation(conv, spec).endswith("<|im_start|>assistant\nYes, on the left.<|im_end|>")


def test_sample_types_tiling_and_image_masking(tmp_path, spec_tok):
    spec, tok = spec_tok
    (tmp_path / "vid").mkdir()
    for j in range(3):
        Image.new("RGB", (60, 40), (10 * j, 0, 0)).save(tmp_path / "vid" / f"{j}.png")
    lines = [
        {
            "image": "wide.png",
            "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": "Purple."}],
        },
        {
            "image": ["wide.png", "tall.png"],
            "conversations": [
                {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nCompare."},
                {"from": "gpt", "value": "Same colour."},
            ],
        },
        {
            "video": "vid",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat changes?"},
                {"from": "gpt", "value": "The red."},
            ],
        },
    ]
    single, multi, video = _dataset(tmp_path, lines, [("wide.png", (448, 224)), ("tall.png", (112, 400))])
    ex = build_example(single, tok, spec, 6, 4096)
    grid = dynamic_tile_grid(448, 224, spec.tile_size, 6, use_thumbnail=spec.use_thumbnail)
    assert ex.num_tiles == [grid.num_tiles] and ex.pixel_values.shape[0] == grid.num_tiles
    ctx = [i for i, t in enumerate(ex.input_ids) if t == spec.image_token_id]
    assert len(ctx) == grid.num_tiles * spec.tokens_per_tile
    assert all(ex.labels[i] == IGNORE_INDEX for i in range(max(ctx) + 1))  # "<image>\n" prepended, masked
    ex = build_example(multi, tok, spec, 6, 4096)  # upstream: max(1, 6 // 2) = 3 tiles per image at most
    assert ex.num_tiles == [
        dynamic_tile_grid(448, 224, spec.tile_size, 3).num_tiles,
        dynamic_tile_grid(112, 400, spec.tile_size, 3).num_tiles,
    ]
    assert ex.pixel_values.shape[0] == sum(ex.num_tiles)
    ex = build_example(video, tok, spec, 6, 4096)
    assert ex.num_tiles == [1, 1, 1]
    text = tok.decode(ex.input_ids, skip_special_tokens=False)
    assert "Frame1:" in text and "Frame3:" in text and "<video>" not in text


def test_truncation_drops_cut_image(tmp_path, spec_tok):
    spec, tok = spec_tok
    lines = [
        {
            "image": ["a.png", "b.png"],
            "conversations": [
                {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nCompare."},
                {"from": "gpt", "value": "Same."},
            ],
        }
    ]
    (sample,) = _dataset(tmp_path, lines, [("a.png", (112, 112)), ("b.png", (112, 112))])
    full = build_example(sample, tok, spec, 6, 4096)
    starts = [i for i, t in enumerate(full.input_ids) if t == tok.token_to_id("<img>")]
    for limit in (starts[1] + 3, starts[1]):  # inside the second image's tokens / just before it
        ex = build_example(sample, tok, spec, 6, limit)
        assert ex.truncated and ex.num_tiles == [1]
        assert ex.input_ids.count(spec.image_token_id) == spec.tokens_per_tile
        assert ex.pixel_values.shape[0] == 1 and len(ex.input_ids) == starts[1]
        assert np.array_equal(ex.pixel_values, full.pixel_values[:1])
