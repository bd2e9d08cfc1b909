"""Training: the loss falls; SIGTERM mid-run + --resume reproduces the uninterrupted run exactly."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.finetune.conftest import REPO, train_args


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_loss_goes_down_and_outputs(trained_run):
    losses = _losses(trained_run)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    for name in ("adapter_config.json", "adapter_model.safetensors", "ivl_finetune.json", "loss_curve.png"):
        assert (trained_run / name).is_file(), name
    import json

    record = json.loads((trained_run / "ivl_finetune.json").read_text())
    assert record["config"]["lora_alpha"] == 16 and record["config"]["max_dynamic_patch"] == 6
    adapter = json.loads((trained_run / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_dropout"] == 0.05


@pytest.mark.slow
def test_sigterm_then_resume_matches_uninterrupted(tmp_path, tiny_checkpoint, mixed_data):
    from finetune.lora import main

    # 16 samples, 2 per pass, 2 passes per step: 4 steps per epoch, so 6 steps also cross an epoch.
    common = ("--batch-size", "4", "--per-device-batch-size", "2", "--learning-rate", "1e-3", "--max-steps", "6")
    full = tmp_path / "full"
    assert main(train_args(mixed_data, tiny_checkpoint, full, *common)) == 0

    cut = tmp_path / "cut"
    cmd = [sys.executable, "finetune/lora.py", *train_args(mixed_data, tiny_checkpoint, cut, *common)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log = cut / "train_log.csv"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:  # header + 2 steps done
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "SIGTERM: stopped at step" in output
    saved = sorted(p.name for p in cut.glob("checkpoint-*"))
    assert saved and not (cut / "adapter_model.safetensors").exists()
    assert int(saved[-1].split("-")[1]) < 6

    assert main(train_args(mixed_data, tiny_checkpoint, cut, *common, "--resume")) == 0
    assert _losses(cut) == _losses(full)
    a = load_file(str(full / "adapter_model.safetensors"))
    b = load_file(str(cut / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_rotation_is_atomic_and_keeps_last_k(tmp_path, tiny_checkpoint, mixed_data):
    from finetune.lora import main

    out = tmp_path / "rot"
    args = train_args(
        mixed_data, tiny_checkpoint, out, "--batch-size", "2", "--per-device-batch-size", "2", "--max-steps", "4"
    )
    args[args.index("--save-steps") + 1] = "1"
    assert main([*args, "--save-total-limit", "2"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint-", ".tmp"))) == [
        "checkpoint-3",
        "checkpoint-4",
    ]
    assert {
        "trainable.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "scheduler.json",
        "rng.json",
        "state.json",
    } <= {p.name for p in (out / "checkpoint-4").iterdir()}
