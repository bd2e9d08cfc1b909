"""Offline scorer: published nlg-eval numbers, SPICE unavailable without a download, clear input errors."""

from __future__ import annotations

import json
import math
import urllib.request

import pytest

from ivl_ros.errors import IvlError
from ivl_ros.eval import scoring

# Maluuba/nlg-eval README "Example" (examples/hyp.txt vs ref1.txt + ref2.txt, raw strings, no PTB tokenisation).
NLGEVAL_PUBLISHED = {
    "Bleu_1": 0.550000,
    "Bleu_2": 0.428174,
    "Bleu_3": 0.284043,
    "Bleu_4": 0.201143,
    "METEOR": 0.295797,
    "ROUGE_L": 0.522104,
    "CIDEr": 1.242192,
}


def _lines(path):
    return [line.strip() for line in path.read_text().splitlines()]


def test_reproduces_published_nlgeval_scores_and_reports_spice_unavailable(nlgeval, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("scoring tried to download something")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    hyps = _lines(nlgeval / "hyp.txt")
    refs = list(zip(_lines(nlgeval / "ref1.txt"), _lines(nlgeval / "ref2.txt"), strict=True))
    scores = scoring.score_captions({i: list(r) for i, r in enumerate(refs)}, dict(enumerate(hyps)), tokenize=False)

    for name, published in NLGEVAL_PUBLISHED.items():
        assert scores.metrics[name] == pytest.approx(published, abs=1e-6), name
    assert set(scores.per_image["CIDEr"]) == {0, 1}
    assert sum(scores.per_image["CIDEr"].values()) / 2 == pytest.approx(scores.metrics["CIDEr"], abs=1e-9)
    if not scoring.spice_status().available:  # the normal, offline case
        assert math.isnan(scores.metrics["SPICE"])
        assert not scores.spice.available
        assert "CoreNLP 3.6.0" in scores.spice.reason and "offline" in scores.spice.reason
        assert scores.to_json()["SPICE"] is None
    else:  # its jars are installed: SPICE ran and scored, or failed and says why (the other scores stand)
        ran = scores.spice.available and 0.0 <= scores.metrics["SPICE"] <= 1.0
        assert ran or scores.spice.reason.startswith("SPICE failed"), scores.spice


def test_spice_required_but_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(scoring, "spice_status", lambda: scoring.SpiceStatus(False, "SPICE needs CoreNLP (test)"))
    monkeypatch.setattr(scoring, "_meteor_score", lambda gts, res: (0.5, [0.5] * len(gts)))
    with pytest.raises(IvlError, match="SPICE needs CoreNLP"):
        scoring.score_captions({1: ["a cat"]}, {1: "a cat"}, tokenize=False, spice=True)


def test_empty_predictions_are_a_clear_error():
    with pytest.raises(IvlError, match="no predictions to score"):
        scoring.score_captions({1: ["a dog on a couch"]}, {})


def test_prediction_without_references_is_named():
    with pytest.raises(IvlError, match="1 predicted image id.*no reference captions: 7"):
        scoring.score_captions({1: ["a dog"]}, {1: "a dog", 7: "a cat"})


def test_missing_java_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no `java` anywhere on PATH
    with pytest.raises(IvlError, match=r"needs Java.*`java` was not found on PATH.*default-jre-headless"):
        scoring.score_captions({1: ["a dog"]}, {1: "a dog"})


def test_matches_pycocoevalcap_cocoevalcap_on_1000_real_captions(coco_sample, tmp_path, monkeypatch):
    """Our scorer list + PTB path gives exactly what COCO() / loadRes() / COCOEvalCap.evaluate() give
    (SPICE stubbed there, since it cannot run offline): 1000 model captions vs 1 human caption each.
    COCOEvalCap's METEOR talks to our shared METEOR process (same jar and protocol) to save a JVM start (~8 s)."""
    from pycocoevalcap import eval as coco_eval_module
    from pycocoevalcap.eval import COCOEvalCap
    from pycocotools.coco import COCO

    class NoSpice:
        def compute_score(self, gts, res):
            return math.nan, [math.nan] * len(gts)

        def method(self):
            return "SPICE"

    class SharedMeteor:
        def compute_score(self, gts, res):
            return scoring._meteor_score(gts, res)

        def method(self):
            return "METEOR"

    monkeypatch.setattr(coco_eval_module, "Spice", NoSpice)
    monkeypatch.setattr(coco_eval_module, "Meteor", SharedMeteor)
    human = json.loads((coco_sample / "cocoapi_captions_val2014_fakecap_results.json").read_text())
    model = json.loads((coco_sample / "coco-caption_captions_val2014_fakecap_results.json").read_text())
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(
        json.dumps(
            {
                "images": [{"id": r["image_id"]} for r in human],
                "annotations": [{**r, "id": i} for i, r in enumerate(human)],
            }
        )
    )
    coco = COCO(str(gt_file))
    ev = COCOEvalCap(coco, coco.loadRes(str(coco_sample / "coco-caption_captions_val2014_fakecap_results.json")))
    ev.evaluate()

    refs = {r["image_id"]: [r["caption"]] for r in human}
    ours = scoring.score_captions(refs, {r["image_id"]: r["caption"] for r in model}, tokenize=True)
    assert ours.num_images == 1000
    for name in scoring.METRICS:
        assert ours.metrics[name] == pytest.approx(ev.eval[name], abs=1e-9), name
    for image_id in (184321, model[-1]["image_id"]):
        assert ours.per_image["CIDEr"][image_id] == pytest.approx(ev.imgToEval[image_id]["CIDEr"], abs=1e-9)


def _fake_spice(monkeypatch, result):
    from pycocoevalcap.spice import spice as spice_module

    class FakeSpice:
        def compute_score(self, gts, res):
            if isinstance(result, Exception):
                raise result
            return result

    monkeypatch.setattr(scoring, "spice_status", lambda: scoring.SpiceStatus(True))
    monkeypatch.setattr(spice_module, "Spice", FakeSpice)
    monkeypatch.setattr(scoring, "_meteor_score", lambda gts, res: (0.5, [0.5] * len(gts)))  # no JVM needed here


def test_spice_is_computed_when_its_jars_are_present(monkeypatch):
    # SPICE returns per-image scores in sorted image-id order, whatever order they were given in.
    _fake_spice(monkeypatch, (0.25, [{"All": {"f": 0.1}}, {"All": {"f": 0.4}}]))
    scores = scoring.score_captions({2: ["a dog"], 1: ["a cat"]}, {2: "a dog", 1: "a cat"}, tokenize=False)
    assert scores.spice.available and scores.metrics["SPICE"] == 0.25
    assert scores.per_image["SPICE"] == {1: 0.1, 2: 0.4}


def test_spice_failure_keeps_the_other_metrics(monkeypatch):
    _fake_spice(monkeypatch, RuntimeError("lmdbjni needs Java 8"))
    scores = scoring.score_captions({1: ["a cat"]}, {1: "a cat"}, tokenize=False)
    assert math.isnan(scores.metrics["SPICE"]) and "lmdbjni needs Java 8" in scores.spice.reason
    assert scores.metrics["Bleu_1"] == pytest.approx(1.0)
