"""Write a trained/merged model as a full checkpoint that every loader of the project reads.

``upstream`` (default): the original InternVL2 layout (upstream tensor names via the core's
``unconvert_state_dict``, fused ``wqkv``), the base's config.json (``max_dynamic_patch`` set to the
training value and ``use_llm_lora`` 0, as upstream's training + merge_lora leave them) and every other
non-weight file of the base (tokenizer files, and the upstream ``*.py`` that upstream users load with
trust_remote_code; ivl_ros never imports them). ``converted``: the transformers layout that ``ivl convert``
writes, produced by the core's ``convert_checkpoint`` from the upstream copy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from ivl_ros.errors import CheckpointError, OptionError
from ivl_ros.model.checkpoint import (
    LoadedModel,
    convert_checkpoint,
    save_upstream_tensors,
    stored_dtype,
    unconvert_state_dict,
)

LAYOUTS = ("upstream", "converted")
SHARD_BYTES = 5 * 1024**3
_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json")


def _is_weight_file(p: Path) -> bool:
    return p.name in _WEIGHT_NAMES or p.suffix in (".safetensors", ".bin", ".pt")


def write_full_checkpoint(
    vlm: torch.nn.Module,
    base: LoadedModel,
    out: str | Path,
    layout: str = "upstream",
    max_dynamic_patch: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``vlm`` (a plain InternVLForConditionalGeneration, adapters merged) next to ``base``'s files."""
    if layout not in LAYOUTS:
        raise OptionError(f"layout {layout!r} is not one of {LAYOUTS}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose a new directory")
    if base.layout != "upstream":
        raise CheckpointError(
            f"{base.path}: the base is in the converted layout; merging needs the original "
            "upstream checkpoint as base (the one that was converted)"
        )
    dtype = dtype or stored_dtype(base.path)
    state = {k: v.detach().to("cpu", dtype) for k, v in vlm.state_dict().items()}
    tensors = unconvert_state_dict(state, vlm.config)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        stage = Path(tmp) / "upstream"
        stage.mkdir()
        for f in base.path.iterdir():
            if f.is_file() and not _is_weight_file(f):
                shutil.copy2(f, stage / f.name)
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        save_upstream_tensors(stage, tensors, max_shard_bytes=SHARD_BYTES if total > SHARD_BYTES else None)
        config = json.loads((stage / "config.json").read_text())
        if max_dynamic_patch is not None:
            config["max_dynamic_patch"] = max_dynamic_patch
        config["use_llm_lora"] = 0
        config["use_backbone_lora"] = 0
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
        config.setdefault("llm_config", {})["torch_dtype"] = config["torch_dtype"]
        (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if layout == "upstream":
            if out.exists():
                out.rmdir()
            shutil.move(str(stage), str(out))
        else:
            convert_checkpoint(stage, out, dtype=config["torch_dtype"])
    return out
