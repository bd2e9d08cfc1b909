"""Refusals of mismatched engines and hash-based stage skipping."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ivl_ros.model.backends.engines import (
    EngineError,
    EngineMismatchError,
    TensorRTUnavailableError,
    checkpoint_fingerprint,
)
from ivl_ros.model.engine import VisionLanguageEngine
from tests.conftest import REPO
from tests.export.conftest import build, copy_engines


def test_fingerprint_follows_weights_and_config_not_the_folder(tiny_checkpoint, tmp_path):
    """Engines stay valid when the checkpoint folder moves or gains notes; any weight or config edit voids them."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from ivl_ros.errors import CheckpointError

    original = checkpoint_fingerprint(tiny_checkpoint)
    moved = shutil.copytree(tiny_checkpoint, tmp_path / "moved" / "somewhere-else")
    (moved / "NOTES.md").write_text("a note next to the weights\n")
    assert checkpoint_fingerprint(moved) == original

    weights = shutil.copytree(tiny_checkpoint, tmp_path / "one-weight-changed")
    tensors = load_file(weights / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] += 1.0
    save_file(tensors, weights / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_fingerprint(weights) != original

    config = shutil.copytree(tiny_checkpoint, tmp_path / "config-changed")
    cfg = json.loads((config / "config.json").read_text())
    cfg["max_dynamic_patch"] = cfg.get("max_dynamic_patch", 12) + 1
    (config / "config.json").write_text(json.dumps(cfg))
    assert checkpoint_fingerprint(config) != original

    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoint_fingerprint(tmp_path / "moved")


def test_engines_from_another_checkpoint_are_refused(engines_dir, tmp_path):
    from ivl_ros.model.tiny import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    with pytest.raises(EngineMismatchError, match=r"built from checkpoint .* but .*other is checkpoint"):
        VisionLanguageEngine.load(other, backend="onnx", engines_path=engines_dir)


def test_missing_or_foreign_engine_directories_are_refused(tiny_checkpoint, engines_dir, tmp_path):
    # No engines path: the default <checkpoint>-engines folder is used, and its absence is explained.
    with pytest.raises(EngineError, match=r"tiny-internvl2-engines/manifest.json: missing; build engines"):
        VisionLanguageEngine.load(tiny_checkpoint, backend="onnx")
    with pytest.raises(EngineError, match="manifest.json: missing; build engines"):
        VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=tmp_path)
    bad = copy_engines(engines_dir, tmp_path / "old")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["format"] = 0
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatchError, match="format 0"):
        VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=bad)


def test_engine_for_another_gpu_architecture_is_refused(tmp_path):
    from ivl_ros.model.backends.trt_vision import check_architecture

    with pytest.raises(EngineMismatchError, match=r"built for SM80, SM86, SM89, SM120, but .*H100.* is SM90"):
        check_architecture(["SM80", "SM86", "SM89", "SM120"], (9, 0), "NVIDIA H100 80GB HBM3", tmp_path / "e")
    check_architecture(["SM80", "SM86"], (8, 6), "RTX 3090", tmp_path / "e")  # a listed target passes


def test_missing_tensorrt_gives_an_install_hint(tiny_checkpoint, engines_dir, tmp_path, monkeypatch):
    from ivl_ros.model.backends.trt_vision import import_tensorrt

    for name in ("tensorrt", "tensorrt_rtx"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(TensorRTUnavailableError, match="pip install -r requirements/export.txt"):
        import_tensorrt("auto")
    out = copy_engines(engines_dir, tmp_path / "no_trt")
    manifest = build(tiny_checkpoint, out)  # --trt auto: recorded as skipped, with the reason
    assert manifest["stages"]["tensorrt"]["status"] == "skipped"
    assert "pip install" in manifest["stages"]["tensorrt"]["reason"]
    with pytest.raises(EngineError, match="stage 'tensorrt' is skipped: no TensorRT"):
        VisionLanguageEngine.load(tiny_checkpoint, backend="trt", engines_path=out)
    from export.build_engines import main

    assert main(["--model", str(tiny_checkpoint), "--out", str(out), "--trt", "tensorrt_rtx"]) == 2


KEPT_FRESH = {"manifest.json", ".verified-hashes.json"}  # rewritten by a re-run; the artifacts are not


def test_rerun_skips_finished_stages(tiny_checkpoint, engines_dir, tmp_path):
    out = copy_engines(engines_dir, tmp_path / "rerun")
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in KEPT_FRESH}
    cmd = [
        sys.executable,
        str(REPO / "export" / "build_engines.py"),
        "--model",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--max-tiles",
        "12",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count("unchanged, skipped") == 4, run.stderr
    assert "loaded" not in run.stderr  # the torch model is not even loaded
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name not in KEPT_FRESH}


def test_changed_precision_rebuilds_vision_and_decoder_stages(tiny_checkpoint, engines_dir, tmp_path, capsys):
    out = copy_engines(engines_dir, tmp_path / "fp16")
    manifest = build(tiny_checkpoint, out, "--precision", "fp16")
    log = capsys.readouterr().err
    assert log.count("unchanged, skipped") == 1  # the embedding; fp16 means the fused GPU decoder too
    assert "decoder ONNX (fused, fp16" in log
    check = manifest["stages"]["vision_onnx"]["check"]
    print(f"fp16 vision vs torch fp32: {check['max_abs_diff_by_tiles']}")
    assert check["max_abs_diff"] < 2e-2
    assert manifest["precision"]["vision"] == "fp16" and manifest["stages"]["tensorrt"]["status"] == "done"


def test_bad_model_path_is_a_clean_error(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "export" / "build_engines.py"),
        "--model",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "out"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "Traceback" not in run.stderr
