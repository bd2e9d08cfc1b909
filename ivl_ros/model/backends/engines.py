"""The exported-engines directory: its manifest, and the checks that refuse a mismatched directory.

Torch-free on purpose: the ``onnx`` backend reads this at run time. ``export/build_engines.py`` writes
the manifest with the same names (``MANIFEST_NAME``, ``FORMAT_VERSION``, the ``STAGE_*`` keys).

Every file a stage writes is recorded with its sha256 (``HASHES``: relative path -> hex digest, whatever the
stage, so new artifacts are covered by listing them). Loading a stage's file checks every hash of that
stage and refuses a mismatch with "rebuild the engines", so a corrupted artifact never runs silently. A
hash is recomputed only when the file's size, mtime, ctime or inode changed since it was last verified
(``VERIFIED_CACHE`` in the engines directory, when writable), which keeps start-up fast. Every path in the
manifest must resolve inside the engines directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ivl_ros.errors import CheckpointError, IvlError
from ivl_ros.model.spec import checkpoint_hash

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: sha256 of every artifact (``HASHES`` in each stage)
HASHES = "sha256"
VERIFIED_CACHE = ".verified-hashes.json"

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


TENSORRT_INSTALL_HINT = (
    "install TensorRT-RTX with `pip install -r requirements/export.txt` (PyPI tensorrt-rtx-cu13; "
    "RTX/Ampere/Ada/Blackwell GPUs) or use the `tensorrt` package from JetPack / NVIDIA's index "
    "(Jetson, data-centre GPUs)"
)


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


def rebuild_hint(engines_dir: Path, manifest: dict | None = None) -> str:
    source = manifest.get("source") if isinstance(manifest, dict) else None
    model = source.get("path") if isinstance(source, dict) and isinstance(source.get("path"), str) else "DIR"
    return f"rebuild the engines (`python export/build_engines.py --model {model} --out {engines_dir}`)"


def _strict_json(raw: bytes):
    def refuse(name: str):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_manifest(engines_dir: str | Path) -> dict:
    """The manifest, checked for structure; any defect is an EngineError naming the file and the key."""
    engines_dir = Path(engines_dir)
    file = engines_dir / MANIFEST_NAME
    if not file.is_file():
        raise EngineError(
            f"{file}: missing; build engines with `python export/build_engines.py --model DIR --out {engines_dir}`"
        )
    hint = rebuild_hint(engines_dir)
    try:
        manifest = _strict_json(file.read_bytes())
    except UnicodeDecodeError as exc:
        raise EngineError(f"{file}: not UTF-8 text (byte {exc.start}); {hint}") from None
    except ValueError as exc:
        raise EngineError(f"{file}: not valid JSON ({getattr(exc, 'msg', exc)}); {hint}") from None
    except OSError as exc:
        raise EngineError(f"{file}: cannot be read ({exc.strerror}); {hint}") from None
    if not isinstance(manifest, dict):
        raise EngineError(f"{file}: must be a JSON object, found {type(manifest).__name__}; {hint}")
    if manifest.get("format") != FORMAT_VERSION:
        raise EngineMismatchError(
            f"{file}: manifest format {manifest.get('format')!r}, this ivl_ros reads "
            f"format {FORMAT_VERSION}; {rebuild_hint(engines_dir, manifest)}"
        )
    _check_structure(manifest, file, rebuild_hint(engines_dir, manifest))
    return manifest


def _check_structure(manifest: dict, file: Path, hint: str) -> None:
    def need(ok: bool, key: str, expected: str, found) -> None:
        if not ok:
            raise EngineError(f"{file}: {key} must be {expected}, found {json.dumps(found)[:60]}; {hint}")

    for key in ("source", "stages", "vision"):
        need(isinstance(manifest.get(key), dict), f"'{key}'", "an object", manifest.get(key))
    for name, info in manifest["stages"].items():
        need(isinstance(info, dict), f"stages.{name}", "an object", info)
        for key in ("files", HASHES):
            need(isinstance(info.get(key, {}), dict), f"stages.{name}.{key}", "an object", info.get(key))
        for key, value in [*info.get("files", {}).items(), *info.get(HASHES, {}).items()]:
            need(isinstance(value, str), f"stages.{name}: {key!r}", "a string", value)
    profile = manifest["vision"].get("tile_profile")
    need(isinstance(profile, dict), "vision.tile_profile", "an object {min, opt, max}", profile)
    for key in ("min", "opt", "max"):
        value = profile.get(key)
        need(
            isinstance(value, int) and not isinstance(value, bool) and value >= 1,
            f"vision.tile_profile.{key}",
            "a positive integer",
            value,
        )
    need(profile["min"] <= profile["opt"] <= profile["max"], "vision.tile_profile", "min <= opt <= max", profile)
    need(isinstance(manifest.get("decoder", {}), dict), "'decoder'", "an object", manifest.get("decoder"))


def check_source(manifest: dict, model_path: Path, engines_dir: Path) -> None:
    """Refuse engines built from another checkpoint (compared by content hash, not by path)."""
    built_from = manifest.get("source", {}).get("checkpoint_hash")
    actual = checkpoint_fingerprint(model_path)
    if built_from != actual:
        raise EngineMismatchError(
            f"{engines_dir}: engines were built from checkpoint {built_from} "
            f"({manifest.get('source', {}).get('path')}), but {model_path} is checkpoint {actual}; "
            f"rebuild with `python export/build_engines.py --model {model_path} --out {engines_dir}`"
        )


def inside(engines_dir: Path, rel: str) -> Path | None:
    """``engines_dir / rel`` if it resolves (symlinks followed) inside ``engines_dir``, else None."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
        return None
    root = Path(engines_dir).resolve()
    path = (root / rel).resolve()
    return path if path != root and path.is_relative_to(root) else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _read_cache(engines_dir: Path) -> dict:
    try:
        cache = json.loads((engines_dir / VERIFIED_CACHE).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def remember_verified(engines_dir: Path, digests: dict[str, str]) -> None:
    """Record that these files (relative path -> sha256) were hashed as they are now; best effort."""
    engines_dir = Path(engines_dir)
    before = _read_cache(engines_dir)
    cache = dict(before)
    for rel, digest in digests.items():
        try:
            cache[rel] = {"stat": _stat_key(engines_dir / rel), HASHES: digest}
        except OSError:
            cache.pop(rel, None)
    if cache == before:
        return
    try:
        fd, tmp = tempfile.mkstemp(prefix=VERIFIED_CACHE, dir=engines_dir)
        with os.fdopen(fd, "w") as fh:
            json.dump(cache, fh)
        os.replace(tmp, engines_dir / VERIFIED_CACHE)
    except OSError:  # a read-only engines directory: every start-up hashes again
        pass


def verify_stage(manifest: dict, engines_dir: Path, stage: str) -> None:
    """Every file of ``stage`` exists inside ``engines_dir`` and has its recorded sha256."""
    info = manifest["stages"][stage]
    hint = rebuild_hint(engines_dir, manifest)
    digests = info.get(HASHES) or {}
    if not digests:
        raise EngineError(f"{engines_dir / MANIFEST_NAME}: stage {stage!r} records no content hashes; {hint}")
    cache = _read_cache(engines_dir)
    fresh = {}
    for rel, digest in digests.items():
        path = inside(engines_dir, rel)
        if path is None:
            raise EngineError(
                f"{engines_dir / MANIFEST_NAME}: stage {stage!r} lists {rel!r}, which is not inside "
                f"{engines_dir}; {hint}"
            )
        if not path.is_file():
            raise EngineError(f"{engines_dir / rel}: missing although {MANIFEST_NAME} lists it; {hint}")
        seen = cache.get(rel)
        if isinstance(seen, dict) and seen.get(HASHES) == digest and seen.get("stat") == _stat_key(path):
            continue
        if file_sha256(path) != digest:
            raise EngineError(
                f"{engines_dir / rel}: content differs from the build (sha256 mismatch: corrupted or replaced); {hint}"
            )
        fresh[rel] = digest
    if fresh:
        remember_verified(engines_dir, fresh)


def stage_file(manifest: dict, engines_dir: Path, stage: str, key: str = "file") -> Path:
    """The path of a finished stage's output after its hashes are verified, or a clear refusal."""
    info = manifest.get("stages", {}).get(stage)
    if not info or info.get("status") != "done":
        status = info.get("status") if info else "not run"
        reason = f": {info['reason']}" if info and info.get("reason") else ""
        raise EngineError(f"{engines_dir}: stage {stage!r} is {status}{reason}; rebuild the engines")
    hint = rebuild_hint(engines_dir, manifest)
    rel = info.get("files", {}).get(key)
    path = inside(engines_dir, rel) if rel is not None else None
    if rel is None or path is None:
        raise EngineError(
            f"{engines_dir / MANIFEST_NAME}: stage {stage!r} file {key!r} is {rel!r}, not a file "
            f"inside {engines_dir}; {hint}"
        )
    digests = info.get(HASHES) or {}
    if not digests:
        raise EngineError(f"{engines_dir / MANIFEST_NAME}: stage {stage!r} records no content hashes; {hint}")
    for needed in (rel, rel + ".data"):
        if needed not in digests and (needed == rel or (engines_dir / needed).exists()):
            raise EngineError(f"{engines_dir / needed}: stage {stage!r} uses it but records no hash for it; {hint}")
    verify_stage(manifest, engines_dir, stage)
    return path


def tile_range(manifest: dict) -> tuple[int, int]:
    profile = manifest["vision"]["tile_profile"]
    return int(profile["min"]), int(profile["max"])
