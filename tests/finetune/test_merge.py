"""merge.py: the merged checkpoint computes what base + adapter compute, and loads everywhere."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.finetune.conftest import REPO


def _inputs(loaded, sample_frame):
    from ivl_ros.model.prompt import chat_prompt
    from ivl_ros.model.tiling import pixel_values_for

    pv = pixel_values_for(__import__("PIL.Image").Image.fromarray(sample_frame), loaded.spec.tile_size, 6)
    _, prompt = chat_prompt("What is in front of the robot?", pv.shape[0], loaded.spec.tokens_per_tile)
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])
    return ids, torch.from_numpy(pv)


@torch.no_grad()
def _logits(model, ids, pv):
    return model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pv).logits


@pytest.mark.parametrize("layout", ["upstream", "converted"])
def test_merged_equals_base_plus_adapter(tmp_path, tiny_checkpoint, trained_run, sample_frame, layout):
    from peft import PeftModel

    from ivl_ros.model.checkpoint import load_model
    from ivl_ros.model.engine import VisionLanguageEngine

    out = tmp_path / f"merged-{layout}"
    res = subprocess.run(
        [sys.executable, "finetune/merge.py", "--adapter", str(trained_run), "--out", str(out), "--layout", layout],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr

    base = load_model(tiny_checkpoint)
    ids, pv = _inputs(base, sample_frame)
    plain = _logits(base.model, ids, pv)
    with_adapter = _logits(PeftModel.from_pretrained(base.model, str(trained_run)), ids, pv)
    merged = load_model(out)
    assert merged.layout == layout
    got = _logits(merged.model, ids, pv)
    assert (with_adapter - plain).abs().max() > 1e-2  # the adapter does change the model
    assert torch.allclose(got, with_adapter, atol=1e-4, rtol=1e-4), (got - with_adapter).abs().max()
    assert merged.spec.max_dynamic_patch == 6
    if layout == "upstream":
        names = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"} <= names
    answer = VisionLanguageEngine.load(out).caption(sample_frame)
    assert isinstance(answer.answer, str) and np.isfinite(answer.latency_ms)
