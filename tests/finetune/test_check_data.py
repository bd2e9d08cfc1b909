"""--check-data finds every planted defect and names it file:line; training refuses bad data."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from tests.finetune.conftest import REPO, train_args

GOOD = {
    "image": "ok.png",
    "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}],
}


def _plant(tmp_path):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "ok.png")
    lines = [
        json.dumps(GOOD).encode(),  # 1 fine
        b'{"image": "ok.png", "conversations": [',  # 2 bad JSON
        json.dumps({**GOOD, "image": "gone.png"}).encode(),  # 3 missing image
        json.dumps(
            {
                "image": ["ok.png", "ok.png"],
                "conversations": [{"from": "human", "value": "Image-1: <image>\nTwo?"}, {"from": "gpt", "value": "x"}],
            }
        ).encode(),  # 4
        json.dumps({"conversations": []}).encode(),  # 5 empty conversation
        json.dumps(
            {"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "?"}]}
        ).encode(),  # 6 turn order
        json.dumps(GOOD).encode()[:-3] + b"\xff\xfe" + b'"}]}',  # 7 not UTF-8
        json.dumps(
            {"conversations": [{"from": "human", "value": "<image>\nNo image here"}, {"from": "gpt", "value": "ok"}]}
        ).encode(),  # 8 tag without image
        json.dumps(GOOD).encode(),  # 9 fine
    ]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    meta = {
        "good": {
            "root": str(tmp_path),
            "annotation": str(tmp_path / "a.jsonl"),
            "data_augment": False,
            "repeat_time": 1,
            "length": 9,
        },
        "lost": {
            "root": str(tmp_path),
            "annotation": str(tmp_path / "nope.jsonl"),
            "data_augment": False,
            "repeat_time": 1,
            "length": 1,
        },
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta, indent=2))
    return tmp_path / "meta.json", tmp_path / "a.jsonl"


def test_check_data_reports_each_defect(tmp_path):
    meta, ann = _plant(tmp_path)
    res = subprocess.run(
        [sys.executable, "finetune/lora.py", "--data", str(meta), "--check-data"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr
    out = res.stdout.splitlines()
    expected = {
        2: "bad JSON",
        3: "missing image: gone.png",
        4: "<image> count != images",
        5: "empty conversation",
        6: "wrong turn order",
        7: "not valid UTF-8",
        8: "<image> count != images",
    }
    for line, what in expected.items():
        assert any(o.startswith(f"{ann}:{line}: ") and what in o for o in out), (line, what, out)
    assert not any(o.startswith((f"{ann}:1:", f"{ann}:9:")) for o in out)
    meta_line = next(i for i, t in enumerate(meta.read_text().splitlines(), 1) if '"lost"' in t)
    assert any(o.startswith(f"{meta}:{meta_line}: ") and "annotation file not found" in o for o in out), out
    assert len([o for o in out if "(warning)" not in o]) == len(expected) + 1
    assert "2 valid" in res.stderr


def test_training_refuses_bad_data_unless_skipped(tmp_path, tiny_checkpoint, capsys):
    from finetune.lora import main

    meta, ann = _plant(tmp_path)
    assert main(train_args(meta, tiny_checkpoint, tmp_path / "r1", "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "8 problem(s)" in err and f"{ann}:2: bad JSON" in err and "--skip-bad-samples" in err
    out = tmp_path / "r2"
    assert (
        main(
            train_args(
                meta,
                tiny_checkpoint,
                out,
                "--max-steps",
                "1",
                "--batch-size",
                "2",
                "--per-device-batch-size",
                "2",
                "--skip-bad-samples",
            )
        )
        == 0
    )
    listed = (out / "bad_samples.txt").read_text().splitlines()
    assert len(listed) == 8 and any(x.startswith(f"{ann}:7: not valid UTF-8") for x in listed)
    assert (out / "adapter_model.safetensors").is_file()
