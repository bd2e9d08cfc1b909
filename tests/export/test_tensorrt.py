"""A real TensorRT-RTX build from the vision ONNX (no GPU needed); running it needs a supported GPU."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivl_ros.model.backends.engines import EngineError


def _rtx():
    try:
        import tensorrt_rtx
    except ImportError as exc:
        pytest.skip(f"tensorrt_rtx cannot be imported ({exc}); pip install -r requirements/export.txt")
    return tensorrt_rtx


def test_build_made_a_tensorrt_rtx_engine(engines_dir):
    trt = _rtx()
    stage = json.loads((engines_dir / "manifest.json").read_text())["stages"]["tensorrt"]
    print(
        f"TensorRT stage: {stage['module']} {stage['version']}, {stage['layers']} layers, "
        f"built in {stage['build_seconds']}s, {stage['engine_bytes']} bytes, targets {stage['compute_capabilities']}"
    )
    assert stage["status"] == "done" and stage["module"] == "tensorrt_rtx" and stage["version"] == trt.__version__
    assert stage["profile"] == {"input": "pixel_values", "min": 1, "opt": 7, "max": 13}
    assert stage["output_shape_tail"] == [16, 128]
    assert (engines_dir / "vision.engine").stat().st_size == stage["engine_bytes"] > 100_000
    assert (engines_dir / "timing.cache").stat().st_size > 0


def test_direct_build_reuses_the_timing_cache(engines_dir, tmp_path):
    _rtx()
    from export.tensorrt_build import build_vision_engine

    cache = tmp_path / "timing.cache"
    args = (
        engines_dir / "vision.onnx",
        tmp_path / "a.engine",
        cache,
        "tensorrt_rtx",
        (1, 2, 3),
        112,
        "pixel_values",
        "image_features",
    )
    first = build_vision_engine(*args)
    assert cache.is_file() and first["compute_capabilities"] == ["SM80", "SM86", "SM89", "SM120"]
    second = build_vision_engine(*args[:1], tmp_path / "b.engine", *args[2:])
    assert second["engine_bytes"] > 0 and second["profile"]["max"] == 3


@pytest.mark.gpu
def test_trt_backend_runs_where_a_supported_gpu_exists(tiny_checkpoint, engines_dir, onnx_engine, sample_frame):
    _rtx()
    from ivl_ros.model.engine import VisionLanguageEngine

    try:
        engine = VisionLanguageEngine.load(tiny_checkpoint, backend="trt", engines_path=engines_dir)
    except EngineError as exc:  # no driver / no GPU / an architecture TensorRT-RTX does not target (SM90)
        pytest.skip(f"TensorRT engine not runnable here: {exc}")
    answer = engine.caption(sample_frame)
    ref = onnx_engine.caption(sample_frame)
    pv = np.random.default_rng(0).uniform(-2, 2.5, (3, 3, 112, 112)).astype(np.float32)
    diff = np.abs(engine.backend.image_features(pv) - onnx_engine.backend.image_features(pv)).max()
    print(f"TensorRT vs ORT vision features: max abs diff {diff:.2e}")
    assert diff < 1e-2
    assert answer.token_ids == ref.token_ids
