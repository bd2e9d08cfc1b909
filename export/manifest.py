"""manifest.json writing and hash-based stage skipping for build_engines.

Every stage has a key: a hash of what its output depends on (checkpoint hash, the options that
change it, the keys of the stages it reads, EXPORT_CODE_VERSION). A stage whose recorded key matches
and whose files are all present with their recorded sizes is skipped on a re-run.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from ivl_ros.model.backends.engines import FORMAT_VERSION, MANIFEST_NAME

# Bump when the export code changes what it writes, so that old outputs are rebuilt.
EXPORT_CODE_VERSION = 1

TOOL_PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "onnx-ir",
                 "tensorrt", "tensorrt-rtx-cu13", "numpy")


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
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                self.data = {}
        if self.data.get("format") != FORMAT_VERSION:
            self.data = {}
        self.data["format"] = FORMAT_VERSION
        self.data.setdefault("stages", {})

    def stage(self, name: str) -> dict:
        return self.data["stages"].get(name, {})

    def is_fresh(self, name: str, key: str) -> bool:
        info = self.stage(name)
        if info.get("key") != key or info.get("status") not in ("done", "skipped"):
            return False
        for rel, size in info.get("sizes", {}).items():
            f = self.out_dir / rel
            if not f.is_file() or f.stat().st_size != size:
                return False
        return True

    def record(self, name: str, key: str, status: str, files: dict[str, str] | None = None, **info) -> dict:
        """Store a stage's result; sizes cover every file the stage wrote (external data included)."""
        files = files or {}
        sizes = {}
        for rel in files.values():
            for f in [self.out_dir / rel, *sorted(self.out_dir.glob(rel + ".data"))]:
                if f.is_file():
                    sizes[str(f.relative_to(self.out_dir))] = f.stat().st_size
        entry = {"status": status, "key": key, "files": files, "sizes": sizes, **info}
        self.data["stages"][name] = entry
        self.save()
        return entry

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n")
        os.replace(tmp, self.path)  # atomic, so an interrupted build never leaves half a manifest
