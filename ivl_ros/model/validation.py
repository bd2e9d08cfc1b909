"""One validation layer for checkpoint directories: every value read from them is checked before a model is built.

``config.json`` (both layouts), the tokenizer files and the safetensors index and headers are checked for type
and range, then across fields (heads divide the hidden size, KV heads divide heads, the tile is a whole number of
patches, the vocabulary covers the special tokens, ...). Each failure is a :class:`CheckpointError` that names the
file, the key, what was expected and what was found::

    /ckpt/config.json: key 'llm_config.num_attention_heads': expected an integer >= 1, found 0

The key tables below are the one place where the defaults of absent keys are written: :func:`check_config`
returns the config with them filled in, and the loaders read plain keys. Torch-free.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ivl_ros.errors import CheckpointError
from ivl_ros.model.options import MAX_TILES_LIMIT
from ivl_ros.model.prompt import SUPPORTED_TEMPLATES

REQUIRED = object()  # a Key default meaning "must be present"

# Activation names the loaders accept (all are keys of transformers' ACT2FN; a test checks that).
HIDDEN_ACTS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "gelu_accurate",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
)
ROPE_TYPES = ("dynamic", "linear")
NORM_TYPES = ("layer_norm", "rms_norm")


@dataclass(frozen=True)
class Key:
    """One value of a JSON file: where it is, its kind, its range, and its default when absent."""

    path: str  # dotted, from the top of the file
    kind: str  # int | number | bool | str | object | list | size (an int or an [int, int] pair)
    default: Any = REQUIRED
    low: float | None = None  # inclusive, for int / number
    high: float | None = None
    above: float | None = None  # exclusive lower bound, for number
    choices: tuple = ()
    nullable: bool = False  # null is accepted (and kept)

    def expected(self) -> str:
        noun = {
            "int": "an integer",
            "number": "a finite number",
            "bool": "true or false",
            "str": "a string",
            "object": "a JSON object",
            "list": "a list",
            "size": "an integer or a pair of equal integers",
        }
        text = noun[self.kind]
        if self.choices:
            text = "one of " + ", ".join(json.dumps(c, ensure_ascii=False) for c in self.choices)
        bounds = []
        if self.above is not None:
            bounds.append(f"> {self.above:g}")
        if self.low is not None:
            bounds.append(f">= {self.low:g}")
        if self.high is not None:
            bounds.append(f"<= {self.high:g}")
        if bounds:
            text += " " + " and ".join(bounds)
        return text + (" or null" if self.nullable else "")


def _found(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(file: str | Path, key: str, expected: str, found: Any = REQUIRED) -> CheckpointError:
    """The error for one value: file, key, expected and found (``REQUIRED``: the key is missing)."""
    found_text = "nothing (the key is missing)" if found is REQUIRED else _found(found)
    return CheckpointError(f"{file}: key {key!r}: expected {expected}, found {found_text}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "number": _is_number,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "size": lambda v: _is_int(v) or (isinstance(v, list) and len(v) == 2 and all(map(_is_int, v)) and v[0] == v[1]),
}


def _check_value(key: Key, value: Any, file: str | Path) -> None:
    if value is None and key.nullable:
        return
    if not _KIND_CHECKS[key.kind](value):
        raise fail(file, key.path, key.expected(), value)
    assert value is not None, "every kind check refuses null"
    number = value[0] if key.kind == "size" and isinstance(value, list) else value
    if key.choices and value not in key.choices:
        raise fail(file, key.path, key.expected(), value)
    if key.kind in ("int", "number", "size") and (
        (key.low is not None and number < key.low)
        or (key.high is not None and number > key.high)
        or (key.above is not None and number <= key.above)
    ):
        raise fail(file, key.path, key.expected(), value)


def check_keys(data: dict, keys: Sequence[Key], file: str | Path) -> dict:
    """A copy of ``data`` with every key checked and absent defaults filled in (other keys are kept as they are).

    A key below an object that is absent and optional is skipped together with that object."""
    out = copy.deepcopy(data)
    for key in keys:
        *parents, leaf = key.path.split(".")
        node = out
        for i, name in enumerate(parents):
            node = node.get(name) if isinstance(node, dict) else None
            if node is None:
                break
            if not isinstance(node, dict):
                raise fail(file, ".".join(parents[: i + 1]), "a JSON object", node)
        if node is None:
            continue
        if leaf not in node:
            if key.default is REQUIRED:
                raise fail(file, key.path, key.expected())
            node[leaf] = copy.deepcopy(key.default)
            continue
        _check_value(key, node[leaf], file)
    return out


def check_top_object(data: Any, file: str | Path) -> dict:
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{file}: expected a JSON object at the top level, found {type(data).__name__} {_found(data)}"
        )
    return data


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------
LAYOUT_KEYS = (
    Key("architectures", "list", default=None, nullable=True),
    Key("model_type", "str", default=None, nullable=True),
)


def _positive(path: str, default: Any = REQUIRED) -> Key:
    return Key(path, "int", default=default, low=1)


def _activation(path: str, default: str) -> Key:
    return Key(path, "str", default=default, choices=HIDDEN_ACTS)


UPSTREAM_KEYS: tuple[Key, ...] = (
    Key("vision_config", "object"),
    Key("llm_config", "object"),
    Key("ps_version", "str", choices=("v2",)),
    Key("select_layer", "int", default=-1, choices=(-1,)),
    Key("template", "str", default="internlm2-chat", choices=SUPPORTED_TEMPLATES),
    Key("force_image_size", "int", default=None, low=1, nullable=True),
    Key("downsample_ratio", "number", default=0.5, above=0, high=1),
    Key("max_dynamic_patch", "int", default=12, low=1, high=MAX_TILES_LIMIT),
    Key("min_dynamic_patch", "int", default=1, low=1, high=MAX_TILES_LIMIT),
    Key("use_thumbnail", "bool", default=True),
    _positive("vision_config.hidden_size"),
    _positive("vision_config.num_hidden_layers"),
    _positive("vision_config.num_attention_heads"),
    _positive("vision_config.intermediate_size"),
    Key("vision_config.image_size", "int", default=None, low=1, nullable=True),
    _positive("vision_config.patch_size"),
    Key("vision_config.num_channels", "int", default=3, choices=(3,)),
    Key("vision_config.qkv_bias", "bool", default=True),
    Key("vision_config.qk_normalization", "bool", default=False, choices=(False,)),
    Key("vision_config.norm_type", "str", default="layer_norm", choices=NORM_TYPES),
    Key("vision_config.layer_norm_eps", "number", default=1e-6, above=0),
    _activation("vision_config.hidden_act", "gelu"),
    Key("vision_config.initializer_factor", "number", default=1.0),
    Key("llm_config.model_type", "str", choices=("internlm2",)),
    _positive("llm_config.hidden_size"),
    _positive("llm_config.num_hidden_layers"),
    _positive("llm_config.num_attention_heads"),
    _positive("llm_config.intermediate_size"),
    _positive("llm_config.vocab_size"),
    Key("llm_config.num_key_value_heads", "int", default=None, low=1, nullable=True),
    _positive("llm_config.max_position_embeddings", 32768),
    Key("llm_config.rms_norm_eps", "number", default=1e-6, above=0),
    Key("llm_config.rope_theta", "number", default=10000.0, above=0),
    Key("llm_config.rope_scaling", "object", default=None, nullable=True),
    Key("llm_config.rope_scaling.type", "str", choices=ROPE_TYPES),
    Key("llm_config.rope_scaling.factor", "number", low=1),
    _activation("llm_config.hidden_act", "silu"),
    Key("llm_config.bias", "bool", default=False),
    Key("llm_config.bos_token_id", "int", default=1, low=0),
    Key("llm_config.eos_token_id", "int", default=2, low=0),
    Key("llm_config.pad_token_id", "int", default=2, low=0),
)

# The InternVL-level block ``ivl convert`` writes (ModelSpec fields; context_length came later: optional).
SPEC_KEYS: tuple[Key, ...] = (
    _positive("ivl_ros.tile_size"),
    _positive("ivl_ros.tokens_per_tile"),
    Key("ivl_ros.max_dynamic_patch", "int", low=1, high=MAX_TILES_LIMIT),
    Key("ivl_ros.min_dynamic_patch", "int", low=1, high=MAX_TILES_LIMIT),
    Key("ivl_ros.use_thumbnail", "bool"),
    Key("ivl_ros.downsample_ratio", "number", above=0, high=1),
    Key("ivl_ros.ps_version", "str", choices=("v2",)),
    Key("ivl_ros.select_layer", "int", choices=(-1,)),
    Key("ivl_ros.template", "str", choices=SUPPORTED_TEMPLATES),
    Key("ivl_ros.system_message", "str"),
    Key("ivl_ros.image_token_id", "int", low=0),
    _positive("ivl_ros.context_length", None),
)

CONVERTED_KEYS: tuple[Key, ...] = (
    Key("ivl_ros", "object"),
    *SPEC_KEYS,
    Key("image_token_id", "int", low=0),
    Key("downsample_ratio", "number", default=0.5, above=0, high=1),
    Key("projector_hidden_act", "str", default="gelu", choices=HIDDEN_ACTS),
    Key("vision_feature_layer", "int", default=-1, choices=(-1,)),
    Key("text_config", "object"),
    Key("vision_config", "object"),
    Key("text_config.model_type", "str", choices=("llama",)),
    _positive("text_config.hidden_size"),
    _positive("text_config.num_hidden_layers"),
    _positive("text_config.num_attention_heads"),
    _positive("text_config.intermediate_size"),
    _positive("text_config.vocab_size"),
    Key("text_config.num_key_value_heads", "int", default=None, low=1, nullable=True),
    Key("text_config.head_dim", "int", default=None, low=1, nullable=True),
    _positive("text_config.max_position_embeddings", 2048),
    Key("text_config.rms_norm_eps", "number", default=1e-6, above=0),
    _activation("text_config.hidden_act", "silu"),
    Key("text_config.rope_scaling", "object", default=None, nullable=True),
    Key("text_config.rope_parameters", "object", default=None, nullable=True),
    Key("text_config.rope_parameters.rope_theta", "number", default=10000.0, above=0),
    Key("text_config.rope_parameters.factor", "number", default=1.0, low=1),
    Key("text_config.bos_token_id", "int", default=None, low=0, nullable=True),
    Key("text_config.eos_token_id", "int", default=None, low=0, nullable=True),
    Key("text_config.pad_token_id", "int", default=None, low=0, nullable=True),
    _positive("vision_config.hidden_size"),
    _positive("vision_config.num_hidden_layers"),
    _positive("vision_config.num_attention_heads"),
    _positive("vision_config.intermediate_size"),
    Key("vision_config.image_size", "size", low=1),
    Key("vision_config.patch_size", "size", low=1),
    Key("vision_config.num_channels", "int", default=3, choices=(3,)),
    Key("vision_config.layer_norm_eps", "number", default=1e-6, above=0),
    Key("vision_config.norm_type", "str", default="layer_norm", choices=NORM_TYPES),
    Key("vision_config.use_qk_norm", "bool", default=False, choices=(False,)),
    _activation("vision_config.hidden_act", "gelu"),
)


def _divides(file: Path, key: str, what: str, part: int, whole: int, whole_key: str) -> None:
    if whole % part:
        raise fail(file, key, f"a divisor of {whole_key} ({whole}) ({what})", part)


def _check_attention(file: Path, section: str, hidden: int, heads: int, kv: int | None) -> None:
    _divides(
        file,
        f"{section}.num_attention_heads",
        "each head gets hidden_size / heads channels",
        heads,
        hidden,
        f"{section}.hidden_size",
    )
    if kv is not None:
        _divides(
            file,
            f"{section}.num_key_value_heads",
            "query heads are shared out in equal groups",
            kv,
            heads,
            f"{section}.num_attention_heads",
        )


def _check_tiles(file: Path, tile: int, tile_key: str, patch: int, ratio: float, ratio_key: str) -> int:
    """The tile grid of patches and the pixel shuffle after it must come out whole; returns tokens per tile."""
    if tile % patch:
        raise fail(file, tile_key, f"a multiple of the patch size {patch}", tile)
    grid = tile // patch
    shrink = round(1 / ratio)
    if not math.isclose(1 / ratio, shrink) or grid % shrink:
        raise fail(file, ratio_key, f"1/N for a whole N dividing the {grid}x{grid} patch grid (e.g. 0.5)", ratio)
    return (grid // shrink) ** 2


def check_upstream_config(config: dict, file: Path) -> dict:
    """An upstream (OpenGVLab) config.json, checked, with defaults filled in."""
    config = check_keys(config, UPSTREAM_KEYS, file)
    vision, llm = config["vision_config"], config["llm_config"]
    if config["force_image_size"] is None:
        if vision["image_size"] is None:
            raise fail(file, "force_image_size", "the tile size in pixels (or vision_config.image_size)")
        config["force_image_size"] = vision["image_size"]
    if llm["num_key_value_heads"] is None:
        llm["num_key_value_heads"] = llm["num_attention_heads"]
    _check_attention(file, "vision_config", vision["hidden_size"], vision["num_attention_heads"], None)
    _check_attention(file, "llm_config", llm["hidden_size"], llm["num_attention_heads"], llm["num_key_value_heads"])
    if (llm["hidden_size"] // llm["num_attention_heads"]) % 2:
        raise fail(
            file,
            "llm_config.num_attention_heads",
            "a head size (hidden_size / heads) that is even (RoPE rotates channel pairs)",
            llm["num_attention_heads"],
        )
    _check_tiles(
        file,
        config["force_image_size"],
        "force_image_size",
        vision["patch_size"],
        config["downsample_ratio"],
        "downsample_ratio",
    )
    if config["min_dynamic_patch"] > config["max_dynamic_patch"]:
        raise fail(
            file,
            "min_dynamic_patch",
            f"at most max_dynamic_patch ({config['max_dynamic_patch']})",
            config["min_dynamic_patch"],
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if llm[name] >= llm["vocab_size"]:
            raise fail(file, f"llm_config.{name}", f"a token id below vocab_size ({llm['vocab_size']})", llm[name])
    return config


def check_converted_config(config: dict, file: Path) -> dict:
    """A config.json written by ``ivl convert`` (transformers InternVL + the ``ivl_ros`` block), checked."""
    config = check_keys(config, CONVERTED_KEYS, file)
    text, vision, spec = config["text_config"], config["vision_config"], config["ivl_ros"]
    kv = text["num_key_value_heads"] or text["num_attention_heads"]
    _check_attention(file, "text_config", text["hidden_size"], text["num_attention_heads"], kv)
    _check_attention(file, "vision_config", vision["hidden_size"], vision["num_attention_heads"], None)
    tile = vision["image_size"] if isinstance(vision["image_size"], int) else vision["image_size"][0]
    patch = vision["patch_size"] if isinstance(vision["patch_size"], int) else vision["patch_size"][0]
    tokens = _check_tiles(file, tile, "vision_config.image_size", patch, config["downsample_ratio"], "downsample_ratio")
    agreed = {
        "tile_size": tile,
        "tokens_per_tile": tokens,
        "image_token_id": config["image_token_id"],
        "downsample_ratio": config["downsample_ratio"],
    }
    for key, expected in agreed.items():
        if spec[key] != expected:
            raise fail(file, f"ivl_ros.{key}", f"{expected} (as the rest of config.json says)", spec[key])
    if spec["min_dynamic_patch"] > spec["max_dynamic_patch"]:
        raise fail(
            file,
            "ivl_ros.min_dynamic_patch",
            f"at most ivl_ros.max_dynamic_patch ({spec['max_dynamic_patch']})",
            spec["min_dynamic_patch"],
        )
    if spec["context_length"] is None:
        spec["context_length"] = text["max_position_embeddings"]
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if text[name] is not None and text[name] >= text["vocab_size"]:
            raise fail(file, f"text_config.{name}", f"a token id below vocab_size ({text['vocab_size']})", text[name])
    if config["image_token_id"] >= text["vocab_size"]:
        raise fail(
            file,
            "image_token_id",
            f"a token id below text_config.vocab_size ({text['vocab_size']})",
            config["image_token_id"],
        )
    return config


def check_layout_keys(config: dict, file: Path) -> dict:
    config = check_keys(config, LAYOUT_KEYS, file)
    archs = config["architectures"]
    if archs is not None and not all(isinstance(a, str) for a in archs):
        raise fail(file, "architectures", "a list of class names (strings)", archs)
    return config


def model_vocab_size(config: dict, layout: str) -> int:
    return config["llm_config" if layout == "upstream" else "text_config"]["vocab_size"]


# ------------------------------------------------------------------------------------------------
# Tokenizer files
# ------------------------------------------------------------------------------------------------
TOKEN_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def _token_content(value: Any, file: Path, key: str) -> str | None:
    """A token given as a string or as ``{"content": str, ...}`` (null: not set)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        content = value.get("content", REQUIRED)
        if not isinstance(content, str):
            raise fail(file, f"{key}.content", "a string", content)
        return content
    raise fail(file, key, 'a string or {"content": string}', value)


