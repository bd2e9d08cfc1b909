"""Checkpoint loading: upstream layout vs an independent reference, converted layout, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ivl_ros.errors import CheckpointError
from ivl_ros.model.checkpoint import convert_checkpoint, load_model, read_tensors, weight_files
from ivl_ros.model.tiling import pixel_values_for
from ivl_ros.model.tiny import make_tiny_checkpoint
from tests.core import upstream_reference as ref


def _prompt_inputs(loaded, frame, tiles):
    from PIL import Image

    from ivl_ros.model.prompt import chat_prompt

    pv = pixel_values_for(Image.fromarray(frame), loaded.spec.tile_size, tiles)
    _, prompt = chat_prompt("Describe the scene.", pv.shape[0], loaded.spec.tokens_per_tile)
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])
    return ids, torch.from_numpy(pv)


def _model_logits(loaded, ids, pv):
    with torch.inference_mode():
        return loaded.model(input_ids=ids, pixel_values=pv).logits.float()


def test_upstream_layout_matches_reference(tiny_checkpoint, sample_frame):
    loaded = load_model(tiny_checkpoint)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    tensors = read_tensors(weight_files(tiny_checkpoint))
    ids, pv = _prompt_inputs(loaded, sample_frame, tiles=6)
    feats = ref.vit_features(tensors, config, pv)
    with torch.inference_mode():
        ours = loaded.model.model.get_image_features(pixel_values=pv, return_dict=True).pooler_output
    # In fp32 with the "exact" attention the converted model is bit-identical to upstream's math.
    torch.testing.assert_close(ours, feats, rtol=0, atol=0)
    expected = ref.llm_logits(tensors, config, ids, loaded.spec.image_token_id, feats)
    torch.testing.assert_close(_model_logits(loaded, ids, pv), expected, rtol=0, atol=0)


def test_converted_gives_identical_logits(tiny_checkpoint, tmp_path, sample_frame):
    dst = convert_checkpoint(tiny_checkpoint, tmp_path / "converted")
    assert (dst / "tokenizer.model").is_file() and (dst / "preprocessor_config.json").is_file()
    assert not list(dst.glob("*.py"))
    original, converted = load_model(tiny_checkpoint), load_model(dst)
    assert converted.layout == "converted" and converted.spec == original.spec
    ids, pv = _prompt_inputs(original, sample_frame, tiles=4)
    assert torch.equal(_model_logits(original, ids, pv), _model_logits(converted, ids, pv))


def test_sharded_checkpoint_loads_identically(tmp_path, sample_frame):
    single = make_tiny_checkpoint(tmp_path / "single", seed=3)
    sharded = make_tiny_checkpoint(tmp_path / "sharded", seed=3, shard_bytes=400_000)
    assert len(weight_files(sharded)) > 1
    a, b = load_model(single), load_model(sharded)
    ids, pv = _prompt_inputs(a, sample_frame, tiles=2)
    assert torch.equal(_model_logits(a, ids, pv), _model_logits(b, ids, pv))


def test_remote_code_is_never_imported(tiny_checkpoint):
    load_model(tiny_checkpoint)
    assert (tiny_checkpoint / "modeling_internvl_chat.py").is_file()
    assert not (tiny_checkpoint / "REMOTE_CODE_WAS_EXECUTED").exists()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_loads(tiny_checkpoint, dtype):
    loaded = load_model(tiny_checkpoint, dtype=dtype)
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    assert loaded.model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32


# -- bad inputs ------------------------------------------------------------------------------------
@pytest.fixture()
def broken(tiny_checkpoint, tmp_path) -> Path:
    dst = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def _expect(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_missing_directory(tmp_path):
    _expect(tmp_path / "nope", "nope", "not a directory")


def test_missing_config(broken):
    (broken / "config.json").unlink()
    _expect(broken, "config.json", "missing")


def test_unknown_architecture(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["LlavaForConditionalGeneration"], "llava"
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect(broken, "unknown architecture", "LlavaForConditionalGeneration")


def test_wrong_llm_type(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["llm_config"]["model_type"] = "qwen2"
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect(broken, "llm_config.model_type", "qwen2")


def test_missing_weights(broken):
    (broken / "model.safetensors").unlink()
    _expect(broken, "no model.safetensors")


def test_partial_checkpoint(broken):
    tensors = load_file(broken / "model.safetensors")
    del tensors["language_model.model.layers.1.attention.wo.weight"]
    save_file(tensors, broken / "model.safetensors")
    _expect(broken, "missing tensors", "layers.1.self_attn.o_proj")


def test_shape_mismatch(broken):
    cfg = json.loads((broken / "config.json").read_text())
    cfg["llm_config"]["intermediate_size"] = 512
    (broken / "config.json").write_text(json.dumps(cfg))
    _expect(broken, "gate_proj", "shape", "(256, 128)", "(512, 128)")


def test_dtype_mismatch(broken):
    tensors = load_file(broken / "model.safetensors")
    tensors["mlp1.1.bias"] = tensors["mlp1.1.bias"].to(torch.int32)
    save_file(tensors, broken / "model.safetensors")
    _expect(broken, "linear_1.bias", "int32")


def test_missing_tokenizer(broken):
    (broken / "tokenizer.model").unlink()
    _expect(broken, "tokenizer.model", "missing")


def test_missing_shard(tmp_path):
    sharded = make_tiny_checkpoint(tmp_path / "sharded", shard_bytes=400_000)
    weight_files(sharded)[-1].unlink()
    _expect(sharded, "shard", "missing")


def test_corrupt_safetensors(broken):
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    _expect(broken, "model.safetensors", "not a safetensors file")


def test_pickle_weights_refused(broken):
    (broken / "model.safetensors").unlink()
    (broken / "pytorch_model.bin").write_bytes(b"\x80\x04")
    _expect(broken, "pickle", "safetensors")


def test_converted_without_ivl_settings(tiny_checkpoint, tmp_path):
    dst = convert_checkpoint(tiny_checkpoint, tmp_path / "c")
    cfg = json.loads((dst / "config.json").read_text())
    del cfg["ivl_ros"]
    (dst / "config.json").write_text(json.dumps(cfg))
    _expect(dst, "ivl_ros")


def test_random_init_is_not_flat(tiny_checkpoint, sample_frame):
    loaded = load_model(tiny_checkpoint)
    ids, pv = _prompt_inputs(loaded, sample_frame, tiles=1)
    top2 = np.sort(_model_logits(loaded, ids, pv)[0, -1].numpy())[-2:]
    assert top2[1] - top2[0] > 1e-3
