"""Recorder: upstream InternVL jsonl + meta, COCO held-out split on different scenes, determinism."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from habitat_sim_bridge.episodes import load_episodes

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, seed: int = 5) -> dict:
    """The CLI in a fresh process: llvmpipe reads its thread count once per process, and the recorder's
    single-thread setting (for byte-identical PNGs) only holds when nothing rendered before it."""
    cmd = [
        sys.executable,
        "-m",
        "habitat_sim_bridge.record",
        "--out",
        str(out),
        "--num-episodes",
        "3",
        "--frames-per-episode",
        "3",
        "--seed",
        str(seed),
        "--heldout-episodes",
        "2",
        "--episodes-per-scene",
        "2",
        "--width",
        "128",
        "--height",
        "96",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "render train" in proc.stderr  # the tqdm progress bar
    return {
        "train_meta": out / "meta.json",
        "heldout_meta": out / "heldout_meta.json",
        "heldout_coco": out / "heldout_coco.json",
    }


@pytest.fixture(scope="module")
def recorded(needs_osmesa, tmp_path_factory):
    base = tmp_path_factory.mktemp("rec")
    return base, _run(base / "a"), _run(base / "b")


def _files(root: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in suffixes}


def test_same_seed_same_data(recorded):
    base, _, _ = recorded
    text_a, text_b = (_files(base / x, (".jsonl", ".gz", ".json", ".npy", ".glb")) for x in "ab")
    assert text_a == text_b and len(text_a) > 10  # annotations, episodes, scenes: byte-identical
    png_a, png_b = (_files(base / x, (".png",)) for x in "ab")
    assert png_a.keys() == png_b.keys() and len(png_a) == 5 * 3
    for name in png_a:
        a = np.asarray(Image.open(io.BytesIO(png_a[name])), dtype=np.int16)
        b = np.asarray(Image.open(io.BytesIO(png_b[name])), dtype=np.int16)
        # llvmpipe's float shading can flip the last bit of a rare pixel between processes
        diff = np.abs(a - b)
        assert diff.max() <= 2 and (diff.sum(axis=2) > 0).mean() < 1e-3, name


def test_meta_and_jsonl_follow_upstream_format(recorded):
    base, paths, _ = recorded
    meta = json.loads(paths["train_meta"].read_text())
    root = paths["train_meta"].parent  # entries are relative to the meta file's folder
    assert set(meta) == {"habitat_caption", "habitat_objnav_qa", "habitat_trajectory"}
    for entry in meta.values():
        assert set(entry) == {"root", "annotation", "data_augment", "repeat_time", "length"}
        assert entry["data_augment"] is False and entry["repeat_time"] == 1
        rows = [json.loads(line) for line in (root / entry["annotation"]).read_text().splitlines()]
        assert len(rows) == entry["length"] > 0
        for row in rows:
            assert set(row) == {"id", "image", "conversations"}
            human, gpt = row["conversations"]
            assert human["from"] == "human" and gpt["from"] == "gpt" and gpt["value"].strip()
            images = row["image"] if isinstance(row["image"], list) else [row["image"]]
            for rel in images:
                assert not Path(rel).is_absolute() and (root / entry["root"] / rel).is_file()
            if isinstance(row["image"], list):
                assert human["value"].startswith("".join(f"Image-{i + 1}: <image>\n" for i in range(len(images))))
            else:
                assert human["value"].startswith("<image>\n")
            assert human["value"].count("<image>") == len(images)
    ids = [json.loads(line)["id"] for e in meta.values() for line in (root / e["annotation"]).read_text().splitlines()]
    assert len(ids) == len(set(ids))


def test_captions_agree_with_ground_truth(recorded):
    base, _, _ = recorded
    frames = {json.loads(line)["image"]: json.loads(line) for line in (base / "a" / "frames_train.jsonl").open()}
    rows = [json.loads(line) for line in (base / "a" / "annotations" / "train_caption.jsonl").open()]
    words = {
        "chair": "chair",
        "sofa": "sofa",
        "table": "table",
        "bed": "bed",
        "plant": "plant",
        "tv": "TV",
        "cabinet": "cabinet",
        "lamp": "lamp",
        "bookshelf": "bookshel",
    }
    mentions = 0
    for row in rows:
        text = row["conversations"][1]["value"]
        visible = {v["category"] for v in frames[row["image"]]["visible"]}
        for cat, word in words.items():
            if re.search(rf"\b{word}", text):
                mentions += 1
                assert cat in visible, (text, visible)  # never mentions what is not in view
        if not visible:
            assert "No furniture" in text or "wall" in text or "floor" in text or "carpet" in text
    # measured: 13 mentions in the 9 captions of this recording
    assert mentions >= len(rows) // 2, f"only {mentions} furniture mentions in {len(rows)} captions"


def test_heldout_split_uses_other_scenes_and_coco(recorded):
    base, paths, _ = recorded
    root = base / "a"
    train = load_episodes(root / "episodes/objectnav/train/train.json.gz")
    held = load_episodes(root / "episodes/objectnav/heldout/heldout.json.gz", scenes_dir=str(root / "scene_datasets"))
    assert not set(train.scene_ids) & set(held.scene_ids)
    assert all(Path(s).is_file() for s in held.scene_ids)
    coco = json.loads(paths["heldout_coco"].read_text())
    assert {"images", "annotations"} <= set(coco)
    ids = {im["id"] for im in coco["images"]}
    assert len(ids) == len(coco["images"]) == 2 * 3
    per_image = {i: 0 for i in ids}
    for ann in coco["annotations"]:
        assert set(ann) >= {"id", "image_id", "caption"} and ann["image_id"] in ids
        per_image[ann["image_id"]] += 1
    assert min(per_image.values()) >= 1 and sum(per_image.values()) > len(ids)  # several references where possible
    for im in coco["images"]:
        assert (root / "images" / im["file_name"]).is_file() and im["file_name"].startswith("heldout/")
    held_meta = json.loads(paths["heldout_meta"].read_text())
    assert all(k.startswith("habitat_heldout_") for k in held_meta)


def test_cli_rejects_bad_budget(tmp_path, capsys):
    from habitat_sim_bridge.record import main

    assert main(["--out", str(tmp_path), "--num-episodes", "0", "--no-progress"]) == 2
    assert "--num-episodes" in capsys.readouterr().err


def test_finetune_data_checker_accepts_it(recorded):
    """The project's finetune checker (when present in this checkout) validates the recorded data."""
    data = pytest.importorskip("finetune.data", reason="finetune/data.py is not in this checkout")
    _, paths, _ = recorded
    for key in ("train_meta", "heldout_meta"):
        report = data.check_data(paths[key])
        assert not report.problems, [str(p) for p in report.problems]


def test_lora_trains_on_recorded_data_by_name(recorded, tiny_checkpoint, tmp_path):
    """The CI path of issue 5: bridge data -> `finetune/lora.py --data habitat` (name resolved by the registry),
    with the base model from the project's default-model rule ($IVL_MODEL; no --model), as on a fresh clone."""
    _, paths, _ = recorded
    registry = tmp_path / "datasets.json"
    registry.write_text(json.dumps({"habitat": str(paths["train_meta"])}))
    env = dict(os.environ, IVL_DATASETS=str(registry), OMP_NUM_THREADS="1", IVL_MODEL=str(tiny_checkpoint))
    lora = [sys.executable, "finetune/lora.py", "--data", "habitat"]
    check = subprocess.run([*lora, "--check-data"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    out = tmp_path / "run"
    train = subprocess.run(
        [
            *lora,
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "--lora-r",
            "8",
            "--batch-size",
            "2",
            "--per-device-batch-size",
            "2",
            "--device",
            "cpu",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert json.loads((out / "ivl_finetune.json").read_text())["base_model"] == str(tiny_checkpoint.resolve())
