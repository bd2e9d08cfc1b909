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
