"""Engines exported once per session from the tiny checkpoint (a real export, no mocks)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MAX_TILES = 12  # the checkpoint default; profile 1..13 tiles


def build(model: Path, out: Path, *extra: str) -> dict:
    import json

    from export.build_engines import main

    assert main(["--model", str(model), "--out", str(out), "--max-tiles", str(MAX_TILES), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def engines_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("engines") / "fp32"
    build(tiny_checkpoint, out)
    return out


def copy_engines(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def onnx_engine(tiny_checkpoint, engines_dir):
    from ivl_ros.model.engine import VisionLanguageEngine

    return VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=engines_dir)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "gpu: needs ONNX Runtime's CUDA provider and an NVIDIA GPU (skipped otherwise)")


@pytest.fixture(scope="session")
def fp16_engines_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """The GPU export (fused graphs, fp16) of the tiny checkpoint, built and checked on the CPU provider."""
    out = tmp_path_factory.mktemp("engines") / "fp16"
    build(tiny_checkpoint, out, "--precision", "fp16")
    return out


@pytest.fixture(scope="session")
def fused_fp32_engines_dir(tiny_checkpoint, engines_dir, tmp_path_factory) -> Path:
    """The fp32 engines with the decoder replaced by the fused graph in fp32 (ONNX Runtime's CPU provider runs
    GroupQueryAttention in fp32): the fused runtime must then give torch's tokens exactly."""
    import json

    from export.fused_decoder import build_fused_decoder
    from ivl_ros.model.backends.engines import HASHES, file_sha256
    from ivl_ros.model.checkpoint import load_model

    out = copy_engines(engines_dir, tmp_path_factory.mktemp("engines") / "fused32")
    model = load_model(tiny_checkpoint, device="cpu", dtype="float32", attention="exact").model
    info = build_fused_decoder(model, out / "decoder.onnx", "fp32")
    manifest = json.loads((out / "manifest.json").read_text())
    stage = manifest["stages"]["decoder_onnx"]
    stage.update(graph="fused", max_positions=info["max_positions"])
    stage["sizes"] = {name: (out / name).stat().st_size for name in ("decoder.onnx", "decoder.onnx.data")}
    # The new files' content hashes, as a build records them (the loader refuses files whose hash differs).
    stage[HASHES] = {name: file_sha256(out / name) for name in ("decoder.onnx", "decoder.onnx.data")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


AGREEMENT_QUESTIONS = ("What is in front of the robot?", "Describe the room.", "Hi")


def token_agreement(engine, ref_engine, sample_frame, settings) -> tuple[int, int, int, int]:
    """(identical sequences, cases, tokens in common prefixes, reference tokens) over 4 images x 3 questions.

    For engines whose rounding differs (fp16/bf16/quantised vs fp32): exact equality is not the claim there."""
    same = prefix = total = cases = 0
    for image in (sample_frame, sample_frame[:100, :250], sample_frame[::-1, ::-1], None):
        for question in AGREEMENT_QUESTIONS:
            got = engine.ask(image, question, settings=settings).token_ids
            ref = ref_engine.ask(image, question, settings=settings).token_ids
            same += got == ref
            agree = [a == b for a, b in zip(got, ref, strict=False)] + [False]
            prefix += agree.index(False)
            total += len(ref)
            cases += 1
    return same, cases, prefix, total
