"""The vision ONNX against torch: the build's own check and an independent one on real tiles."""

from __future__ import annotations

import json

import numpy as np

from ivl_ros.model.tiling import pixel_values_for


def test_build_records_vision_check(engines_dir):
    manifest = json.loads((engines_dir / "manifest.json").read_text())
    stage = manifest["stages"]["vision_onnx"]
    print(f"vision ONNX vs torch (build check): {stage['check']['max_abs_diff_by_tiles']}")
    assert stage["status"] == "done" and stage["opset"] == 20
    assert stage["check"]["max_abs_diff"] < 1e-4
    assert manifest["vision"]["tile_profile"] == {"min": 1, "opt": 7, "max": 13}


def test_vision_features_match_torch_on_real_tiles(tiny_engine, onnx_engine, sample_frame):
    from PIL import Image

    spec = tiny_engine.spec
    for max_tiles in (1, 4, 6):  # 1, 5 (2x2 + thumbnail) and 7 tiles: the axis stays dynamic
        pv = pixel_values_for(Image.fromarray(sample_frame), spec.tile_size, max_tiles, spec.use_thumbnail)
        ref = tiny_engine.backend.image_features(pv).numpy()
        got = onnx_engine.backend.image_features(pv)
        diff = float(np.abs(got - ref).max())
        print(f"{pv.shape[0]} tiles: max abs diff {diff:.2e} (max |feature| {np.abs(ref).max():.2f})")
        assert got.shape == ref.shape == (pv.shape[0], spec.tokens_per_tile, 128)
        assert diff < 1e-4
