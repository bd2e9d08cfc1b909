"""Caption a COCO-style image set with the engine and score it (upstream ``caption-coco`` equivalent).

Outputs in ``out_dir``:

* ``captions.jsonl`` — one line per captioned image, appended (and flushed) as soon as it is produced, so
  an interrupted run resumes where it stopped; ``run.json`` records what produced them, so captions of a
  different model or setting are never mixed in;
* ``results.json`` — ``[{"image_id", "caption"}]`` (COCO results format);
* ``metrics.json`` — BLEU-1..4, METEOR, ROUGE_L, CIDEr, SPICE (null + reason offline), average caption
  length in words, images/s, model id and settings;
* ``report.html`` + ``thumbs/`` — a grid of images with predicted and reference captions and per-image CIDEr.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from ivl_ros.errors import IvlError
from ivl_ros.eval.coco_data import CaptionDataset, load_caption_dataset
from ivl_ros.eval.report import write_report
from ivl_ros.eval.scoring import CaptionScores, require_java, score_captions

CAPTIONS_FILE = "captions.jsonl"
RUN_FILE = "run.json"


class CaptionEngine(Protocol):
    model_id: str

    def caption(self, image: Any, *, max_tiles: int | None = 6) -> Any: ...


def caption_settings(max_tiles: int, backend: str) -> dict:
    """What decides the captions (compared on resume, recorded in metrics.json)."""
    from ivl_ros.model.engine import CAPTION_PROMPT, CAPTION_SETTINGS

    gen = asdict(CAPTION_SETTINGS)
    return {
        "prompt": CAPTION_PROMPT,
        "max_tiles": max_tiles,
        "dynamic": True,
        "backend": backend,
        "num_beams": 1,
        **{k: gen[k] for k in ("max_new_tokens", "min_new_tokens", "do_sample")},
    }


def read_done(out_dir: Path) -> dict[int, dict]:
    """Captions already recorded in ``out_dir`` (a line cut short by an interruption is dropped)."""
    path = out_dir / CAPTIONS_FILE
    if not path.is_file():
        return {}
    done: dict[int, dict] = {}
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    bad = 0
    for line in lines:
        try:
            rec = json.loads(line)
            done[int(rec["image_id"])] = rec
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            bad += 1
    if bad or (text and not text.endswith("\n")):
        # Rewrite without the broken tail so that later appends start on a fresh line.
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done.values()), encoding="utf-8")
        os.replace(tmp, path)
    return done


def _check_run(out_dir: Path, identity: dict) -> None:
    path = out_dir / RUN_FILE
    if path.is_file() and (out_dir / CAPTIONS_FILE).is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
        if previous != identity:
            diff = sorted(k for k in set(identity) | set(previous or {}) if (previous or {}).get(k) != identity.get(k))
            raise IvlError(
                f"{out_dir} holds captions from a different run (differs in: {', '.join(diff)}); "
                f"use another --out directory or delete {out_dir / CAPTIONS_FILE}"
            )
    path.write_text(json.dumps(identity, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def caption_images(
    engine: CaptionEngine, dataset: CaptionDataset, out_dir: Path, max_tiles: int, progress: bool = True
) -> tuple[dict[int, dict], int]:
    """Caption every image not yet in ``captions.jsonl``; returns (all records, number captioned now)."""
    done = read_done(out_dir)
    todo = [img for img in dataset.images if img.image_id not in done]
    with (
        (out_dir / CAPTIONS_FILE).open("a", encoding="utf-8") as f,
        tqdm(
            total=len(dataset.images),
            initial=len(dataset.images) - len(todo),
            desc="captioning",
            unit="img",
            disable=not progress,
        ) as bar,
    ):
        for img in todo:
            start = time.perf_counter()
            ans = engine.caption(img.path, max_tiles=max_tiles)
            rec = {
                "image_id": img.image_id,
                "file": img.file,
                "caption": ans.answer,
                "num_tiles": ans.num_tiles,
                "num_tokens": len(ans.token_ids),
                "seconds": round(time.perf_counter() - start, 4),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a crash right after must not lose this image's (possibly minutes of) work
            done[img.image_id] = rec
            bar.update(1)
    return done, len(todo)


def build_metrics(
    scores: CaptionScores,
    records: list[dict],
    model_id: str,
    settings: dict,
    dataset: CaptionDataset,
    images_root: Path,
) -> dict:
    seconds = sum(float(r.get("seconds", 0.0)) for r in records)
    return {
        **scores.to_json(),
        "spice": {"available": scores.spice.available, "reason": scores.spice.reason},
        "num_images": len(records),
        "avg_caption_words": sum(len(r["caption"].split()) for r in records) / len(records),
        "images_per_s": len(records) / seconds if seconds > 0 else None,
        "caption_seconds": round(seconds, 3),
        "model_id": model_id,
        "settings": settings,
        "annotations": str(dataset.annotations),
        "annotation_format": dataset.source,
        "images_root": str(images_root),
        "tokenizer": "PTB" if scores.tokenized else "none",
        "notes": scores.notes,
    }


def evaluate_captions(
    engine: CaptionEngine,
    images_root: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    max_tiles: int = 6,
    limit: int | None = None,
    backend: str = "torch",
    *,
    gt: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Caption (resumably), score and report; returns the metrics dict also written to ``metrics.json``."""
    require_java()  # fail before captioning, not after an hour of it
    images_root = Path(images_root)
    out = Path(out_dir)
    dataset = load_caption_dataset(annotations, images_root, gt=gt, limit=limit)
    out.mkdir(parents=True, exist_ok=True)
    settings = caption_settings(max_tiles, backend)
    _check_run(out, {"model_id": engine.model_id, **settings})

    done, new = caption_images(engine, dataset, out, max_tiles, progress)
    if log:
        log(f"captioned {new} image(s), {len(dataset.images) - new} resumed from {out / CAPTIONS_FILE}")
    records = [done[img.image_id] for img in dataset.images]
    results = [{"image_id": r["image_id"], "caption": r["caption"]} for r in records]
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    scores = score_captions(dataset.references, {r["image_id"]: r["caption"] for r in records}, tokenize=True)
    metrics = build_metrics(scores, records, engine.model_id, settings, dataset, images_root)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_report(out, dataset, records, scores, metrics)
    return metrics
