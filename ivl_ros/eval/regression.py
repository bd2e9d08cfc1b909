"""Caption regression check: score captions against a committed reference set, compare CIDEr with a baseline.

The baseline file is a ``metrics.json`` written by ``ivl eval-caption`` (any JSON object with a numeric
``CIDEr`` works). Regenerate it by running ``ivl eval-caption`` on the regression set and committing its
``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ivl_ros.errors import IvlError
from ivl_ros.eval.coco_data import coco_references, read_json
from ivl_ros.eval.scoring import score_captions

DEFAULT_TOLERANCE = 0.05  # absolute CIDEr drop allowed below the baseline


@dataclass
class RegressionVerdict:
    passed: bool
    cider: float
    baseline: float
    tolerance: float
    message: str

    def __str__(self) -> str:
        return self.message


def baseline_cider(baseline: str | Path | dict) -> float:
    """The CIDEr of a baseline metrics file (or already-parsed dict)."""
    data = baseline if isinstance(baseline, dict) else read_json(baseline, "baseline metrics file")
    value = data.get("CIDEr") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise IvlError(
            f"{baseline if not isinstance(baseline, dict) else 'baseline'}: needs a numeric 'CIDEr', got {value!r}"
        )
    return float(value)


def compare_cider(cider: float, baseline: float, tolerance: float = DEFAULT_TOLERANCE) -> RegressionVerdict:
    """Pass when ``cider >= baseline - tolerance`` (improvements always pass)."""
    if tolerance < 0:
        raise IvlError(f"tolerance must be >= 0, got {tolerance}")
    floor = baseline - tolerance
    passed = cider >= floor
    delta = cider - baseline
    word = "PASS" if passed else "FAIL"
    how = "within" if passed else "more than"
    message = (
        f"{word}: CIDEr {cider:.4f} vs baseline {baseline:.4f} ({delta:+.4f}; "
        f"{how} the allowed drop of {tolerance:.4f}, floor {floor:.4f})"
    )
    return RegressionVerdict(passed, cider, baseline, tolerance, message)


def check_caption_regression(
    predictions: Iterable[tuple[int, str]],
    references: str | Path,
    baseline: str | Path | dict,
    tolerance: float = DEFAULT_TOLERANCE,
) -> RegressionVerdict:
    """Score ``(image_id, caption)`` pairs against a COCO-format reference file and compare with the baseline.

    Every image of the reference file must be predicted: a missing image would silently change CIDEr's IDF.
    """
    refs_path = Path(references)
    refs = coco_references(read_json(refs_path, "reference file"), refs_path)
    preds = dict(predictions)
    missing = sorted(set(refs) - set(preds))
    if missing:
        raise IvlError(f"{len(missing)} image(s) of {refs_path} have no prediction: {', '.join(map(str, missing[:5]))}")
    scores = score_captions(refs, preds, tokenize=True, spice=False)
    return compare_cider(scores.metrics["CIDEr"], baseline_cider(baseline), tolerance)
