"""Checkpoints: the upstream InternVL2 layout -> transformers' native InternVL classes.

Two layouts load:

* ``upstream``: what OpenGVLab publishes (``config.json`` with ``InternVLChatModel`` and an
  ``internlm2`` ``llm_config``, safetensors single or sharded, sentencepiece tokenizer files). Its
  tensors are renamed/split by :data:`KEY_RULES` in memory. Python files in the directory (the
  ``auto_map`` remote code) are never imported.
* ``converted``: a transformers ``save_pretrained`` directory written by :func:`convert_checkpoint`
  (``ivl convert``), which carries the InternVL-level settings in ``config.json["ivl_ros"]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ivl_ros.errors import CheckpointError, OptionError
from ivl_ros.model import options
from ivl_ros.model.spec import (
    ModelSpec,
    checkpoint_hash,  # noqa: F401  (re-exported: callers use checkpoint.checkpoint_hash)
    load_checkpoint_info,
    stored_dtype_name,
    weight_files,
)
from ivl_ros.model.tokenizer import InternLM2Tokenizer
from ivl_ros.model.validation import check_upstream_config
from ivl_ros.outdir import check_output_dir, make_output_dir

if TYPE_CHECKING:
    from transformers import InternVLForConditionalGeneration

DTYPES = {name: getattr(torch, name) for name in options.DTYPES}
ATTENTION = options.ATTENTION_MODES
SAFETENSORS_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def hf_config_from_upstream(config: dict, spec: ModelSpec):
    """Build the transformers InternVLConfig equivalent to an upstream config (checked, defaults filled in by
    :func:`~ivl_ros.model.validation.check_upstream_config`, which this calls again: cheap and idempotent)."""
    from transformers import InternVLConfig, InternVLVisionConfig, LlamaConfig

    config = check_upstream_config(config, Path("config.json"))
    vision, llm = config["vision_config"], config["llm_config"]
    vision_cfg = InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        image_size=[spec.tile_size, spec.tile_size],
        patch_size=[vision["patch_size"]] * 2,
        num_channels=vision["num_channels"],
        attention_bias=vision["qkv_bias"],
        use_qk_norm=False,
        norm_type=vision["norm_type"],
        layer_norm_eps=vision["layer_norm_eps"],
        hidden_act=vision["hidden_act"],
        # "mean pooling" true means: no final LayerNorm after the last layer, as upstream.
        use_mean_pooling=True,
        layer_scale_init_value=vision["initializer_factor"],
        attention_dropout=0.0,
        projection_dropout=0.0,
        hidden_dropout_prob=0.0,
        drop_path_rate=0.0,  # pyright: ignore[reportCallIssue]  (an extra config attribute, kept as given)
    )
    rope = llm["rope_scaling"]
    text_cfg = LlamaConfig(
        hidden_size=llm["hidden_size"],
        num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm["num_key_value_heads"],
        intermediate_size=llm["intermediate_size"],
        vocab_size=llm["vocab_size"],
        max_position_embeddings=llm["max_position_embeddings"],
        rms_norm_eps=llm["rms_norm_eps"],
        # Legacy names, not in the signature: transformers 5 folds them into rope_parameters.
        rope_theta=llm["rope_theta"],  # pyright: ignore[reportCallIssue]
        rope_scaling={"type": rope["type"], "factor": rope["factor"]} if rope else None,  # pyright: ignore[reportCallIssue]
        hidden_act=llm["hidden_act"],
        attention_bias=llm["bias"],
        mlp_bias=False,
        tie_word_embeddings=False,
        bos_token_id=llm["bos_token_id"],
        eos_token_id=llm["eos_token_id"],
        pad_token_id=llm["pad_token_id"],
    )
    # tie_word_embeddings must be given at the top level too: InternVLConfig defaults it to true.
    return InternVLConfig(
        vision_config=vision_cfg,
        text_config=text_cfg,
        image_token_id=spec.image_token_id,
        downsample_ratio=spec.downsample_ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=spec.tokens_per_tile,
        tie_word_embeddings=False,
    )


# ------------------------------------------------------------------------------------------------
# Tensor names: upstream -> transformers
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fused:
    """One upstream tensor that is several transformers tensors: how to split and join it."""

    split: Callable[[torch.Tensor, object], list[torch.Tensor]]
    join: Callable[[list[torch.Tensor], object], torch.Tensor]


def _split_vit_qkv(t: torch.Tensor, cfg) -> list[torch.Tensor]:
    # Upstream reshapes to (3, heads, head_dim): three equal row blocks Q, K, V.
    return list(t.chunk(3, dim=0))


def _join_vit_qkv(parts: list[torch.Tensor], cfg) -> torch.Tensor:
    return torch.cat(parts, dim=0)


def _split_wqkv(t: torch.Tensor, cfg) -> list[torch.Tensor]:
    # Fused wqkv rows are grouped per KV head: [q * (heads/kv), k, v] for each group.
    text = cfg.text_config
    kv, heads = text.num_key_value_heads, text.num_attention_heads
    head_dim = text.hidden_size // heads
    groups = heads // kv
    w = t.reshape(kv, groups + 2, head_dim, t.shape[-1])
    q = w[:, :groups].reshape(heads * head_dim, -1)
    k = w[:, groups].reshape(kv * head_dim, -1)
    v = w[:, groups + 1].reshape(kv * head_dim, -1)
    return [q, k, v]


def _join_wqkv(parts: list[torch.Tensor], cfg) -> torch.Tensor:
    q, k, v = parts
    text = cfg.text_config
    kv, heads = text.num_key_value_heads, text.num_attention_heads
    head_dim = text.hidden_size // heads
    groups = heads // kv
    hidden = q.shape[-1]
    qg = q.reshape(kv, groups, head_dim, hidden)
    fused = torch.cat([qg, k.reshape(kv, 1, head_dim, hidden), v.reshape(kv, 1, head_dim, hidden)], dim=1)
    return fused.reshape(-1, hidden)


VIT_QKV = Fused(_split_vit_qkv, _join_vit_qkv)
LLM_WQKV = Fused(_split_wqkv, _join_wqkv)

VIT = r"vision_model\.encoder\.layers\.(\d+)\."
LLM = r"language_model\.model\.layers\.(\d+)\."
HF_VIT = "model.vision_tower.encoder.layer.{0}."
HF_LLM = "model.language_model.layers.{0}."

# (upstream regex, target name template(s), how a fused tensor splits). One table, read both ways.
KEY_RULES: list[tuple[str, tuple[str, ...], Fused | None]] = [
    (r"vision_model\.embeddings\.class_embedding", ("model.vision_tower.embeddings.cls_token",), None),
    (r"vision_model\.embeddings\.position_embedding", ("model.vision_tower.embeddings.position_embeddings",), None),
    (
        r"vision_model\.embeddings\.patch_embedding\.(weight|bias)",
        ("model.vision_tower.embeddings.patch_embeddings.projection.{0}",),
        None,
    ),
    (VIT + r"attn\.qkv\.(weight|bias)", tuple(HF_VIT + f"attention.{p}_proj.{{1}}" for p in "qkv"), VIT_QKV),
    (VIT + r"attn\.proj\.(weight|bias)", (HF_VIT + "attention.projection_layer.{1}",), None),
    (VIT + r"norm1\.(weight|bias)", (HF_VIT + "layernorm_before.{1}",), None),
    (VIT + r"norm2\.(weight|bias)", (HF_VIT + "layernorm_after.{1}",), None),
    (VIT + r"ls1", (HF_VIT + "lambda_1",), None),
    (VIT + r"ls2", (HF_VIT + "lambda_2",), None),
    (VIT + r"mlp\.(fc1|fc2)\.(weight|bias)", (HF_VIT + "mlp.{1}.{2}",), None),
    (r"mlp1\.0\.(weight|bias)", ("model.multi_modal_projector.layer_norm.{0}",), None),
    (r"mlp1\.1\.(weight|bias)", ("model.multi_modal_projector.linear_1.{0}",), None),
    (r"mlp1\.3\.(weight|bias)", ("model.multi_modal_projector.linear_2.{0}",), None),
    (r"language_model\.model\.tok_embeddings\.weight", ("model.language_model.embed_tokens.weight",), None),
    (LLM + r"attention\.wqkv\.weight", tuple(HF_LLM + f"self_attn.{p}_proj.weight" for p in "qkv"), LLM_WQKV),
    (LLM + r"attention\.wo\.weight", (HF_LLM + "self_attn.o_proj.weight",), None),
    (LLM + r"feed_forward\.w1\.weight", (HF_LLM + "mlp.gate_proj.weight",), None),
    (LLM + r"feed_forward\.w3\.weight", (HF_LLM + "mlp.up_proj.weight",), None),
    (LLM + r"feed_forward\.w2\.weight", (HF_LLM + "mlp.down_proj.weight",), None),
    (LLM + r"attention_norm\.weight", (HF_LLM + "input_layernorm.weight",), None),
    (LLM + r"ffn_norm\.weight", (HF_LLM + "post_attention_layernorm.weight",), None),
    (r"language_model\.model\.norm\.weight", ("model.language_model.norm.weight",), None),
    (r"language_model\.output\.weight", ("lm_head.weight",), None),
]
_COMPILED = [(re.compile(src + "$"), dst, fused) for src, dst, fused in KEY_RULES]
# Non-persistent buffers that some exports include; they are recomputed.
_IGNORED = re.compile(r".*\.inv_freq$")


def map_upstream_key(name: str) -> tuple[tuple[str, ...], Fused | None] | None:
    for pattern, targets, fused in _COMPILED:
        m = pattern.match(name)
        if m:
            return tuple(t.format(*m.groups()) for t in targets), fused
    return None


def convert_state_dict(tensors: dict[str, torch.Tensor], hf_config, source: str) -> dict[str, torch.Tensor]:
    """Rename/split upstream tensors into transformers names; unknown names are an error."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in tensors.items():
        if _IGNORED.match(name):
            continue
        mapped = map_upstream_key(name)
        if mapped is None:
            unknown.append(name)
            continue
        targets, fused = mapped
        parts = fused.split(tensor, hf_config) if fused else [tensor]
        for target, part in zip(targets, parts, strict=True):
            out[target] = part.contiguous()
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(f"{source}: unexpected tensors for InternVL2: {', '.join(unknown[:5])}{more}")
    return out


