"""Checkpoint settings that need no torch: config.json reading, layout detection, InternVL settings.

Kept apart from :mod:`ivl_ros.model.checkpoint` so that the ONNX/TensorRT runtime path imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ivl_ros.errors import CheckpointError
from ivl_ros.jsonfile import read_json
from ivl_ros.model.prompt import INTERNLM2_SYSTEM_MESSAGE, SUPPORTED_TEMPLATES


@dataclass(frozen=True)
class ModelSpec:
    """InternVL-level settings that the transformers config does not carry."""

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

    def to_json(self) -> dict:
        return asdict(self)


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; expected a checkpoint directory with config.json")
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: missing; a checkpoint directory needs config.json")
    return read_json(cfg_file, "checkpoint config", CheckpointError)


def checkpoint_layout(config: dict, cfg_file: Path) -> str:
    archs = config.get("architectures") or []
    if "InternVLChatModel" in archs or config.get("model_type") == "internvl_chat":
        return "upstream"
    if "InternVLForConditionalGeneration" in archs or config.get("model_type") == "internvl":
        return "converted"
    raise CheckpointError(
        f"{cfg_file}: unknown architecture {archs or config.get('model_type')!r}; expected InternVLChatModel "
        "(upstream InternVL2 layout) or InternVLForConditionalGeneration (converted by `ivl convert`)")


def _require(section: dict, key: str, where: str):
    if key not in section:
        raise CheckpointError(f"{where}: missing key {key!r}")
    return section[key]


def upstream_spec(config: dict, cfg_file: Path, image_token_id: int) -> ModelSpec:
    vision = _require(config, "vision_config", str(cfg_file))
    llm = _require(config, "llm_config", str(cfg_file))
    llm_type = llm.get("model_type")
    if llm_type != "internlm2":
        raise CheckpointError(f"{cfg_file}: llm_config.model_type is {llm_type!r}; only 'internlm2' is supported")
    if config.get("ps_version", "v1") != "v2":
        raise CheckpointError(f"{cfg_file}: ps_version {config.get('ps_version')!r} is not supported; expected 'v2'")
    if config.get("select_layer", -1) != -1:
        raise CheckpointError(f"{cfg_file}: select_layer {config['select_layer']} is not supported; expected -1")
    if vision.get("qk_normalization"):
        raise CheckpointError(f"{cfg_file}: vision_config.qk_normalization true is not supported (InternViT-6B)")
    template = config.get("template", "internlm2-chat")
    if template not in SUPPORTED_TEMPLATES:
        raise CheckpointError(
            f"{cfg_file}: template {template!r} is not supported; expected one of {SUPPORTED_TEMPLATES}")
    tile = int(config.get("force_image_size") or _require(vision, "image_size", f"{cfg_file} vision_config"))
    patch = int(_require(vision, "patch_size", f"{cfg_file} vision_config"))
    ratio = float(config.get("downsample_ratio", 0.5))
    if tile % patch:
        raise CheckpointError(f"{cfg_file}: force_image_size {tile} is not a multiple of patch_size {patch}")
    tokens = int((tile // patch) ** 2 * ratio**2)
    return ModelSpec(
        tile_size=tile, tokens_per_tile=tokens, max_dynamic_patch=int(config.get("max_dynamic_patch", 12)),
        min_dynamic_patch=int(config.get("min_dynamic_patch", 1)),
        use_thumbnail=bool(config.get("use_thumbnail", True)),
        downsample_ratio=ratio, ps_version="v2", select_layer=-1, template=template,
        system_message=INTERNLM2_SYSTEM_MESSAGE, image_token_id=image_token_id)


def load_spec(path: str | Path):
    """(layout, spec, tokenizer) of a checkpoint directory, without torch or weights."""
    from ivl_ros.model.prompt import IMG_CONTEXT
    from ivl_ros.model.tokenizer import InternLM2Tokenizer

    path = Path(path)
    config = read_config(path)
    layout = checkpoint_layout(config, path / "config.json")
    tokenizer = InternLM2Tokenizer.from_dir(path)
    if layout == "upstream":
        if IMG_CONTEXT not in tokenizer.added_tokens:
            raise CheckpointError(f"{path}: the tokenizer has no {IMG_CONTEXT} token (tokenizer_config.json / "
                                  "added_tokens.json); expected the 9 InternVL image/grounding tokens")
        spec = upstream_spec(config, path / "config.json", tokenizer.added_tokens[IMG_CONTEXT])
    else:
        if "ivl_ros" not in config:
            raise CheckpointError(f"{path / 'config.json'}: missing key 'ivl_ros' (written by `ivl convert`)")
        spec = ModelSpec(**config["ivl_ros"])
    return layout, spec, tokenizer


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
        files = sorted({path / f for f in weight_map.values()})
        missing = [f for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard {missing[0].name}, which is missing from {path}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(f"{path}: only pickle weights (.bin/.pt) found; convert them to safetensors "
                              "(pickle files can execute code and are not loaded)")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


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
