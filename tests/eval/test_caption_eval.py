"""evaluate_captions with a fake engine: outputs, resuming after an interruption, refusing mixed runs."""

from __future__ import annotations

import json

import pytest

from ivl_ros.errors import IvlError
from ivl_ros.eval.caption_eval import CAPTIONS_FILE, evaluate_captions, read_done

from .conftest import SCENES, FakeEngine


def test_interrupted_run_resumes_without_redoing_images(coco_set, tmp_path):
    root, ann = coco_set
    out = tmp_path / "out"

    # First run: interrupted while captioning the 3rd image (as Ctrl-C would be).
    first = FakeEngine(fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate_captions(first, root, ann, out, progress=False)
    assert len(first.calls) == 2
    assert sorted(read_done(out)) == [101, 102]
    assert not (out / "metrics.json").exists()

    # A crash in the middle of writing a line leaves a partial record: it is dropped, not fatal.
    with (out / CAPTIONS_FILE).open("a") as f:
        f.write('{"image_id": 103, "capt')

    second = FakeEngine()
    metrics = evaluate_captions(second, root, ann, out, progress=False)
    assert second.calls == ["COCO_val2014_000000000103.jpg", "COCO_val2014_000000000104.jpg"]
    assert [json.loads(line)["image_id"] for line in (out / CAPTIONS_FILE).read_text().splitlines()] == [
        101,
        102,
        103,
        104,
    ]

    results = json.loads((out / "results.json").read_text())
    assert results == [{"image_id": i, "caption": caps[0]} for i, (_, caps) in SCENES.items()]
    # The fake engine returns one reference verbatim: near-perfect scores.
    assert metrics["Bleu_1"] > 0.99 and metrics["CIDEr"] > 1.0 and metrics["METEOR"] > 0.5
    assert metrics["num_images"] == 4 and metrics["model_id"] == "fake-model"
    assert metrics["avg_caption_words"] == pytest.approx(sum(len(c[0].split()) for _, c in SCENES.values()) / 4)
    assert metrics["settings"]["max_new_tokens"] == 30 and metrics["settings"]["min_new_tokens"] == 8
    assert metrics["settings"]["max_tiles"] == 6 and metrics["settings"]["do_sample"] is False
    assert metrics["SPICE"] is None or metrics["spice"]["available"]
    assert json.loads((out / "metrics.json").read_text()) == metrics

    report = (out / "report.html").read_text()
    assert report.count('<div class="card">') == 4 and "a green field under the sky" in report
    assert "CIDEr" in report and (out / "thumbs" / "104.jpg").is_file()

    # Done: a rerun captions nothing.
    third = FakeEngine()
    evaluate_captions(third, root, ann, out, progress=False)
    assert third.calls == []


def test_limit_then_full_run_only_captions_the_rest(coco_set, tmp_path):
    root, ann = coco_set
    out = tmp_path / "out"
    first = FakeEngine()
    assert evaluate_captions(first, root, ann, out, limit=1, progress=False)["num_images"] == 1
    second = FakeEngine()
    assert evaluate_captions(second, root, ann, out, progress=False)["num_images"] == 4
    assert len(first.calls) == 1 and len(second.calls) == 3


def test_captions_of_another_model_or_setting_are_not_mixed_in(coco_set, tmp_path):
    root, ann = coco_set
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        evaluate_captions(FakeEngine(fail_on_call=2), root, ann, out, progress=False)
    with pytest.raises(IvlError, match="holds captions from a different run \\(differs in: max_tiles\\)"):
        evaluate_captions(FakeEngine(fail_on_call=1), root, ann, out, max_tiles=4, progress=False)
    with pytest.raises(IvlError, match="differs in: model_id"):
        evaluate_captions(FakeEngine(model_id="other", fail_on_call=1), root, ann, out, progress=False)


def test_missing_java_fails_before_any_captioning(coco_set, tmp_path, monkeypatch):
    root, ann = coco_set
    monkeypatch.setenv("PATH", str(tmp_path))
    engine = FakeEngine()
    with pytest.raises(IvlError, match="needs Java"):
        evaluate_captions(engine, root, ann, tmp_path / "out", progress=False)
    assert engine.calls == []


def test_missing_image_fails_before_any_captioning(coco_set, tmp_path):
    root, ann = coco_set
    (root / "COCO_val2014_000000000104.jpg").unlink()
    engine = FakeEngine()
    with pytest.raises(IvlError, match="image file\\(s\\) listed in .* are missing"):
        evaluate_captions(engine, root, ann, tmp_path / "out", progress=False)
    assert engine.calls == []
