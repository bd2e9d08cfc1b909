"""The exported-engines directory: its manifest, and the checks that refuse a mismatched directory.

Torch-free on purpose: the ``onnx`` backend reads this at run time. ``export/build_engines.py`` writes
the manifest with the same names (``MANIFEST_NAME``, ``FORMAT_VERSION``, the ``STAGE_*`` keys).
"""

from __future__ import annotations

import json
from pathlib import Path

from ivl_ros.errors import CheckpointError, IvlError
from ivl_ros.model.spec import checkpoint_hash

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1

STAGE_VISION = "vision_onnx"
STAGE_TENSORRT = "tensorrt"
STAGE_EMBEDDING = "embedding"
STAGE_DECODER = "decoder_onnx"
STAGE_QUANTIZE = "decoder_quant"


class EngineError(IvlError):
    """An exported-engines directory cannot be used (missing, partial, or built for something else)."""


class EngineMismatchError(EngineError):
    """The engines were built from another checkpoint, format or GPU architecture."""


class TileCountError(EngineError):
    """An image needs more tiles than the vision engine's optimization profile allows."""


class TensorRTUnavailableError(EngineError):
    """Neither ``tensorrt`` nor ``tensorrt_rtx`` can be imported, or no usable GPU exists."""


TENSORRT_INSTALL_HINT = ("install TensorRT-RTX with `pip install -r requirements/export.txt` (PyPI tensorrt-rtx-cu13; "
                         "RTX/Ampere/Ada/Blackwell GPUs) or use the `tensorrt` package from JetPack / NVIDIA's index "
                         "(Jetson, data-centre GPUs)")


def default_engines_dir(model_path: str | Path) -> Path:
    """Where engines of a checkpoint live unless told otherwise: a sibling folder ``<checkpoint>-engines``
    (the checkpoint folder itself may be read-only or shared)."""
    model_path = Path(model_path).resolve()
    return model_path.parent / f"{model_path.name}-engines"


def checkpoint_fingerprint(path: str | Path) -> str:
    """The checkpoint's content hash (torch-free: ``ivl_ros.model.spec.checkpoint_hash``)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json; expected a checkpoint directory")
    return checkpoint_hash(path)


def read_manifest(engines_dir: str | Path) -> dict:
    engines_dir = Path(engines_dir)
    file = engines_dir / MANIFEST_NAME
    if not file.is_file():
        raise EngineError(f"{file}: missing; build engines with `python export/build_engines.py --model DIR "
                          f"--out {engines_dir}`")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise EngineError(f"{file}: not valid JSON ({exc.msg}); rebuild the engines") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise EngineMismatchError(f"{file}: manifest format {manifest.get('format')!r}, this ivl_ros reads "
                                  f"format {FORMAT_VERSION}; rebuild the engines")
    return manifest


def check_source(manifest: dict, model_path: Path, engines_dir: Path) -> None:
    """Refuse engines built from another checkpoint (compared by content hash, not by path)."""
    built_from = manifest.get("source", {}).get("checkpoint_hash")
    actual = checkpoint_fingerprint(model_path)
    if built_from != actual:
        raise EngineMismatchError(
            f"{engines_dir}: engines were built from checkpoint {built_from} "
            f"({manifest.get('source', {}).get('path')}), but {model_path} is checkpoint {actual}; "
            f"rebuild with `python export/build_engines.py --model {model_path} --out {engines_dir}`")


def stage_file(manifest: dict, engines_dir: Path, stage: str, key: str = "file") -> Path:
    """The path of a finished stage's output, or a clear refusal if the stage did not finish."""
    info = manifest.get("stages", {}).get(stage)
    if not info or info.get("status") != "done":
        status = info.get("status") if info else "not run"
        reason = f": {info['reason']}" if info and info.get("reason") else ""
        raise EngineError(f"{engines_dir}: stage {stage!r} is {status}{reason}; rebuild the engines")
    path = engines_dir / info["files"][key]
    if not path.is_file():
        raise EngineError(f"{path}: missing although {MANIFEST_NAME} lists it; rebuild the engines")
    return path


def tile_range(manifest: dict) -> tuple[int, int]:
    profile = manifest["vision"]["tile_profile"]
    return int(profile["min"]), int(profile["max"])
