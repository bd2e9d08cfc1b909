"""An image that fails to decode mid-run: the run saves a checkpoint before it stops, and resumes bit-exactly
once the image is fixed; with --skip-bad-samples the sample is skipped, counted, and training finishes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.finetune.conftest import train_args

N = 8  # single-image samples; 2 per step: 4 steps per epoch
COMMON = (
    "--batch-size",
    "2",
    "--per-device-batch-size",
    "2",
    "--learning-rate",
    "1e-3",
    "--max-steps",
    "4",
    "--no-group-by-length",
)


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The dataset, and the jsonl line and image of a sample that step 3 uses."""
    from finetune.batching import shuffled_order
    from finetune.synthetic import make_caption_dataset

    base = tmp_path_factory.mktemp("bad")
    meta = make_caption_dataset(base / "data", N, seed=11)["meta"]
    entry = json.loads(meta.read_text())
    ann = Path(next(iter(entry.values()))["annotation"])
    index = shuffled_order(N, 42)[4]  # seed 42, epoch 0: step 3 takes order[4:6]
    image = base / "data" / json.loads(ann.read_text().splitlines()[index])["image"]
    return meta, ann, index + 1, image


@pytest.fixture(scope="module")
def clean_run(data, tiny_checkpoint, tmp_path_factory):
    from finetune.lora import main

    out = tmp_path_factory.mktemp("clean") / "run"
    assert main(train_args(data[0], tiny_checkpoint, out, *COMMON)) == 0
    return out


class truncated:
    """The image cut in half while inside the block (its header stays valid, so the start-up check passes)."""

    def __init__(self, image: Path) -> None:
        self.image, self.raw = image, image.read_bytes()

    def __enter__(self):
        self.image.write_bytes(self.raw[: len(self.raw) // 2])

    def __exit__(self, *exc):
        self.image.write_bytes(self.raw)


def test_error_mid_run_saves_first_and_resumes_exactly(data, clean_run, tiny_checkpoint, tmp_path, capsys):
    from finetune.lora import main

    meta, ann, line, image = data
    out = tmp_path / "run"
    with truncated(image):
        assert main(train_args(meta, tiny_checkpoint, out, *COMMON)) == 2
    captured = capsys.readouterr()
    assert f"{ann}:{line}: " in captured.err and "cannot read image" in captured.err, captured.err
    assert "--skip-bad-samples" in captured.err
    assert "Traceback" not in captured.err
    # save-steps is 1000: the checkpoint exists only because the error saved one (2 steps done).
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert f"saved {out / 'checkpoint-2'} first" in captured.out + captured.err
    assert len(_losses(out)) == 2

    assert main(train_args(meta, tiny_checkpoint, out, *COMMON, "--resume")) == 0
    assert _losses(out) == _losses(clean_run)
    a = load_file(str(clean_run / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_skip_bad_samples_skips_an_undecodable_image(data, clean_run, tiny_checkpoint, tmp_path, capsys):
    from finetune.lora import main

    meta, ann, line, image = data
    out = tmp_path / "run"
    with truncated(image):
        assert main(train_args(meta, tiny_checkpoint, out, *COMMON, "--skip-bad-samples")) == 0
    text = capsys.readouterr()
    log = text.out + text.err
    assert "skipped 1 sample(s) whose image cannot be read" in log, log
    assert "skipped 1 sample(s) whose image could not be read" in log
    listed = (out / "bad_samples.txt").read_text().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{ann}:{line}: ") and "cannot read image" in listed[0]
    assert json.loads((out / "run_stats.json").read_text())["skipped_samples"] == 1
    assert (out / "adapter_model.safetensors").is_file()
    losses, clean = _losses(out), _losses(clean_run)
    assert len(losses) == 4 and losses[:2] == clean[:2] and losses[2] != clean[2]  # step 3 ran on one sample


def test_a_micro_batch_of_only_bad_samples_takes_the_next_good_one(tiny_checkpoint, tmp_path):
    """Every rank keeps the same number of micro-batches: an all-bad micro-batch is filled, not dropped."""
    from finetune.data import check_data
    from finetune.preprocess import build_example
    from finetune.synthetic import make_caption_dataset
    from finetune.trainer import ForwardSet
    from ivl_ros.model.spec import load_spec

    meta = make_caption_dataset(tmp_path / "d", 4, seed=2)["meta"]
    samples = check_data(meta).samples
    _, spec, tok = load_spec(tiny_checkpoint)
    for s in samples[:2]:
        shutil.copy(meta, s.images[0])  # a JSON file where the PNG was

    def build(sample, rng):
        return build_example(sample, tok, spec, 6, 4096, rng)

    skip = ForwardSet([([[0, 1]], 2), ([[2, 3]], 2)], samples, build, tok.pad_id, 0, 0, skip_bad=True)
    first = skip[0]
    assert first["num_samples"] == 1 and len(first["skipped"]) == 2  # sample 2 stood in
    assert skip[1]["num_samples"] == 2 and not skip[1]["skipped"]
    # Packed: both micro-batches in one forward; the stand-in keeps the first micro-batch's share of the loss.
    packed = ForwardSet([([[0, 1], [2, 3]], 2)], samples, build, tok.pad_id, 0, 0, skip_bad=True, packed=True)[0]
    assert packed["num_samples"] == 3 and len(packed["skipped"]) == 2 and len(packed["segments"]) == 3
    first_share = packed["weights"][: packed["segments"][0][1]].sum()
    assert abs(float(first_share) - 0.5) < 1e-6 and abs(float(packed["weights"].sum()) - 1.0) < 1e-6
    strict = ForwardSet([([[0, 1]], 1)], samples, build, tok.pad_id, 0, 0, skip_bad=False)
    assert strict[0]["error"].startswith(f"{samples[0].where}: ")