def upstream_names(hf_config) -> list[str]:
    """Every tensor name of an upstream checkpoint with this geometry, in upstream order."""
    vision, text = hf_config.vision_config, hf_config.text_config
    names = [
        "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.position_embedding",
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.embeddings.patch_embedding.bias",
    ]
    for i in range(vision.num_hidden_layers):
        p = f"vision_model.encoder.layers.{i}."
        names += [p + "ls1", p + "ls2"]
        names += [
            p + f"{m}.{w}"
            for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")
            for w in ("weight", "bias")
        ]
    names += [f"mlp1.{j}.{w}" for j in (0, 1, 3) for w in ("weight", "bias")]
    names.append("language_model.model.tok_embeddings.weight")
    for i in range(text.num_hidden_layers):
        p = f"language_model.model.layers.{i}."
        names += [
            p + m + ".weight"
            for m in (
                "attention.wqkv",
                "attention.wo",
                "feed_forward.w1",
                "feed_forward.w2",
                "feed_forward.w3",
                "attention_norm",
                "ffn_norm",
            )
        ]
    names += ["language_model.model.norm.weight", "language_model.output.weight"]
    return names


def unconvert_state_dict(tensors: dict[str, torch.Tensor], hf_config) -> dict[str, torch.Tensor]:
    """transformers names -> upstream names (the inverse of :func:`convert_state_dict`, same table)."""
    out: dict[str, torch.Tensor] = {}
    for name in upstream_names(hf_config):
        rule = map_upstream_key(name)
        assert rule is not None, f"{name}: upstream_names lists a name the key table has no rule for"
        targets, fused = rule
        parts = [tensors[t] for t in targets]
        out[name] = fused.join(parts, hf_config) if fused else parts[0]
    return out


