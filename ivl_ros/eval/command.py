"""``ivl eval-caption``: caption a COCO/Karpathy image set, score it offline and write a report.

Registered by ``ivl_ros/cli.py`` (PLUGIN_COMMANDS); this module only adds its parser and runs it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ivl_ros.errors import OptionError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval-caption", help="COCO caption evaluation (upstream caption-coco settings) with an HTML report",
        description="Caption every image of a Karpathy list (coco_karpathy_test.json + its _gt.json) or a COCO "
                    "caption annotation file, score BLEU/METEOR/ROUGE_L/CIDEr offline (Java needed), and write "
                    "results.json, metrics.json and report.html to --out. Rerunning with the same --out resumes.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint directory")
    p.add_argument("--images", type=Path, required=True, help="image root (Karpathy: the folder holding val2014/)")
    p.add_argument("--annotations", type=Path, required=True,
                   help="coco_karpathy_test.json or a COCO caption annotation file")
    p.add_argument("--gt", type=Path, help="COCO-format ground truth for a Karpathy list "
                   "(default: <annotations stem>_gt.json next to it)")
    p.add_argument("--max-tiles", type=_positive_int, default=6, help="maximum dynamic tiles (default 6, upstream)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "trt"])
    p.add_argument("--engines", type=Path, help="exported engines directory (for --backend onnx/trt)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--limit", type=_positive_int, help="evaluate only the first N images")
    p.add_argument("--out", type=Path, required=True, help="output directory (reused to resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from ivl_ros.eval.caption_eval import evaluate_captions
    from ivl_ros.eval.coco_data import load_caption_dataset
    from ivl_ros.eval.scoring import require_java
    from ivl_ros.model.engine import VisionLanguageEngine

    if args.max_tiles > 40:
        raise OptionError(f"--max-tiles must be in 1..40, got {args.max_tiles}")
    # Bad inputs fail before the (slow) model load; evaluate_captions reads the annotations again (cheap).
    require_java()
    load_caption_dataset(args.annotations, args.images, gt=args.gt, limit=args.limit)
    engine = VisionLanguageEngine.load(args.model, backend=args.backend, device=args.device, dtype=args.dtype,
                                       engines_path=args.engines)
    metrics = evaluate_captions(engine, args.images, args.annotations, args.out, max_tiles=args.max_tiles,
                                limit=args.limit, backend=args.backend, gt=args.gt, progress=not args.no_progress,
                                log=lambda msg: print(msg, file=sys.stderr))
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"))
    spice = "n/a (" + metrics["spice"]["reason"] + ")" if metrics["SPICE"] is None else f"{metrics['SPICE']:.4f}"
    print(f"{metrics['num_images']} images: {shown}, SPICE {spice}")
    rate = metrics["images_per_s"]
    print(f"avg caption {metrics['avg_caption_words']:.2f} words, "
          f"{'n/a' if rate is None else f'{rate:.3f}'} images/s; wrote {args.out}/results.json, metrics.json, "
          "report.html")
    return 0
