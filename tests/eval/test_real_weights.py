"""Real-weights mode: InternVL2-2B on the Karpathy COCO test split must reach the published CIDEr (minus 1.0).

Runs only with IVL_MODEL (an InternVL2-2B checkpoint) and COCO_ROOT (upstream's data/coco layout:
annotations/coco_karpathy_test.json + coco_karpathy_test_gt.json, val2014/). 5000 images: meant for a GPU
(IVL_DEVICE, default cuda when available). IVL_EVAL_OUT keeps the captions so an interrupted run resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PUBLISHED_CIDER = 79.3  # zero-shot InternVL2-2B, Karpathy test, --dynamic, max 6 tiles (figure from issue 7)
MARGIN = 1.0


def test_internvl2_2b_karpathy_test_cider(tmp_path):
    model, coco = os.environ.get("IVL_MODEL"), os.environ.get("COCO_ROOT")
    if not model or not coco:
        pytest.skip("real-weights mode: set IVL_MODEL=/path/to/InternVL2-2B and COCO_ROOT=/path/to/data/coco")
    ann = Path(coco) / "annotations" / "coco_karpathy_test.json"
    if not ann.is_file():
        pytest.skip(f"{ann} not found (COCO_ROOT must hold annotations/coco_karpathy_test.json and val2014/)")
    import torch

    from ivl_ros.eval.caption_eval import evaluate_captions
    from ivl_ros.model.engine import VisionLanguageEngine

    device = os.environ.get("IVL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "float32" if device == "cpu" else "bfloat16"  # upstream evaluates in bf16 on GPU
    engine = VisionLanguageEngine.load(model, device=device, dtype=dtype)
    out = Path(os.environ.get("IVL_EVAL_OUT") or tmp_path / "karpathy")
    metrics = evaluate_captions(engine, coco, ann, out, max_tiles=6)
    cider = 100.0 * metrics["CIDEr"]  # upstream reports CIDEr x 100
    assert metrics["num_images"] == 5000
    assert cider >= PUBLISHED_CIDER - MARGIN, f"CIDEr {cider:.1f} < {PUBLISHED_CIDER} - {MARGIN} (see {out})"
