"""GPUS=2 on CPU: the script re-launches itself under torchrun (gloo) and both ranks end identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.finetune.conftest import REPO, train_args


def test_two_process_gloo_ranks_agree(tmp_path, tiny_checkpoint, mixed_data):
    out = tmp_path / "ddp"
    env = {**os.environ, "GPUS": "2", "PER_DEVICE_BATCH_SIZE": "1", "BATCH_SIZE": "4", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "finetune/lora.py",
        *train_args(mixed_data, tiny_checkpoint, out, "--max-steps", "3", "--learning-rate", "1e-3"),
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "torch.distributed.run" in res.stdout
    check = json.loads((out / "ddp_check.json").read_text())
    assert check["agree"] and len(check["ranks"]) == 2
    record = json.loads((out / "ivl_finetune.json").read_text())
    assert record["world_size"] == 2 and record["config"]["gradient_acc"] == 2  # 4 / 1 / 2
    assert (out / "adapter_model.safetensors").is_file()
    assert len((out / "train_log.csv").read_text().splitlines()) == 4
