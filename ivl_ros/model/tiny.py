"""A tiny random InternVL2 checkpoint in the original upstream layout, for tests and demos.

Same architecture family as InternVL2-2B (InternViT with layer scale + pixel shuffle v2 + MLP projector
+ InternLM2 with fused grouped ``wqkv`` and GQA), at a toy size: 112 px tiles, 16 image tokens per
tile, a ~1k-piece sentencepiece BPE tokenizer trained on the fly with byte fallback, no dummy prefix,
the InternLM2 chat tokens and the nine InternVL tokens.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from ivl_ros.errors import OptionError
from ivl_ros.model.checkpoint import save_upstream_tensors, unconvert_state_dict
from ivl_ros.model.prompt import INTERNLM2_SYSTEM_MESSAGE

CHAT_TOKENS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]

TINY_GEOMETRY = {
    "vision": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "image_size": 112,
        "patch_size": 14,
    },
    "llm": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
    },
    "sp_vocab_size": 1024,
}

# The embedded demo captioner (models/ivl-demo): same family, sized so the checkpoint stays under 20 MB.
DEMO_GEOMETRY = {
    "vision": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "image_size": 112,
        "patch_size": 14,
    },
    "llm": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 512,
    },
    "sp_vocab_size": 1024,
}

# The real InternVL2-2B (InternViT-300M-448px + internlm2-chat-1_8b); vocab_size overrides the tokenizer-derived
# size so that the embedding and lm_head have their full 92553 rows even with the ~1k-piece tiny tokenizer.
INTERNVL2_2B_GEOMETRY = {
    "vision": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "image_size": 448,
        "patch_size": 14,
    },
    "llm": {
        "hidden_size": 2048,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "intermediate_size": 8192,
        "vocab_size": 92553,
    },
    "sp_vocab_size": 1024,
}

_OBJECTS = [
    "chair",
    "sofa",
    "table",
    "bed",
    "plant",
    "tv",
    "toilet",
    "sink",
    "door",
    "window",
    "lamp",
    "shelf",
    "cabinet",
    "picture",
    "rug",
    "robot",
    "cup",
    "book",
    "person",
    "dog",
    "cat",
    "car",
    "bicycle",
    "tree",
]
_COLOURS = ["red", "green", "blue", "white", "black", "brown", "grey", "yellow", "orange", "wooden"]
_PLACES = ["living room", "kitchen", "bedroom", "bathroom", "hallway", "office", "garage", "street", "park"]
_RELATIONS = ["on the left", "on the right", "in front of the robot", "far away", "near the wall", "next to the door"]


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [
        INTERNLM2_SYSTEM_MESSAGE,
        "Provide a one-sentence caption for the provided image.",
        "What is in front of the robot?",
        "Would a sofa be found here?",
        "Yes. No. Maybe, it's unclear!",
        "0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 (a) [b] {c} <d> 'e' \"f\" #g @h %i &j *k +l =m ~n ^o |p",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure you've seen they're here; isn't it?",
    ]
    for _ in range(3000):
        obj, obj2 = rng.sample(_OBJECTS, 2)
        lines.append(
            rng.choice(
                [
                    f"A {rng.choice(_COLOURS)} {obj} {rng.choice(_RELATIONS)} in the {rng.choice(_PLACES)}.",
                    f"There are {rng.randint(2, 5)} {obj}s and a {obj2} in the {rng.choice(_PLACES)}.",
                    f"Would a {obj} be found here? {rng.choice(['Yes', 'No'])}, "
                    f"the {obj2} is {rng.choice(_RELATIONS)}.",
                    f"The robot sees a {rng.choice(_COLOURS)} {obj} next to a {obj2}.",
                ]
            )
        )
    return lines


def train_tiny_sentencepiece(vocab_size: int = 1024, seed: int = 0, corpus: Iterable[str] = ()) -> bytes:
    """A BPE sentencepiece model with byte fallback and no dummy prefix (as InternLM2's).

    ``corpus`` adds domain sentences (e.g. a dataset's captions) to the built-in text.
    """
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([*_corpus(seed), *corpus]),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        user_defined_symbols=CHAT_TOKENS,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
        normalization_rule_name="identity",
    )
    return out.getvalue()


def tiny_config(sp_vocab: int, geometry: dict | None = None) -> dict:
    g = geometry or TINY_GEOMETRY
    v, llm = g["vision"], g["llm"]
    remote = {
        "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
        "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
    }
    return {
        "_commit_hash": None,
        "architectures": ["InternVLChatModel"],
        "auto_map": remote,
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": v["image_size"],
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "attn_implementation": "eager",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            },
            "bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 2,
            "hidden_act": "silu",
            "hidden_size": llm["hidden_size"],
            "initializer_range": 0.02,
            "intermediate_size": llm["intermediate_size"],
            "max_position_embeddings": 32768,
            "num_attention_heads": llm["num_attention_heads"],
            "num_hidden_layers": llm["num_hidden_layers"],
            "num_key_value_heads": llm["num_key_value_heads"],
            "rms_norm_eps": 1e-5,
            "rope_scaling": {"factor": 2.0, "type": "dynamic"},
            "rope_theta": 1000000,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "use_cache": True,
            "vocab_size": llm.get("vocab_size", sp_vocab + len(INTERNVL_TOKENS)),
        },
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "model_type": "internvl_chat",
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internlm2-chat",
        "torch_dtype": "float32",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "hidden_act": "gelu",
            "hidden_size": v["hidden_size"],
            "image_size": v["image_size"],
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": v["intermediate_size"],
            "layer_norm_eps": 1e-6,
            "norm_type": "layer_norm",
            "num_attention_heads": v["num_attention_heads"],
            "num_channels": 3,
            "num_hidden_layers": v["num_hidden_layers"],
            "patch_size": v["patch_size"],
            "qk_normalization": False,
            "qkv_bias": True,
            "use_flash_attn": False,
        },
    }


def random_upstream_tensors(
    config: dict, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Random weights, scaled so that activations keep their size and logits are not flat (drawn on ``device``,
    e.g. a GPU for the full-size geometry, and returned on the CPU; each device draws its own numbers)."""
    from ivl_ros.model.checkpoint import hf_config_from_upstream
    from ivl_ros.model.spec import upstream_spec

    # Only the shapes matter here; <IMG_CONTEXT> is the third InternVL token after the sentencepiece pieces.
    image_token_id = config["llm_config"]["vocab_size"] - len(INTERNVL_TOKENS) + 2
    spec = upstream_spec(config, Path("config.json"), image_token_id=image_token_id)
    hf_config = hf_config_from_upstream(config, spec)
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in InternVLForConditionalGeneration(hf_config).state_dict().items()}
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = {name: random_tensor(name, shape, gen).to(dtype=dtype, device="cpu") for name, shape in shapes.items()}
    return unconvert_state_dict(tensors, hf_config)


def random_tensor(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """One transformers-named tensor of random weights, on ``gen``'s device (see random_upstream_tensors)."""

    def randn() -> torch.Tensor:
        return torch.randn(shape, generator=gen, device=gen.device)

    if name.endswith(
        (
            "layernorm_before.weight",
            "layernorm_after.weight",
            "layer_norm.weight",
            "norm.weight",
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
        )
    ):
        return 1.0 + 0.1 * randn()
    if name.endswith(("lambda_1", "lambda_2")):
        return 0.5 + 0.1 * randn()
    if name.endswith("bias"):
        return 0.05 * randn()
    if "embed_tokens" in name or "cls_token" in name or "position_embeddings" in name:
        return randn()
    if name == "lm_head.weight":
        return 4.0 * randn() / shape[-1] ** 0.5
    fan_in = int(np.prod(shape[1:]))
    return randn() / fan_in**0.5


_REMOTE_CODE_TRAP = """# Stand-in for the remote code an upstream checkpoint ships. ivl_ros must never import it.
from pathlib import Path
Path(__file__).with_name("REMOTE_CODE_WAS_EXECUTED").write_text("imported")
raise RuntimeError("remote code from the checkpoint was executed")
"""


def write_tokenizer_files(out: Path, sp_proto: bytes) -> None:
    """tokenizer.model + the three JSON files, as InternVL2-2B ships them."""
    sp = spm.SentencePieceProcessor(model_proto=sp_proto)
    size = sp.get_piece_size()
    (out / "tokenizer.model").write_bytes(sp_proto)
    decoder = {}
    for tok in ["<unk>", "<s>", "</s>", *CHAT_TOKENS]:
        decoder[str(sp.piece_to_id(tok))] = tok
    for i, tok in enumerate(INTERNVL_TOKENS):
        decoder[str(size + i)] = tok
    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {k: {"content": v, **entry} for k, v in decoder.items()},
        "additional_special_tokens": CHAT_TOKENS,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 4096,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    added = {tok: size + i for i, tok in enumerate(INTERNVL_TOKENS)}
    (out / "added_tokens.json").write_text(json.dumps(added, indent=2) + "\n")
    stm = {
        "additional_special_tokens": CHAT_TOKENS,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(stm, indent=2) + "\n")


def make_tiny_checkpoint(
    out_dir: str | Path,
    seed: int = 0,
    geometry: dict | None = None,
    shard_bytes: int | None = None,
    overwrite: bool = False,
    corpus: Iterable[str] = (),
) -> Path:
    """Write a tiny random InternVL2 checkpoint in the upstream layout to ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OptionError(f"{out}: exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    g = geometry or TINY_GEOMETRY
    sp_proto = train_tiny_sentencepiece(g.get("sp_vocab_size", 1024), seed=seed, corpus=corpus)
    sp_size = spm.SentencePieceProcessor(model_proto=sp_proto).get_piece_size()
    config = tiny_config(sp_size, g)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer_files(out, sp_proto)
    save_upstream_tensors(out, random_upstream_tensors(config, seed=seed), max_shard_bytes=shard_bytes)
    for name in ("configuration_internvl_chat.py", "modeling_internvl_chat.py", "tokenization_internlm2.py"):
        (out / name).write_text(_REMOTE_CODE_TRAP)
    return out
