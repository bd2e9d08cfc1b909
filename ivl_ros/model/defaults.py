"""The default model rule, used by every front end (``ivl``, eval, the node, finetune, merge, export, bench):
``--model`` when given, else ``$IVL_MODEL``, else the embedded demo captioner shipped in the repository (with a
log line saying so).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ivl_ros.errors import OptionError

DEMO_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "ivl-demo"

DEMO_NOTICE = (
    "using the embedded demo model {path}: a ~4M-parameter InternVL2-architecture captioner trained on "
    "procedural Habitat-bridge rooms (see its README.md). For real InternVL2-2B weights pass "
    "--model / model_path:=/path/to/InternVL2-2B or set IVL_MODEL"
)


def default_model_path() -> Path:
    env = os.environ.get("IVL_MODEL")
    if env:
        return Path(env)
    if (DEMO_MODEL_DIR / "config.json").is_file():
        return DEMO_MODEL_DIR
    raise OptionError(
        "no model given: pass --model DIR / model_path:=DIR (an InternVL2 checkpoint directory), set "
        "IVL_MODEL, or create a tiny test model with `ivl make-tiny DIR`"
    )


def is_demo_model(path: str | Path) -> bool:
    return Path(path).resolve() == DEMO_MODEL_DIR


def demo_notice(path: str | Path) -> str | None:
    """The line to log when the demo model is in use (None otherwise)."""
    return DEMO_NOTICE.format(path=path) if is_demo_model(path) else None


def resolve_model_path(model: str | Path | None, log: Callable[[str], None] | None = print) -> Path:
    """``model`` if given, else :func:`default_model_path`; ``log`` gets the demo-model line when it is in use."""
    path = Path(model) if model else default_model_path()
    notice = demo_notice(path)
    if notice and log is not None:
        log(notice)
    return path
