"""The regression helper: verdicts against a baseline CIDEr."""

from __future__ import annotations

import json

import pytest

from ivl_ros.errors import IvlError
from ivl_ros.eval.regression import baseline_cider, check_caption_regression, compare_cider


def test_compare_cider_verdicts():
    ok = compare_cider(0.97, 1.00, tolerance=0.05)
    assert ok.passed and str(ok).startswith("PASS: CIDEr 0.9700 vs baseline 1.0000 (-0.0300")
    bad = compare_cider(0.90, 1.00, tolerance=0.05)
    assert not bad.passed and "FAIL" in bad.message and "floor 0.9500" in bad.message
    assert compare_cider(2.0, 1.0).passed


def test_baseline_needs_numeric_cider(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"CIDEr": None}))
    with pytest.raises(IvlError, match="needs a numeric 'CIDEr'"):
        baseline_cider(path)


def test_check_caption_regression_scores_against_reference_file(coco_sample, tmp_path):
    refs = coco_sample / "captions.json"
    baseline = tmp_path / "metrics.json"
    baseline.write_text(json.dumps({"CIDEr": 0.5}))
    preds = [(184321, "A blue train next to a train station."), (324158, "A man riding a skateboard with a dog.")]
    verdict = check_caption_regression(preds, refs, baseline)
    assert verdict.passed and verdict.cider > 0.5, verdict.message
    with pytest.raises(IvlError, match="1 image\\(s\\) of .*captions.json have no prediction: 324158"):
        check_caption_regression(preds[:1], refs, baseline)
