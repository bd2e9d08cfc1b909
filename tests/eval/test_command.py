"""`ivl eval-caption` end to end: the two real COCO images with a tiny random checkpoint."""

from __future__ import annotations

import json

from ivl_ros import cli


def test_eval_caption_on_real_coco_sample(coco_sample, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = [
        "eval-caption",
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(coco_sample),
        "--annotations",
        str(coco_sample / "captions.json"),
        "--max-tiles",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    printed = capsys.readouterr()
    assert "2 images: Bleu_1" in printed.out and "captioned 2 image(s), 0 resumed" in printed.err

    results = json.loads((out / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == [184321, 324158]
    assert all(isinstance(r["caption"], str) for r in results)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert 0.0 <= metrics[key] <= 10.0, key
    assert metrics["num_images"] == 2 and metrics["images_per_s"] > 0 and metrics["avg_caption_words"] > 0
    assert metrics["model_id"] == tiny_checkpoint.name and metrics["settings"]["max_tiles"] == 2
    assert "SPICE" in metrics and "available" in metrics["spice"]
    report = (out / "report.html").read_text()
    assert "A passenger train pulls into a train station." in report and 'src="thumbs/184321.jpg"' in report

    # Rerun: everything is resumed, nothing is captioned again.
    assert cli.main(argv) == 0
    assert "captioned 0 image(s), 2 resumed" in capsys.readouterr().err


def test_eval_caption_errors_are_one_line(coco_sample, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv = [
        "eval-caption",
        "--model",
        str(tiny_checkpoint),
        "--images",
        str(coco_sample),
        "--annotations",
        str(bad),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ivl: error: ") and "malformed JSON" in err and "Traceback" not in err

    monkeypatch.setenv("PATH", str(tmp_path))
    argv[argv.index("--annotations") + 1] = str(coco_sample / "captions.json")
    assert cli.main(argv) == 2
    assert "needs Java" in capsys.readouterr().err
