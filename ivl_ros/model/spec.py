"""Checkpoint settings that need no torch: config.json reading, layout detection, InternVL settings.

Kept apart from :mod:`ivl_ros.model.checkpoint` so that the ONNX/TensorRT runtime path imports no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from ivl_ros.errors import CheckpointError
from ivl_ros.jsonfile import read_json
from ivl_ros.model.prompt import IMG_CONTEXT, INTERNLM2_SYSTEM_MESSAGE
from ivl_ros.model.tokenizer import InternLM2Tokenizer
from ivl_ros.model.validation import (
    check_converted_config,
    check_layout_keys,
    check_shard_index,
    check_tokenizer_against_config,
    check_top_object,
    check_upstream_config,
    read_safetensors_header,
)


@dataclass(frozen=True)
class ModelSpec:
    """InternVL-level settings that the transformers config does not carry (and the LLM's context length)."""

    tile_size: int
    tokens_per_tile: int
    max_dynamic_patch: int
    min_dynamic_patch: int
    use_thumbnail: bool
    downsample_ratio: float
    ps_version: str
    select_layer: int
    template: str
    system_message: str
    image_token_id: int
    context_length: int = 32768  # the LLM's max_position_embeddings: the longest prompt the engine accepts

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint directory after every check: its layout, config.json with defaults filled, spec, tokenizer."""

    path: Path
    layout: str
    config: dict
    spec: ModelSpec
    tokenizer: InternLM2Tokenizer


def read_config(path: Path) -> dict:
    """config.json as a JSON object (not yet checked field by field: see :func:`load_checkpoint_info`)."""
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; expected a checkpoint directory with config.json")
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: missing; a checkpoint directory needs config.json")
    return check_top_object(read_json(cfg_file, "checkpoint config", CheckpointError), cfg_file)


def checkpoint_layout(config: dict, cfg_file: Path) -> str:
    config = check_layout_keys(config, cfg_file)
    archs = config["architectures"] or []
    if "InternVLChatModel" in archs or config["model_type"] == "internvl_chat":
        return "upstream"
    if "InternVLForConditionalGeneration" in archs or config["model_type"] == "internvl":
        return "converted"
    raise CheckpointError(
        f"{cfg_file}: unknown architecture {archs or config['model_type']!r}; expected InternVLChatModel "
        "(upstream InternVL2 layout) or InternVLForConditionalGeneration (converted by `ivl convert`)"
    )


def upstream_spec(config: dict, cfg_file: Path, image_token_id: int) -> ModelSpec:
    """The spec of an upstream config.json (checked here, so callers may pass it raw)."""
    config = check_upstream_config(config, cfg_file)
    tile, patch, ratio = config["force_image_size"], config["vision_config"]["patch_size"], config["downsample_ratio"]
    return ModelSpec(
        tile_size=tile,
        tokens_per_tile=int((tile // patch) ** 2 * ratio**2),
        max_dynamic_patch=config["max_dynamic_patch"],
        min_dynamic_patch=config["min_dynamic_patch"],
        use_thumbnail=config["use_thumbnail"],
        downsample_ratio=float(ratio),
        ps_version="v2",
        select_layer=-1,
        template=config["template"],
        system_message=INTERNLM2_SYSTEM_MESSAGE,
        image_token_id=image_token_id,
        context_length=config["llm_config"]["max_position_embeddings"],
    )


def load_checkpoint_info(path: str | Path, weights: bool = True) -> CheckpointInfo:
    """Check a checkpoint directory (config.json, tokenizer files and, with ``weights``, the shard index and
    safetensors headers) without torch; every problem is a CheckpointError naming file and key."""
    path = Path(path)
    cfg_file = path / "config.json"
    config = read_config(path)
    layout = checkpoint_layout(config, cfg_file)
    if layout == "upstream":
        config = check_upstream_config(config, cfg_file)
    else:
        config = check_converted_config(config, cfg_file)
    tokenizer = InternLM2Tokenizer.from_dir(path)
    if layout == "upstream":
        if IMG_CONTEXT not in tokenizer.added_tokens:
            raise CheckpointError(
                f"{path}: the tokenizer has no {IMG_CONTEXT} token (tokenizer_config.json / "
                "added_tokens.json); expected the 9 InternVL image/grounding tokens"
            )
        spec = upstream_spec(config, cfg_file, tokenizer.added_tokens[IMG_CONTEXT])
    else:
        spec = ModelSpec(**config["ivl_ros"])
    check_tokenizer_against_config(tokenizer, config, layout, spec.image_token_id, path)
    if weights:
        weight_files(path)
    return CheckpointInfo(path, layout, config, spec, tokenizer)


def load_spec(path: str | Path) -> tuple[str, ModelSpec, InternLM2Tokenizer]:
    """(layout, spec, tokenizer) of a checked checkpoint directory, without torch or weights."""
    info = load_checkpoint_info(path)
    return info.layout, info.spec, info.tokenizer


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files (single or sharded), each checked against its header."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = check_shard_index(read_json(index, "safetensors index", CheckpointError), index)
        files = sorted({path / f for f in weight_map.values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard {missing[0].name}, which is missing from {path}")
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(
            f"{path}: only pickle weights (.bin/.pt) found; convert them to safetensors "
            "(pickle files can execute code and are not loaded)"
        )
    else:
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for f in files:
        read_safetensors_header(f)
    return files


def stored_dtype_name(path: Path) -> str:
    """The safetensors dtype (e.g. ``F32``, ``BF16``) of the checkpoint's first tensor, from its header."""
    header = read_safetensors_header(weight_files(path)[0])
    if not header:
        raise CheckpointError(f"{weight_files(path)[0]}: holds no tensors")
    return next(iter(header.values()))["dtype"]


def checkpoint_hash(path: str | Path) -> str:
    """A content hash of the weight files + config (used to match exported engines to a checkpoint)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in [path / "config.json", *weight_files(path)]:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]
