"""Demonstration that finetune/lora.py learns: a tiny InternVL2-architecture model, captions before/after.

Builds the tiny random checkpoint, a generated caption set (finetune/synthetic.py: coloured shapes, three
references per image) and a held-out set with other images, trains LoRA (+ the MLP projector) with
finetune/lora.py, merges with finetune/merge.py, captions the held-out images with the project's engine and
scores them with the project's COCO caption evaluation (ivl_ros.eval.scoring; CIDEr, BLEU, ...).

    python benchmarks/finetune_learns.py [--out benchmarks/results/finetune_tiny_caption.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from finetune.synthetic import make_caption_dataset, references


def caption_all(model_dir: Path, items) -> dict[int, str]:
    from ivl_ros.model.engine import VisionLanguageEngine

    engine = VisionLanguageEngine.load(model_dir)
    return {i: engine.caption(str(path)).answer for i, (path, *_rest) in enumerate(items)}


def score(items, preds: dict[int, str]) -> dict:
    from ivl_ros.eval.scoring import score_captions

    refs = {i: references(c, s, p) for i, (_path, c, s, p) in enumerate(items)}
    return score_captions(refs, preds, spice=False).to_json()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/finetune_tiny_caption.json")
    ap.add_argument("--train", type=int, default=240)
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    args = ap.parse_args()
    from finetune.lora import main as lora_main
    from finetune.merge import merge_adapter
    from ivl_ros.model.tiny import make_tiny_checkpoint

    work = Path(args.work or tempfile.mkdtemp(prefix="ft-learns-"))
    base = make_tiny_checkpoint(work / "tiny", seed=0)
    train = make_caption_dataset(work / "train", args.train, seed=1)
    held = make_caption_dataset(work / "heldout", args.heldout, seed=2)["items"]

    t0 = time.perf_counter()
    before = caption_all(base, held)
    scores_before = score(held, before)
    cmd = [
        "--data",
        str(train["meta"]),
        "--model",
        str(base),
        "--output-dir",
        str(work / "run"),
        "--lora-r",
        "64",
        "--unfreeze-mlp",
        "--learning-rate",
        "2e-3",
        "--epochs",
        str(args.epochs),
        "--batch-size",
        "8",
        "--per-device-batch-size",
        "8",
        "--save-steps",
        "100000",
        "--warmup-ratio",
        "0.03",
    ]
    t_train = time.perf_counter()
    rc = lora_main(cmd)
    t_train = time.perf_counter() - t_train
    if rc != 0:
        print(f"training failed with exit code {rc}", file=sys.stderr)
        return rc
    merged = merge_adapter(work / "run", work / "merged")
    after = caption_all(merged, held)
    scores_after = score(held, after)
    log = (work / "run" / "train_log.csv").read_text().splitlines()
    result = {
        "what": "tiny InternVL2-architecture model (random init) finetuned with finetune/lora.py on a generated "
        "shapes caption set; held-out images scored with ivl_ros.eval.scoring (COCO caption metrics)",
        "command": "python finetune/lora.py " + " ".join(cmd),
        "train_samples": args.train,
        "heldout_samples": args.heldout,
        "epochs": args.epochs,
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "before": scores_before,
        "after": scores_after,
        "first_loss": float(log[1].split(",")[2]),
        "last_loss": float(log[-1].split(",")[2]),
        "examples": [
            {"references": references(c, s, p), "before": before[i], "after": after[i]}
            for i, (_path, c, s, p) in list(enumerate(held))[:5]
        ],
        "host": platform.node(),
        "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"CIDEr before {scores_before['CIDEr']:.3f} -> after {scores_after['CIDEr']:.3f}; written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
