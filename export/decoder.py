"""Decoder graph: the Llama text model + lm_head with a flat KV cache, as ONNX.

Inputs: inputs_embeds [batch, seq, hidden], attention_mask [batch, past+seq] (int64),
position_ids [batch, seq] (int64), past_key_values.{i}.key/value [batch, kv_heads, past, head_dim].
Outputs: logits [batch, vocab] of the LAST position only (generation needs nothing else, and full
prompt logits would be batch x seq x 92553 floats), present.{i}.key/value [batch, kv_heads, past+seq, head_dim].
The token embedding stays outside (embedding.py) so that image features can be spliced in numpy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ivl_ros.model.compat import cache_kwargs, output_cache

OPSET = 20


def input_names(layers: int) -> list[str]:
    names = ["inputs_embeds", "attention_mask", "position_ids"]
    for i in range(layers):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def output_names(layers: int) -> list[str]:
    names = ["logits"]
    for i in range(layers):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


class DecoderWrapper(torch.nn.Module):
    """Rebuilds a DynamicCache from flat tensors so that the graph has plain tensor inputs/outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.language_model = model.model.language_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.text_config)
        out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **cache_kwargs(self.language_model, cache),
        )
        # Keep the sliced state 3-D: lm_head then exports as MatMul (not Gemm), which MatMulNBits can quantise.
        logits = self.lm_head(out.last_hidden_state[:, -1:, :])[:, 0, :].float()
        presents = []
        for layer in output_cache(out).layers:
            presents += [layer.keys, layer.values]
        return (logits, *presents)


def text_geometry(model: torch.nn.Module) -> dict:
    cfg = model.config.text_config
    heads = cfg.num_attention_heads
    return {
        "hidden": cfg.hidden_size,
        "layers": cfg.num_hidden_layers,
        "heads": heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        "vocab": cfg.vocab_size,
        "intermediate": cfg.intermediate_size,
    }


def sample_inputs(geo: dict, batch: int, seq: int, past: int, seed: int = 0, device="cpu") -> tuple:
    """Random decoder inputs with a left-padded first row (the case generation produces)."""
    gen = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, seq, geo["hidden"], generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    if batch > 1 and past + seq > 2:
        mask[0, :2] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, past:]
    kv = []
    for _ in range(geo["layers"]):
        for _ in range(2):
            kv.append(torch.randn(batch, geo["kv_heads"], past, geo["head_dim"], generator=gen))
    return tuple(t.to(device) for t in (embeds, mask, positions, *kv))


def export_decoder(model: torch.nn.Module, out_path: Path) -> dict:
    """Dynamo export (batch 2, seq 5, past 3 sample). Dynamic RoPE is switched to plain RoPE first.

    Dynamic NTK RoPE has a data-dependent branch that dynamo cannot trace; at or below
    max_position_embeddings (32768) it computes exactly plain RoPE, so the export copy uses "default".
    """
    lm = model.model.language_model
    saved_rope = lm.rotary_emb.rope_type
    lm.rotary_emb.rope_type = "default"
    try:
        geo = text_geometry(model)
        device = next(model.parameters()).device
        wrapper = DecoderWrapper(model).eval()
        args = sample_inputs(geo, batch=2, seq=5, past=3, device=device)
        batch, seq = torch.export.Dim("batch", min=1, max=256), torch.export.Dim("seq", min=1, max=32768)
        total, past = torch.export.Dim("total", min=1, max=32768), torch.export.Dim("past", min=0, max=32768)
        shapes = (
            {0: batch, 1: seq},
            {0: batch, 1: total},
            {0: batch, 1: seq},
            tuple({0: batch, 2: past} for _ in range(2 * geo["layers"])),
        )
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                args,
                str(out_path),
                dynamo=True,
                opset_version=OPSET,
                input_names=input_names(geo["layers"]),
                output_names=output_names(geo["layers"]),
                dynamic_shapes=shapes,
                external_data=True,
                verbose=False,
            )
    finally:
        lm.rotary_emb.rope_type = saved_rope
    import onnx

    onnx.checker.check_model(str(out_path))
    kv = ["batch", geo["kv_heads"], "past", geo["head_dim"]]
    inputs = {
        "inputs_embeds": ["batch", "seq", geo["hidden"]],
        "attention_mask": ["batch", "past+seq"],
        "position_ids": ["batch", "seq"],
    }
    outputs = {"logits": ["batch", geo["vocab"]]}
    for i in range(geo["layers"]):
        inputs[f"past_key_values.{i}.key"] = inputs[f"past_key_values.{i}.value"] = kv
        outputs[f"present.{i}.key"] = outputs[f"present.{i}.value"] = [
            "batch",
            geo["kv_heads"],
            "past+seq",
            geo["head_dim"],
        ]
    return {"inputs": inputs, "outputs": outputs, "opset": OPSET, "geometry": geo, "logits": "last position only"}


def compare_decoder(model: torch.nn.Module, onnx_path: Path, providers: list[str]) -> dict:
    """ORT vs the torch wrapper on a few (batch, seq, past) shapes: logits and present max abs diff."""

    geo = text_geometry(model)
    from ivl_ros.model.backends.onnx_backend import make_session

    session = make_session(onnx_path, providers)  # the runtime's options (CUDA: no TF32)
    names = input_names(geo["layers"])
    device = next(model.parameters()).device
    wrapper = DecoderWrapper(model).eval()
    logit_diff, present_diff = 0.0, 0.0
    for batch, seq, past in [(1, 7, 0), (2, 5, 3), (3, 1, 9)]:
        args = sample_inputs(geo, batch, seq, past, seed=batch * 100 + seq, device=device)
        with torch.no_grad():
            ref = [t.float().cpu().numpy() for t in wrapper(*args)]
        got = session.run(None, {n: a.cpu().numpy() for n, a in zip(names, args, strict=True)})
        logit_diff = max(logit_diff, float(np.abs(got[0] - ref[0]).max()))
        present_diff = max(present_diff, max(float(np.abs(g - r).max()) for g, r in zip(got[1:], ref[1:], strict=True)))
    return {"logits_max_abs_diff": logit_diff, "present_max_abs_diff": present_diff, "provider": providers[0]}
