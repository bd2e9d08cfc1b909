"""Files the package installs under ``<prefix>/share/ivl_ros`` (the ROS layout), found from any install.

A source checkout (editable install, tests) uses the files at the repository root, so an edit there is never hidden
by the copy an editable install made; otherwise a ROS 2 install (colcon, apt) lists its prefixes in
AMENT_PREFIX_PATH, and a pip venv has none, so ``sys.prefix`` is searched too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "ivl_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def is_source_checkout() -> bool:
    return (SOURCE_ROOT / "package.xml").is_file() and (SOURCE_ROOT / "setup.py").is_file()


def share_candidates(relative: str) -> list[Path]:
    prefixes = [*os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep), sys.prefix]
    candidates = [Path(p) / "share" / PACKAGE / relative for p in prefixes if p]
    if is_source_checkout():
        candidates.insert(0, SOURCE_ROOT / relative)
    return candidates


def find_share_file(relative: str) -> Path | None:
    """``config/captioner.yaml`` -> the first installed (or source-checkout) copy, or None."""
    return next((path for path in share_candidates(relative) if path.is_file()), None)