# ------------------------------------------------------------------------------------------------
# Safetensors files
# ------------------------------------------------------------------------------------------------
def read_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    tensors[key] = fh.get_tensor(key)
        except Exception as exc:  # safetensors raises SafetensorError with a header message
            raise CheckpointError(f"{f}: cannot read safetensors ({exc})") from None
    return tensors


# ------------------------------------------------------------------------------------------------
# Attention matching upstream InternLM2 eager numerics
# ------------------------------------------------------------------------------------------------
def _internlm2_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    # Upstream divides the scores by sqrt(head_dim); transformers multiplies by head_dim**-0.5. The two
    # round differently, so in fp32 this is what makes logits bit-identical to upstream.
    from transformers.models.llama.modeling_llama import repeat_kv

    groups = query.shape[1] // key.shape[1]
    key = repeat_kv(key, groups)
    value = repeat_kv(value, groups)
    weights = torch.matmul(query, key.transpose(2, 3)) / math.sqrt(query.shape[-1])
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


_REGISTERED = False


def _register_attention() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register("internlm2_eager", _internlm2_eager_attention)
    AttentionMaskInterface.register("internlm2_eager", ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    _REGISTERED = True


def attention_settings(attention: str) -> dict[str, str]:
    """Per-sub-model attention implementations for an ``attention`` choice."""
    if attention not in ATTENTION:
        raise OptionError(f"attention {attention!r} is not one of {ATTENTION}")
    if attention == "exact":
        _register_attention()
        return {"text_config": "internlm2_eager", "vision_config": "eager", "": "eager"}
    return {"text_config": attention, "vision_config": attention, "": attention}


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    model: InternVLForConditionalGeneration
    tokenizer: InternLM2Tokenizer
    spec: ModelSpec
    layout: str
    path: Path


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise OptionError(f"dtype {dtype!r} is not one of {tuple(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    options.check_device_name(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"device {device!r} requested but CUDA is not available on this machine")
        index = torch.device(device).index
        if index is not None and index >= torch.cuda.device_count():
            raise OptionError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(device)


def load_config_and_spec(path: str | Path):
    """(layout, hf_config, spec, tokenizer) of a checked checkpoint; weights are neither read nor required."""
    info = load_checkpoint_info(path, weights=False)
    if info.layout == "upstream":
        hf_config = hf_config_from_upstream(info.config, info.spec)
    else:
        from transformers import InternVLConfig

        hf_config = InternVLConfig.from_pretrained(info.path)
    return info.layout, hf_config, info.spec, info.tokenizer


def load_model(
    path: str | Path, device: str = "cpu", dtype: str | torch.dtype = "float32", attention: str | None = None
) -> LoadedModel:
    """Load either layout into ``InternVLForConditionalGeneration`` in eval mode.

    ``attention``: ``exact`` (upstream-identical numerics: eager, scores divided by sqrt(d)),
    ``eager`` or ``sdpa``. Default: ``exact`` on CPU in float32, ``sdpa`` otherwise.
    """
    from transformers import InternVLForConditionalGeneration

    path = Path(path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    if attention is None:
        attention = "exact" if torch_device.type == "cpu" and torch_dtype == torch.float32 else "sdpa"
    attn = attention_settings(attention)
    layout, hf_config, spec, tokenizer = load_config_and_spec(path)
    if layout == "upstream":
        tensors = convert_state_dict(read_tensors(weight_files(path)), hf_config, str(path))
        model = _build_from_state_dict(hf_config, tensors, torch_dtype, torch_device, attn, path)
    else:
        weight_files(path)  # headers checked: a truncated file is a CheckpointError, not a loader traceback
        with_info = InternVLForConditionalGeneration.from_pretrained(
            path, dtype=torch_dtype, attn_implementation=attn, output_loading_info=True
        )
        model, info = cast("tuple[InternVLForConditionalGeneration, dict]", with_info)
        problems = info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys")
        if problems:
            raise CheckpointError(f"{path}: weights do not match the config: {sorted(problems)[:5]}")
        model.to(torch_device)  # pyright: ignore[reportArgumentType]  (transformers' wrapped .to() signature)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, layout=layout, path=path)


def _build_from_state_dict(hf_config, tensors, dtype, device, attn, path: Path):
    from transformers import InternVLForConditionalGeneration

    hf_config._attn_implementation_internal = None
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(hf_config)
    model.set_attn_implementation(attn)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(f"{path}: missing tensors {', '.join(missing[:3])}{more} (checkpoint is partial?)")
    for name, ref in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{path}: tensor for {name} has shape {tuple(got.shape)}, the config expects {tuple(ref.shape)}"
            )
        if not got.is_floating_point():
            raise CheckpointError(f"{path}: tensor for {name} has dtype {got.dtype}; expected a floating point type")
        tensors[name] = got.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    # Non-persistent RoPE buffers were created on the meta device: rebuild them in float32.
    lm = model.model.language_model
    with torch.device(device):
        lm.rotary_emb = type(lm.rotary_emb)(config=hf_config.text_config)
    left = [n for n, b in model.named_buffers() if b.is_meta] + [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: internal error, uninitialised tensors after loading: {left[:3]}")
    return model


# ------------------------------------------------------------------------------------------------
# Conversion
# ------------------------------------------------------------------------------------------------
def convert_checkpoint(src: str | Path, dst: str | Path, dtype: str | None = None) -> Path:
    """Write a transformers-layout copy of an upstream checkpoint (``ivl convert``)."""
    src, dst = Path(src), Path(dst)
    check_output_dir(dst, "destination", must_be_empty=True)  # before the slow load
    if load_checkpoint_info(src).layout != "upstream":
        raise CheckpointError(f"{src}: already in the converted (transformers) layout")
    loaded = load_model(src, device="cpu", dtype=dtype or stored_dtype(src))
    make_output_dir(dst, "destination", must_be_empty=True)
    model = loaded.model
    model.config.ivl_ros = loaded.spec.to_json()
    model.config.architectures = ["InternVLForConditionalGeneration"]
    # Loading picks the attention implementation; do not freeze the custom one into config.json.
    model.set_attn_implementation("sdpa")
    model.save_pretrained(dst)
    loaded.tokenizer.write_hf_files(dst)
    _write_processor_config(dst, loaded.spec)
    return dst


def stored_dtype(path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's tensors are stored in (copies written from it keep it), from the file header."""
    name = stored_dtype_name(Path(path))
    if name not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{weight_files(Path(path))[0]}: tensors are stored as {name}; expected a floating "
            f"point type ({', '.join(SAFETENSORS_DTYPES)})"
        )
    return SAFETENSORS_DTYPES[name]


def _write_processor_config(dst: Path, spec: ModelSpec) -> None:
    """A GotOcr2 image-processor config reproducing upstream tiling (for plain transformers users)."""
    processor = {
        "image_processor_type": "GotOcr2ImageProcessor",
        "crop_to_patches": True,
        "min_patches": spec.min_dynamic_patch,
        "max_patches": spec.max_dynamic_patch,
        "size": {"height": spec.tile_size, "width": spec.tile_size},
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "do_convert_rgb": True,
    }
    (dst / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


def save_upstream_tensors(path: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None = None) -> None:
    """Write upstream-named tensors as one safetensors file, or shards + index when over the limit."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if max_shard_bytes is None:
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