def check_tokenizer_config(config: Any, file: Path) -> tuple[dict[str, int], set[str], dict[str, str | None], list]:
    """tokenizer_config.json -> (added tokens by content, special contents, named tokens, additional specials)."""
    config = check_top_object(config, file)
    added: dict[str, int] = {}
    special: set[str] = set()
    decoder = config.get("added_tokens_decoder")
    decoder = {} if decoder is None else decoder
    if not isinstance(decoder, dict):
        raise fail(file, "added_tokens_decoder", "a JSON object of token id -> token", decoder)
    for idx, entry in decoder.items():
        key = f"added_tokens_decoder.{idx}"
        if not idx.isdigit():
            raise CheckpointError(
                f"{file}: key {key!r}: expected a token id (a non-negative integer) as the key, found {idx!r}"
            )
        if not isinstance(entry, dict):
            raise fail(file, key, 'a JSON object {"content": string, "special": bool}', entry)
        content = entry.get("content", REQUIRED)
        if not isinstance(content, str) or not content:
            raise fail(file, f"{key}.content", "a non-empty string", content)
        is_special = entry.get("special", True)
        if not isinstance(is_special, bool):
            raise fail(file, f"{key}.special", "true or false", is_special)
        added[content] = int(idx)
        if is_special:
            special.add(content)
    names = {name: _token_content(config.get(name), file, name) for name in TOKEN_NAMES}
    return added, special, names, _token_list(config, file)


