"""Caption regression through the core: the embedded demo model on the committed regression set, per backend.

Fails when CIDEr drops more than TOLERANCE below tests/data/caption_regression/baseline_metrics.json, when the
backends' captions disagree, and (proved here) when the model is perturbed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ivl_ros.eval.regression import check_caption_regression

REPO = Path(__file__).resolve().parents[2]
REGRESSION = REPO / "tests" / "data" / "caption_regression"
DEMO = REPO / "models" / "ivl-demo"
TOLERANCE = 0.10  # absolute CIDEr; the CPU float32 run is deterministic, this absorbs other CPUs' rounding

pytestmark = pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="models/ivl-demo is not in this checkout")


def _images() -> list[dict]:
    return json.loads((REGRESSION / "captions.json").read_text())["images"]


def caption_set(engine) -> dict[int, str]:
    return {im["id"]: engine.caption(REGRESSION / "images" / im["file_name"]).answer for im in _images()}


def verdict(captions: dict[int, str]):
    return check_caption_regression(captions.items(), REGRESSION / "captions.json",
                                    REGRESSION / "baseline_metrics.json", tolerance=TOLERANCE)


@pytest.fixture(scope="module")
def torch_captions() -> dict[int, str]:
    from ivl_ros.model.engine import VisionLanguageEngine

    return caption_set(VisionLanguageEngine.load(DEMO))


def test_torch_backend_meets_the_baseline(torch_captions):
    result = verdict(torch_captions)
    assert result.passed, str(result)


def test_onnx_backend_agrees_and_meets_the_baseline(torch_captions, tmp_path):
    pytest.importorskip("onnxruntime")
    engines = tmp_path / "engines"
    build = subprocess.run([sys.executable, "export/build_engines.py", "--model", str(DEMO), "--out", str(engines),
                            "--max-tiles", "6", "--trt", "off"], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    from ivl_ros.model.engine import VisionLanguageEngine

    onnx_captions = caption_set(VisionLanguageEngine.load(DEMO, backend="onnx", engines_path=engines))
    disagree = {k: (torch_captions[k], onnx_captions[k]) for k in torch_captions
                if torch_captions[k] != onnx_captions[k]}
    assert not disagree, f"torch and onnx captions differ: {disagree}"
    result = verdict(onnx_captions)
    assert result.passed, str(result)


def test_trt_backend_needs_a_gpu():
    pytest.skip("trt backend: TensorRT engines need an NVIDIA GPU (SM80/86/89/120 for tensorrt_rtx); none here. "
                "The engine build itself is tested in tests/export/test_tensorrt.py")


def test_a_perturbed_model_fails_the_threshold(tmp_path):
    """One LLM layer zeroed must be caught: proves the threshold has teeth."""
    import torch
    from safetensors.torch import load_file, save_file

    from ivl_ros.model.engine import VisionLanguageEngine

    broken = tmp_path / "demo-layer-zeroed"
    shutil.copytree(DEMO, broken)
    tensors = load_file(broken / "model.safetensors")
    layer = "language_model.model.layers.1."
    zeroed = [k for k in tensors if k.startswith(layer)]
    assert zeroed
    for k in zeroed:
        tensors[k] = torch.zeros_like(tensors[k])
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    result = verdict(caption_set(VisionLanguageEngine.load(broken)))
    assert not result.passed, f"a model with {layer}* zeroed still passed: {result}"
