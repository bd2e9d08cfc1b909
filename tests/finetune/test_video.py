"""Video files as training data: OpenCV decoding, upstream's frame sampling, prompt expansion, training,
and --check-data problems for unreadable or empty videos."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import cv2  # opencv-python-headless, requirements/finetune.txt
import numpy as np
import pytest
from PIL import Image

from tests.finetune.conftest import REPO, train_args

N_FRAMES = 12
CONV = [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A red square."}]


def write_mp4(path: Path, n: int = N_FRAMES, size: tuple[int, int] = (64, 48)) -> Path:
    """Frame i is a flat grey of level 20 * i (what the decoded frame must show, up to codec error)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((size[1], size[0], 3), 20 * i, dtype=np.uint8))
    writer.release()
    return path


def level(img: Image.Image) -> int:
    """Which frame a decoded image is: its mean grey level / 20."""
    return round(float(np.asarray(img).mean()) / 20)


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> Path:
    """mp4 lines, a frame folder, a frame list and an image line; meta json path."""
    root = tmp_path_factory.mktemp("video")
    write_mp4(root / "a.mp4")
    write_mp4(root / "b.mp4", n=3)
    (root / "frames").mkdir()
    for i in range(10):
        Image.new("RGB", (40, 30), (20 * i,) * 3).save(root / "frames" / f"{i:03d}.png")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "img.png")
    lines = [
        {"video": "a.mp4", "conversations": CONV},
        {"video": "b.mp4", "conversations": [{"from": "human", "value": "What moves?"}, CONV[1]]},
        {"video": "frames", "conversations": CONV},
        {"video": ["frames/000.png", "frames/005.png"], "conversations": CONV},
        {
            "image": "img.png",
            "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}],
        },
    ]
    (root / "v.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = root / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "v": {
                    "root": str(root),
                    "annotation": str(root / "v.jsonl"),
                    "data_augment": False,
                    "repeat_time": 1,
                    "length": len(lines),
                }
            }
        )
    )
    return meta


def test_frame_indices_follow_upstream():
    from finetune.video import frame_indices

    # middle of each of 4 intervals of 12 frames: edges 0 3 6 9 12 -> ranges (0,2) (3,5) (6,8) (9,11)
    assert frame_indices(4, 12, "middle", None) == [1, 4, 7, 10]
    for seed in range(20):
        picked = frame_indices(4, 12, "rand", random.Random(seed))
        # upstream draws from range(start, end): never an interval's last frame
        assert all(lo <= p < hi for p, (lo, hi) in zip(picked, [(0, 2), (3, 5), (6, 8), (9, 11)], strict=True))
    assert frame_indices(4, 12, "rand", random.Random(3)) == frame_indices(4, 12, "rand", random.Random(3))
    assert frame_indices(6, 3, "middle", None) == [0, 1, 2, 2, 2, 2]  # short video: the last frame repeats
    # intervals of one frame leave range(start, end) empty: a sorted random subset, as upstream's fallback
    picked = frame_indices(5, 8, "rand", random.Random(1))
    assert picked == sorted(picked) and len(set(picked)) == 5 and all(0 <= p < 8 for p in picked)


def test_frame_count_and_folder_rule():
    from finetune.video import FrameSampling, sample_frame_files

    sampling = FrameSampling(2, 4, "rand")
    counts = {sampling.frame_count(random.Random(s)) for s in range(50)}
    assert counts == {2, 3, 4}
    files = [Path(f"{i}.png") for i in range(10)]
    assert sample_frame_files(files[:3], sampling, None) == files[:3]  # no more frames than the count: all
    # 4 of 10: edges int(linspace(0, 10, 5)) = 0 2 5 7 10 -> ranges (0,1) (2,4) (5,6) (7,9) -> middles 0 3 5 8
    assert sample_frame_files(files, FrameSampling(2, 4, "middle"), None) == [files[0], files[3], files[5], files[8]]
    with pytest.raises(ValueError):
        FrameSampling(5, 4)


def test_mp4_frames_decode_in_order(tmp_path):
    from finetune.video import FrameSampling, count_frames, read_video_frames

    clip = write_mp4(tmp_path / "c.mp4")
    assert count_frames(clip) == N_FRAMES
    frames = read_video_frames(clip, FrameSampling(4, 4, "middle"), None)
    assert [level(f) for f in frames] == [1, 4, 7, 10] and frames[0].size == (64, 48) and frames[0].mode == "RGB"
    frames = read_video_frames(write_mp4(tmp_path / "short.mp4", n=3), FrameSampling(5, 5, "middle"), None)
    assert [level(f) for f in frames] == [0, 1, 2, 2, 2]


