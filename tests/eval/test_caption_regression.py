"""Caption regression through the core: the embedded demo model on the committed regression set, per backend.

Fails when CIDEr drops more than TOLERANCE below tests/data/caption_regression/baseline_metrics.json, when the
backends' captions disagree, and (proved here) when the model is perturbed.
"""

from __future__ import annotations

import json
import shutil

import pytest

from ivl_ros.eval.regression import check_caption_regression
from tests.conftest import DEMO, REGRESSION, cuda_gpu_reason, export_demo

TOLERANCE = 0.10  # absolute CIDEr; the CPU float32 run is deterministic, this absorbs other CPUs' rounding

pytestmark = [
    pytest.mark.slow,  # the demo model on 16 frames, per backend (minutes on 2 cores)
    pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="models/ivl-demo is not in this checkout"),
]


def _images() -> list[dict]:
    return json.loads((REGRESSION / "captions.json").read_text())["images"]


def caption_set(engine) -> dict[int, str]:
    return {im["id"]: engine.caption(REGRESSION / "images" / im["file_name"]).answer for im in _images()}


def verdict(captions: dict[int, str]):
    return check_caption_regression(
        captions.items(), REGRESSION / "captions.json", REGRESSION / "baseline_metrics.json", tolerance=TOLERANCE
    )


@pytest.fixture(scope="module")
def torch_captions(demo_torch_answers) -> dict[int, str]:
    return {image_id: answer.answer for image_id, answer in demo_torch_answers.items()}


def test_torch_backend_meets_the_baseline(torch_captions):
    result = verdict(torch_captions)
    assert result.passed, str(result)


@pytest.mark.slow
def test_onnx_backend_agrees_and_meets_the_baseline(torch_captions, demo_onnx_engines):
    from ivl_ros.model.engine import VisionLanguageEngine

    onnx_captions = caption_set(VisionLanguageEngine.load(DEMO, backend="onnx", engines_path=demo_onnx_engines))
    disagree = {
        k: (torch_captions[k], onnx_captions[k]) for k in torch_captions if torch_captions[k] != onnx_captions[k]
    }
    assert not disagree, f"torch and onnx captions differ: {disagree}"
    result = verdict(onnx_captions)
    assert result.passed, str(result)


def tensorrt_reason() -> str | None:
    """None where the trt backend can run the demo model here, else why not."""
    from export.tensorrt_build import RTX_TARGETS
    from ivl_ros.model.backends.engines import TensorRTUnavailableError
    from ivl_ros.model.backends.trt_vision import CudaDriver, import_tensorrt

    if reason := cuda_gpu_reason():
        return reason
    try:
        name, _ = import_tensorrt("auto")
    except TensorRTUnavailableError as exc:
        return str(exc)
    major, minor = CudaDriver().compute_capability()
    if name == "tensorrt_rtx" and f"SM{major}{minor}" not in RTX_TARGETS:
        return f"TensorRT-RTX has no SM{major}{minor} target (it builds for {', '.join(RTX_TARGETS)}); install tensorrt"
    return None


@pytest.mark.gpu
@pytest.mark.slow
def test_trt_backend_meets_the_baseline(request, tmp_path):
    """Runs where TensorRT (or TensorRT-RTX on a GPU it targets) and an NVIDIA GPU exist; skipped elsewhere."""
    if reason := tensorrt_reason():
        pytest.skip(f"trt backend cannot run here: {reason}")
    from ivl_ros.model.engine import VisionLanguageEngine

    torch_captions = request.getfixturevalue("torch_captions")

    engines = export_demo(tmp_path / "engines", "--trt", "auto")
    trt_captions = caption_set(VisionLanguageEngine.load(DEMO, backend="trt", engines_path=engines))
    # TensorRT may pick TF32 or other kernels for the vision tower: its captions are scored, not compared.
    differ = sum(trt_captions[k] != torch_captions[k] for k in torch_captions)
    print(f"trt captions differing from torch: {differ}/{len(torch_captions)}")
    result = verdict(trt_captions)
    assert result.passed, str(result)


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
