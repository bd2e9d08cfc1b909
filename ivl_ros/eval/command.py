"""``ivl eval-caption``: caption a COCO/Karpathy image set, score it offline and write a report.

Registered by ``ivl_ros/cli.py`` (PLUGIN_COMMANDS); this module only adds its parser and runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ivl_ros.model.options import CAPTION_MAX_TILES, add_max_tiles_option, add_model_options, int_range, load_engine


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-caption",
        help="COCO caption evaluation (upstream caption-coco settings) with an HTML report",
        description="Caption every image of a Karpathy list (coco_karpathy_test.json + its _gt.json) or a COCO "
        "caption annotation file, score BLEU/METEOR/ROUGE_L/CIDEr offline (Java needed), and write "
        "results.json, metrics.json and report.html to --out. Rerunning with the same --out resumes.",
    )
    add_model_options(p)
    p.add_argument("--images", type=Path, required=True, help="image root (Karpathy: the folder holding val2014/)")
    p.add_argument(
        "--annotations", type=Path, required=True, help="coco_karpathy_test.json or a COCO caption annotation file"
    )
    p.add_argument(
        "--gt",
        type=Path,
        help="COCO-format ground truth for a Karpathy list (default: <annotations stem>_gt.json next to it)",
    )
    add_max_tiles_option(p, CAPTION_MAX_TILES, f"{CAPTION_MAX_TILES}, upstream")
    p.add_argument("--limit", type=int_range(1), help="evaluate only the first N images")
    p.add_argument("--out", type=Path, required=True, help="output directory (reused to resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ivl_ros.eval.caption_eval import evaluate_captions
    from ivl_ros.eval.coco_data import load_caption_dataset
    from ivl_ros.eval.scoring import require_java

    # Bad inputs fail before the (slow) model load; evaluate_captions reads the annotations again (cheap).
    require_java()
    load_caption_dataset(args.annotations, args.images, gt=args.gt, limit=args.limit)
    engine = load_engine(args, log=lambda msg: print(f"ivl: {msg}", file=sys.stderr))
    metrics = evaluate_captions(
        engine,
        args.images,
        args.annotations,
        args.out,
        max_tiles=args.max_tiles,
        limit=args.limit,
        backend=args.backend,
        gt=args.gt,
        progress=not args.no_progress,
        log=lambda msg: print(msg, file=sys.stderr),
    )
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"))
    spice = "n/a (" + metrics["spice"]["reason"] + ")" if metrics["SPICE"] is None else f"{metrics['SPICE']:.4f}"
    print(f"{metrics['num_images']} images: {shown}, SPICE {spice}")
    rate = metrics["images_per_s"]
    print(
        f"avg caption {metrics['avg_caption_words']:.2f} words, "
        f"{'n/a' if rate is None else f'{rate:.3f}'} images/s; wrote {args.out}/results.json, metrics.json, "
        "report.html"
    )
    return 0