def test_video_sample_builds_frame_prompt_and_one_tile_per_frame(tiny_checkpoint, video_data):
    from finetune.data import check_data
    from finetune.preprocess import build_example
    from finetune.video import FrameSampling
    from ivl_ros.model.prompt import IMG_START
    from ivl_ros.model.spec import load_spec

    _, spec, tok = load_spec(tiny_checkpoint)
    report = check_data(video_data, decode=True)
    assert not report.problems, report.problems
    mp4, short, folder, listed, image = report.samples
    assert mp4.kind == short.kind == folder.kind == listed.kind == "video" and mp4.video_file is not None
    sampling = FrameSampling(2, 5, "rand")
    for seed in range(4):
        ex = build_example(mp4, tok, spec, 6, 4096, random.Random(seed), sampling)
        n = ex.pixel_values.shape[0]
        assert 2 <= n <= 5 and ex.num_tiles == [1] * n  # one 448x448 tile per frame
        text = tok.decode(ex.input_ids, skip_special_tokens=False)
        lines = [f"Frame{i + 1}: " for i in range(n)]
        assert all(line in text for line in lines) and f"Frame{n + 1}:" not in text
        assert ex.input_ids.count(tok.token_to_id(IMG_START)) == n
        assert ex.input_ids.count(spec.image_token_id) == n * spec.tokens_per_tile
        assert "<video>" not in text
    # without <video> in the question the frames go first, as upstream prepends "<video>\n"
    ex = build_example(short, tok, spec, 6, 4096, None, FrameSampling(4, 4, "middle"))
    assert ex.pixel_values.shape[0] == 4  # 3 frames: the last repeats up to the drawn count
    assert tok.decode(ex.input_ids, skip_special_tokens=False).index("Frame1:") < tok.decode(
        ex.input_ids, skip_special_tokens=False
    ).index("What moves?")
    assert build_example(folder, tok, spec, 6, 4096, random.Random(0), FrameSampling(3, 3)).pixel_values.shape[0] == 3
    assert build_example(listed, tok, spec, 6, 4096, random.Random(0), FrameSampling(8, 8)).pixel_values.shape[0] == 2
    same = [build_example(mp4, tok, spec, 6, 4096, random.Random(7), sampling).pixel_values for _ in range(2)]
    assert np.array_equal(*same)  # the frames are a function of the sample's RNG


def test_trains_two_steps_on_mp4_samples(tmp_path, tiny_checkpoint, video_data):
    from finetune.lora import main

    out = tmp_path / "run"
    assert (
        main(
            train_args(
                video_data,
                tiny_checkpoint,
                out,
                "--batch-size",
                "2",
                "--per-device-batch-size",
                "1",
                "--max-steps",
                "2",
                "--min-num-frames",
                "2",
                "--max-num-frames",
                "4",
            )
        )
        == 0
    )
    rows = (out / "train_log.csv").read_text().splitlines()
    assert len(rows) == 3 and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "ivl_finetune.json").read_text())["config"]
    assert (config["min_num_frames"], config["max_num_frames"], config["video_sampling"]) == (2, 4, "rand")


def test_check_data_reports_unreadable_and_empty_videos(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    write_mp4(root / "ok.mp4")
    (root / "garbage.mp4").write_bytes(bytes(range(256)) * 40)
    (root / "empty.mp4").write_bytes(b"")
    lines = [{"video": name, "conversations": CONV} for name in ("ok.mp4", "garbage.mp4", "empty.mp4", "gone.mp4")]
    lines.append({"video": "ok.mp4", "conversations": [{"from": "human", "value": "<image>\nWhat?"}, CONV[1]]})
    ann = root / "v.jsonl"
    ann.write_text("".join(json.dumps(x) + "\n" for x in lines))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"v": {"root": str(root), "annotation": str(ann)}}))
    res = subprocess.run(
        [sys.executable, "finetune/lora.py", "--data", str(meta), "--check-data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr, res.stderr[-2000:]
    problems = {int(line.split(":")[1]): line for line in res.stdout.splitlines() if line.startswith(f"{ann}:")}
    assert sorted(problems) == [2, 3, 4, 5], res.stdout
    assert "cannot read video garbage.mp4" in problems[2]
    assert "video file is empty (0 bytes): empty.mp4" in problems[3]
    assert "missing video: gone.mp4" in problems[4]
    assert "<image> tags in a video-file sample" in problems[5]
    assert "1 valid" in res.stderr
