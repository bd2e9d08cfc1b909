"""Episode recorder: procedural scenes -> rendered episodes -> InternVL finetuning data (upstream jsonl + meta)
plus a held-out split on different scenes, also written in COCO caption format for caption evaluation.

Layout under ``out``::

    scene_datasets/ivl_gen/{split}_scene_NNN.glb (+ .scene.json, .navmap.npy)
    episodes/objectnav/{split}/{split}.json.gz          ObjectNav-v1, scene ids under data/scene_datasets/
    images/{split}/{scene}/epNNNN_fKK.png
    annotations/{split}_{caption,objnav_qa,trajectory}.jsonl
    frames_{split}.jsonl                                 per-frame pose + visible objects (for checking)
    meta.json, heldout_meta.json                         upstream meta: {name: {root, annotation, ...}}
    heldout_coco.json                                    COCO captions: images + several references each
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from habitat_sim_bridge import captions as cap
from habitat_sim_bridge.episodes import write_json
from habitat_sim_bridge.scenegen import export_scene, generate_scene, make_objectnav_episodes, objectnav_dataset_json

DEFAULT_OUT = "data/habitat"
SCENE_PREFIX = "data/scene_datasets/ivl_gen"
SPLIT_SALT = {"train": 0, "heldout": 1}  # different seeds -> different scenes for the held-out split


@dataclass
class RecordConfig:
    out: str = DEFAULT_OUT
    num_episodes: int = 8
    frames_per_episode: int = 4
    seed: int = 0
    heldout_episodes: int | None = None  # default: a quarter of num_episodes, at least 2
    episodes_per_scene: int = 3
    width: int = 320
    height: int = 240
    coco_refs: int = 4
    progress: bool = True


def _pick(n_points: int, k: int) -> list[int]:
    """``k`` indices spread evenly over a path, last point (facing the goal) included."""
    if n_points <= k:
        return list(range(n_points))
    return sorted({round(i * (n_points - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n_points - 1]


def _sample(sample_id: str, images: list[str], question: str, answer: str) -> dict:
    if len(images) == 1:
        human = "<image>\n" + question
        image: str | list[str] = images[0]
    else:  # upstream's multi-image convention: numbered <image> placeholders in the first human turn
        human = "".join(f"Image-{i + 1}: <image>\n" for i in range(len(images))) + question
        image = images
    return {
        "id": sample_id,
        "image": image,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": answer}],
    }


CAPTION_PROMPTS = [
    # Upstream's caption-eval prompt first: `ivl caption` and the captioner node send exactly this.
    "Provide a one-sentence caption for the provided image.",
    "Describe what the robot sees in one sentence.",
    "What is in front of the robot?",
    "Write a short caption for this view.",
    "Briefly describe this image.",
    "What objects are visible from here?",
]


def _record_split(cfg: RecordConfig, split: str, n_episodes: int, out: Path) -> dict:
    """Render one split; returns the annotation lists and COCO entries."""
    from habitat_sim_bridge.sources.mesh import MeshSource

    rng = np.random.default_rng([cfg.seed, SPLIT_SALT[split]])
    n_scenes = max(1, math.ceil(n_episodes / cfg.episodes_per_scene))
    scenes_dir = out / "scene_datasets" / "ivl_gen"
    per_scene = []
    plan = []  # (scene, glb, episodes)
    remaining = n_episodes
    for i in range(n_scenes):
        name = f"{split}_scene_{i:03d}"
        scene = generate_scene(name, rng)
        glb = export_scene(scene, scenes_dir, seed=cfg.seed * 1000 + i)
        want = min(cfg.episodes_per_scene, remaining)
        eps, goals = make_objectnav_episodes(scene, f"{SCENE_PREFIX}/{glb.name}", rng, want)
        remaining -= len(eps)
        per_scene.append((eps, goals))
        plan.append((scene, glb, eps))
    dataset = objectnav_dataset_json(per_scene)
    write_json(dataset, out / "episodes" / "objectnav" / split / f"{split}.json.gz")

    result: dict[str, list] = {
        "caption": [],
        "objnav_qa": [],
        "trajectory": [],
        "frames": [],
        "coco_images": [],
        "coco_annotations": [],
    }
    total = sum(len(eps) for _, _, eps in plan)
    bar = _progress(total, f"render {split}", cfg.progress)
    for scene, glb, eps in plan:
        source = MeshSource(glb, width=cfg.width, height=cfg.height)
        try:
            for ep in eps:
                _record_episode(cfg, split, scene, source, ep, out, result)
                bar.update(1)
        finally:
            source.close()
    bar.close()
    return result


def _record_episode(cfg, split, scene, source, ep, out: Path, result: dict) -> None:
    eid = int(ep["episode_id"])
    points = ep["shortest_paths"][0]
    frames, rels = [], []
    for k, idx in enumerate(_pick(len(points), cfg.frames_per_episode)):
        p = points[idx]
        frame = source.render(p["position"], p["rotation"])
        rel = f"{split}/{scene.name}/ep{eid:04d}_f{k:02d}.png"
        path = out / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame.rgb).save(path, optimize=False)
        frames.append(frame)
        rels.append(rel)
        # per-frame generators keep the text stable when budgets of other episodes change
        frng = np.random.default_rng([cfg.seed, SPLIT_SALT[split], eid, k])
        sid = f"{scene.name}_ep{eid:04d}_f{k:02d}"
        texts = cap.captions(frame, frng, scene.room_type, n=max(1, cfg.coco_refs))
        prompt = CAPTION_PROMPTS[int(frng.integers(len(CAPTION_PROMPTS)))]
        result["caption"].append(_sample(f"{sid}_caption", [rel], prompt, texts[0]))
        q, a = cap.objectnav_qa(frame, frng)
        result["objnav_qa"].append(_sample(f"{sid}_qa", [rel], q, a))
        seen = cap.visible_objects(frame)
        result["frames"].append(
            {
                "image": rel,
                "scene": scene.name,
                "room_type": scene.room_type,
                "episode_id": eid,
                "position": p["position"],
                "rotation": p["rotation"],
                "visible": [
                    {
                        "instance_id": s.instance_id,
                        "category": s.category,
                        "color": s.color,
                        "side": s.side,
                        "range": s.range,
                        "fraction": round(s.fraction, 4),
                    }
                    for s in seen
                ],
            }
        )
        image_id = len(result["coco_images"]) + 1
        result["coco_images"].append({"id": image_id, "file_name": rel, "width": cfg.width, "height": cfg.height})
        for text in texts:
            result["coco_annotations"].append(
                {"id": len(result["coco_annotations"]) + 1, "image_id": image_id, "caption": text}
            )
    if len(frames) >= 2:
        trng = np.random.default_rng([cfg.seed, SPLIT_SALT[split], eid, 999])
        chosen = list(range(len(frames)))[-4:]
        q, a = cap.trajectory_qa([frames[i] for i in chosen], ep["object_category"], trng)
        result["trajectory"].append(_sample(f"{scene.name}_ep{eid:04d}_traj", [rels[i] for i in chosen], q, a))


class _NullBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return _NullBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="episode")


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _meta(out: Path, split: str, result: dict) -> dict:
    """Upstream InternVL meta entries. Paths are relative to the meta file's folder, so the whole output folder
    can be moved; the project's finetune data reader resolves them against that folder first."""
    meta = {}
    for kind in ("caption", "objnav_qa", "trajectory"):
        rows = result[kind]
        if not rows:
            continue
        name = f"habitat_{kind}" if split == "train" else f"habitat_{split}_{kind}"
        meta[name] = {
            "root": "images/",
            "annotation": f"annotations/{split}_{kind}.jsonl",
            "data_augment": False,
            "repeat_time": 1,
            "length": len(rows),
        }
    return meta


