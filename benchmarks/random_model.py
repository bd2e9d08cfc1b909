"""The full-size InternVL2-2B architecture with random weights, built directly on the target device.

No download and no multi-gigabyte checkpoint on disk: a config + tiny tokenizer directory is written
(so the normal config/spec/tokenizer loaders run), the model is created on the meta device, moved to
empty storage on the device and filled with the same random rules as :mod:`ivl_ros.model.tiny`.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import torch

from ivl_ros.errors import OptionError
from ivl_ros.model.checkpoint import LoadedModel, attention_settings, load_config_and_spec, resolve_dtype
from ivl_ros.model.tiny import (
    INTERNVL2_2B_GEOMETRY,
    TINY_GEOMETRY,
    random_tensor,
    tiny_config,
    train_tiny_sentencepiece,
    write_tokenizer_files,
)

GEOMETRIES = {"internvl2-2b": INTERNVL2_2B_GEOMETRY, "tiny": TINY_GEOMETRY}


def write_config_dir(out: Path, geometry: dict, seed: int = 0) -> Path:
    """config.json and tokenizer files of an upstream-layout checkpoint, without weights."""
    out.mkdir(parents=True, exist_ok=True)
    proto = train_tiny_sentencepiece(geometry.get("sp_vocab_size", 1024), seed=seed)
    size = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    (out / "config.json").write_text(json.dumps(tiny_config(size, geometry), indent=2) + "\n")
    write_tokenizer_files(out, proto)
    return out


@torch.no_grad()
def random_model(
    name: str, workdir: Path, device: str = "cuda", dtype: str = "bfloat16", seed: int = 0, attention: str = "sdpa"
) -> LoadedModel:
    from transformers import InternVLForConditionalGeneration

    if name not in GEOMETRIES:
        raise OptionError(f"--random-init {name!r} is not one of {sorted(GEOMETRIES)}")
    path = write_config_dir(Path(workdir) / f"{name}-random", GEOMETRIES[name], seed)
    _, hf_config, spec, tokenizer = load_config_and_spec(path)
    torch_device = torch.device(device)
    hf_config._attn_implementation_internal = None
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(hf_config)
    model.set_attn_implementation(attention_settings(attention))
    model.to_empty(device=torch_device)
    gen = torch.Generator(device=torch_device).manual_seed(seed)
    target = resolve_dtype(dtype)
    for pname, param in model.named_parameters():
        param.data = random_tensor(pname, param.shape, gen).to(target)
    # The tiny tokenizer has ~1k pieces and the full-size vocab 92553 rows: zero the head rows it cannot decode,
    # so greedy output stays decodable (those logits are 0, far below the in-range maximum). The matrix keeps
    # its full size, so the work per token is unchanged.
    model.lm_head.weight[tokenizer.vocab_size :] = 0
    lm = model.model.language_model
    with torch_device:
        lm.rotary_emb = type(lm.rotary_emb)(config=hf_config.text_config)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, layout="random", path=path)