def _token_list(data: dict, file: Path) -> list[str]:
    extra = data.get("additional_special_tokens")
    if extra is None:
        return []
    if not isinstance(extra, list):
        raise fail(file, "additional_special_tokens", "a list of tokens", extra)
    tokens = []
    for i, value in enumerate(extra):
        content = _token_content(value, file, f"additional_special_tokens.{i}")
        if content is None:  # a list entry names a token: null there is not "unset", it is a broken file
            raise fail(file, f"additional_special_tokens.{i}", 'a string or {"content": string}', value)
        tokens.append(content)
    return tokens


def check_added_tokens(data: Any, file: Path) -> dict[str, int]:
    """added_tokens.json: ``{token: id}``."""
    data = check_top_object(data, file)
    for content, idx in data.items():
        if not _is_int(idx) or idx < 0:
            raise fail(file, content, "a token id (a non-negative integer)", idx)
    return dict(data)


def check_special_tokens_map(data: Any, file: Path) -> tuple[dict[str, str | None], list[str]]:
    data = check_top_object(data, file)
    return {name: _token_content(data.get(name), file, name) for name in TOKEN_NAMES}, _token_list(data, file)


def check_tokenizer_against_config(tokenizer, config: dict, layout: str, image_token_id: int, path: Path) -> None:
    """The model's vocabulary covers every token the tokenizer can produce; the image token ids agree."""
    from ivl_ros.model.prompt import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

    cfg_file = path / "config.json"
    section = "llm_config" if layout == "upstream" else "text_config"
    vocab = model_vocab_size(config, layout)
    if tokenizer.vocab_size > vocab:
        highest = max(tokenizer.added_tokens.items(), key=lambda kv: kv[1], default=("", tokenizer.vocab_size - 1))
        raise fail(
            cfg_file,
            f"{section}.vocab_size",
            f"at least the tokenizer's {tokenizer.vocab_size} tokens (its highest id is {highest[1]}, {highest[0]!r})",
            vocab,
        )
    for token in (IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT):
        if token not in tokenizer.added_tokens:
            raise CheckpointError(
                f"{path}: the tokenizer has no {token} token (tokenizer_config.json "
                "added_tokens_decoder / added_tokens.json); InternVL2 prompts need it"
            )
    if tokenizer.added_tokens[IMG_CONTEXT] != image_token_id:
        raise fail(
            cfg_file,
            "image_token_id" if layout == "converted" else "ivl_ros.image_token_id",
            f"the tokenizer's {IMG_CONTEXT} id {tokenizer.added_tokens[IMG_CONTEXT]}",
            image_token_id,
        )


