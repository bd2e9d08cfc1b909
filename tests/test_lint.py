"""The code base stays `ruff` clean and formatted (ruff.toml); the model core type-checks (pyrightconfig.json)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (requirements/dev.txt)")
    proc = subprocess.run([ruff, "check", "--quiet", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # One style for the whole tree.
    proc = subprocess.run([ruff, "format", "--check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_model_core_type_checks():
    """basedpyright (pyright with its node runtime bundled, so it works offline), basic mode, on ivl_ros/model."""
    checker = shutil.which("basedpyright", path=str(Path(sys.executable).parent)) or shutil.which("basedpyright")
    if checker is None:
        pytest.skip("basedpyright is not installed (requirements/dev.txt)")
    proc = subprocess.run(
        [checker, "--pythonpath", sys.executable, "--project", str(REPO / "pyrightconfig.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