def record(cfg: RecordConfig) -> dict[str, Path]:
    """Generate, render and write everything; returns the paths of the main outputs."""
    if cfg.num_episodes < 1 or cfg.frames_per_episode < 1:
        from habitat_sim_bridge.errors import BridgeError

        raise BridgeError(
            f"--num-episodes and --frames-per-episode must be >= 1, got {cfg.num_episodes} and {cfg.frames_per_episode}"
        )
    out = Path(cfg.out)
    heldout_n = cfg.heldout_episodes if cfg.heldout_episodes is not None else max(2, cfg.num_episodes // 4)
    paths: dict[str, Path] = {}
    for split, n in (("train", cfg.num_episodes), ("heldout", heldout_n)):
        if n <= 0:
            continue
        result = _record_split(cfg, split, n, out)
        for kind in ("caption", "objnav_qa", "trajectory"):
            _write_jsonl(result[kind], out / "annotations" / f"{split}_{kind}.jsonl")
        _write_jsonl(result["frames"], out / f"frames_{split}.jsonl")
        meta_path = out / ("meta.json" if split == "train" else f"{split}_meta.json")
        meta_path.write_text(json.dumps(_meta(out, split, result), indent=2) + "\n")
        paths[f"{split}_meta"] = meta_path
        if split == "heldout":
            coco = {
                "info": {"description": "ivl_ros habitat held-out captions", "image_root": "images/"},
                "images": result["coco_images"],
                "annotations": result["coco_annotations"],
                "type": "captions",
                "licenses": [],
            }
            paths["heldout_coco"] = out / "heldout_coco.json"
            paths["heldout_coco"].write_text(json.dumps(coco, indent=1) + "\n")
    return paths