# ------------------------------------------------------------------------------------------------
# Weights: the shard index and the safetensors headers
# ------------------------------------------------------------------------------------------------
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


def check_shard_index(index: Any, file: Path) -> dict[str, str]:
    """model.safetensors.index.json -> its weight_map (tensor name -> shard file name in the same directory)."""
    index = check_top_object(index, file)
    weight_map = index.get("weight_map", REQUIRED)
    if not isinstance(weight_map, dict) or not weight_map:
        raise fail(file, "weight_map", "a non-empty JSON object of tensor name -> shard file", weight_map)
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors") or Path(shard).name != shard:
            raise fail(file, f"weight_map.{name}", "a .safetensors file name in the checkpoint directory", shard)
    return weight_map


def read_safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked against the file's size (a truncated or corrupt file
    fails here, not inside the loader); ``{name: {"dtype", "shape", "data_offsets"}}``."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{file}: truncated safetensors file ({size} bytes; the 8-byte header length is missing)"
            )
        header_len = int.from_bytes(head, "little")
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise CheckpointError(
                f"{file}: truncated or not a safetensors file (header of {header_len} bytes "
                f"declared, the file has {size} bytes)"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors header (not a JSON object)")
    data_size = size - 8 - header_len
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = 0
    for name, info in tensors.items():
        ok = (
            isinstance(info, dict)
            and info.get("dtype") in SAFETENSORS_DTYPE_BYTES
            and isinstance(info.get("shape"), list)
            and all(_is_int(d) and d >= 0 for d in info["shape"])
            and isinstance(info.get("data_offsets"), list)
            and len(info["data_offsets"]) == 2
            and all(_is_int(o) for o in info["data_offsets"])
        )
        if not ok:
            raise CheckpointError(f"{file}: corrupt safetensors header entry for {name!r}: {_found(info)}")
        begin, stop = info["data_offsets"]
        numel = math.prod(info["shape"])
        if not 0 <= begin <= stop or stop - begin != numel * SAFETENSORS_DTYPE_BYTES[info["dtype"]]:
            raise CheckpointError(
                f"{file}: corrupt safetensors header entry for {name!r}: offsets {begin}..{stop} "
                f"do not hold {info['dtype']} {info['shape']}"
            )
        end = max(end, stop)
    if end > data_size:
        raise CheckpointError(
            f"{file}: truncated safetensors file: its tensors need {end} bytes of data, the file "
            f"holds {data_size} (re-download or re-write it)"
        )
    return tensors
