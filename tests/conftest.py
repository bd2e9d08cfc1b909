"""Shared fixtures: one tiny upstream-layout checkpoint per test session (built, never downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"  # real third-party files, origins and licences in each SOURCES.md
DEMO = REPO / "models" / "ivl-demo"  # the embedded demo captioner, committed with the code
REGRESSION = TEST_DATA / "caption_regression"  # 16 held-out frames of the demo model's data, with references


def cuda_gpu_reason() -> str | None:
    """None where an NVIDIA GPU is usable through the CUDA driver, else why not (torch-free, like the trt backend)."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    count = ctypes.c_int()
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the CUDA driver sees no GPU"
    return None


def pytest_collection_modifyitems(config, items) -> None:
    """Every test under tests/ros talks to ROS processes: mark it ``ros``. ``gpu`` tests skip without a GPU."""
    ros_dir = REPO / "tests" / "ros"
    gpu_reason: str | None = None
    gpu_checked = False
    for item in items:
        if ros_dir in Path(item.fspath).parents:
            item.add_marker(pytest.mark.ros)
        if item.get_closest_marker("gpu") is not None and os.environ.get("TRITON_INTERPRET") != "1":
            # (Under Triton's CPU interpreter the kernel tests run without a GPU; they skip themselves otherwise.)
            if not gpu_checked:
                gpu_reason, gpu_checked = cuda_gpu_reason(), True
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=f"needs a CUDA GPU: {gpu_reason}"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from ivl_ros.model.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-internvl2")


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint):
    from ivl_ros.model.engine import VisionLanguageEngine

    return VisionLanguageEngine.load(tiny_checkpoint)


def export_demo(out: Path, *options: str) -> Path:
    """The demo model's engines, built the way a user does it (``python export/build_engines.py``)."""
    cmd = [
        sys.executable,
        "export/build_engines.py",
        "--model",
        str(DEMO),
        "--out",
        str(out),
        "--max-tiles",
        "6",
        *options,
    ]
    build = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def demo_onnx_engines(tmp_path_factory) -> Path:
    """The demo model's ONNX engines (no TensorRT), exported once per session (~1 min of CPU)."""
    return export_demo(tmp_path_factory.mktemp("demo") / "engines", "--trt", "off")


@pytest.fixture(scope="session")
def demo_torch_answers() -> dict:
    """The demo model's answers on the caption regression frames (torch, CPU, float32): image id -> Answer."""
    from ivl_ros.model.engine import VisionLanguageEngine

    engine = VisionLanguageEngine.load(DEMO)
    images = json.loads((REGRESSION / "captions.json").read_text())["images"]
    return {im["id"]: engine.caption(REGRESSION / "images" / im["file_name"]) for im in images}


@pytest.fixture(scope="session")
def sample_frame():
    """A deterministic 320x240 RGB frame with structure (not noise), as a numpy array."""
    import numpy as np

    y, x = np.mgrid[0:240, 0:320]
    frame = np.stack([(x * 255 // 319), (y * 255 // 239), ((x + y) % 64) * 4], axis=-1).astype(np.uint8)
    frame[60:180, 100:220] = (200, 40, 40)
    return frame
