"""manifest.json writing and hash-based stage skipping for build_engines.

Every stage has a key: a hash of what its output depends on (checkpoint hash, the options that
change it, the keys of the stages it reads, EXPORT_CODE_VERSION). A stage whose recorded key matches
and whose files all have their recorded sha256 is skipped on a re-run; a corrupted or replaced file
makes its stage run again. The hashes are computed here, at build time, for every file a stage lists
(and its ``.data`` external-weights file), and checked by the runtime before it loads anything.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from ivl_ros.model.backends.engines import (
    FORMAT_VERSION,
    HASHES,
    MANIFEST_NAME,
    file_sha256,
    inside,
    remember_verified,
)

# Bump when the export code changes what it writes, so that old outputs are rebuilt.
EXPORT_CODE_VERSION = 1

TOOL_PACKAGES = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxscript",
    "onnx-ir",
    "tensorrt",
    "tensorrt-rtx-cu13",
    "numpy",
)


def tool_versions() -> dict[str, str]:
    out = {}
    for name in TOOL_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def stage_key(**parts) -> str:
    blob = json.dumps({"code": EXPORT_CODE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Manifest:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / MANIFEST_NAME
        self.data: dict = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_bytes().decode("utf-8"))
            except (ValueError, RecursionError):  # not UTF-8, not JSON: everything is rebuilt
                self.data = {}
        if (
            not isinstance(self.data, dict)
            or self.data.get("format") != FORMAT_VERSION
            or not isinstance(self.data.get("stages", {}), dict)
        ):
            self.data = {}
        self.data["format"] = FORMAT_VERSION
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict:
        info = self.data["stages"].get(name, {})
        return info if isinstance(info, dict) else {}

    def is_fresh(self, name: str, key: str) -> bool:
        """The recorded key matches and every file of the stage is inside the folder with its recorded sha256."""
        info = self.stage(name)
        if info.get("key") != key or info.get("status") not in ("done", "skipped"):
            return False
        digests, files = info.get(HASHES), info.get("files", {})
        if not isinstance(digests, dict) or not isinstance(files, dict) or not set(files.values()) <= set(digests):
            return False
        for rel, digest in digests.items():
            path = inside(self.out_dir, rel)
            if path is None or not path.is_file() or file_sha256(path) != digest:
                return False
        remember_verified(self.out_dir, digests)
        return True

    def record(self, name: str, key: str, status: str, files: dict[str, str] | None = None, **info) -> dict:
        """Store a stage's result with the size and sha256 of every file it wrote (external data included)."""
        files = files or {}
        sizes, digests = {}, {}
        for rel in files.values():
            for f in [self.out_dir / rel, self.out_dir / (rel + ".data")]:
                if f.is_file():
                    sizes[str(f.relative_to(self.out_dir))] = f.stat().st_size
                    digests[str(f.relative_to(self.out_dir))] = file_sha256(f)
        remember_verified(self.out_dir, digests)
        entry = {"status": status, "key": key, "files": files, "sizes": sizes, HASHES: digests, **info}
        self.data["stages"][name] = entry
        self.save()
        return entry

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.path)  # atomic, so an interrupted build never leaves half a manifest
