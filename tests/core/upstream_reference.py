"""An independent plain-torch reference of upstream InternVL2's forward pass, on upstream tensor names.

Written from a description of upstream's math, not from the project's converter, so that the converter's key
table and wqkv split are checked against something other than themselves: InternViT (pre-norm layers with per-channel
layer scale, one fused qkv, no final LayerNorm, CLS token dropped), pixel shuffle v2 (output token (i, j) stacks input
tokens (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1)), the LayerNorm-Linear-GELU-Linear projector, and InternLM2
(RMSNorm in float32, SwiGLU, rotate-half RoPE, and a fused wqkv grouped per KV head: (kv_heads, groups + 2,
head_dim) with the group's query heads first, then its key, then its value, so a plain [Q|K|V] split is wrong).
fp32, eager, no cache: it returns the logits of every position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, t, prefix, eps):
    return F.layer_norm(x, (x.shape[-1],), t[prefix + ".weight"], t[prefix + ".bias"], eps)


def vit_features(t: dict[str, torch.Tensor], cfg: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    v = cfg["vision_config"]
    heads, eps = v["num_attention_heads"], v["layer_norm_eps"]
    x = F.conv2d(
        pixel_values,
        t["vision_model.embeddings.patch_embedding.weight"],
        t["vision_model.embeddings.patch_embedding.bias"],
        stride=v["patch_size"],
    )
    n, c, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)  # token = row * gw + col
    cls = t["vision_model.embeddings.class_embedding"].expand(n, 1, c)
    x = torch.cat([cls, x], dim=1) + t["vision_model.embeddings.position_embedding"]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = _ln(x, t, p + "norm1", eps)
        qkv = F.linear(h, t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"])
        qkv = qkv.reshape(n, -1, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, vv = qkv[0], qkv[1], qkv[2]
        att = ((q * (c // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        o = (att @ vv).transpose(1, 2).reshape(n, -1, c)
        x = x + t[p + "ls1"] * F.linear(o, t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
        h = _ln(x, t, p + "norm2", eps)
        h = F.linear(
            F.gelu(F.linear(h, t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"])),
            t[p + "mlp.fc2.weight"],
            t[p + "mlp.fc2.bias"],
        )
        x = x + t[p + "ls2"] * h
    x = x[:, 1:].reshape(n, gh, gw, c)
    # Pixel shuffle v2: output token (i, j) holds [x(2i,2j), x(2i,2j+1), x(2i+1,2j), x(2i+1,2j+1)].
    shuffled = torch.cat([x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]], dim=-1)
    y = shuffled.reshape(n, -1, 4 * c)
    y = F.layer_norm(y, (4 * c,), t["mlp1.0.weight"], t["mlp1.0.bias"], 1e-5)
    y = F.linear(F.gelu(F.linear(y, t["mlp1.1.weight"], t["mlp1.1.bias"])), t["mlp1.3.weight"], t["mlp1.3.bias"])
    return y


def _rms(x, w, eps):
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def llm_logits(
    t: dict[str, torch.Tensor], cfg: dict, input_ids: torch.Tensor, image_token_id: int, features: torch.Tensor | None
) -> torch.Tensor:
    llm = cfg["llm_config"]
    hidden, heads, kv = llm["hidden_size"], llm["num_attention_heads"], llm["num_key_value_heads"]
    d, groups, eps = hidden // heads, heads // kv, llm["rms_norm_eps"]
    x = F.embedding(input_ids, t["language_model.model.tok_embeddings.weight"])
    if features is not None:
        x = x.clone()
        x[input_ids == image_token_id] = features.reshape(-1, hidden)
    b, length, _ = x.shape
    inv_freq = 1.0 / (llm["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    causal = torch.full((length, length), torch.finfo(torch.float32).min).triu(1)
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, t[p + "attention_norm.weight"], eps)
        # Fused wqkv: rows grouped per KV head as [q_0 .. q_{groups-1}, k, v].
        qkv = F.linear(h, t[p + "attention.wqkv.weight"]).reshape(b, length, kv, groups + 2, d)
        q = qkv[:, :, :, :groups].reshape(b, length, heads, d).transpose(1, 2)
        k = qkv[:, :, :, groups].transpose(1, 2)
        v = qkv[:, :, :, groups + 1].transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        scores = q @ k.transpose(2, 3) / math.sqrt(d) + causal
        o = (scores.softmax(-1, dtype=torch.float32) @ v).transpose(1, 2).reshape(b, length, hidden)
        x = x + F.linear(o, t[p + "attention.wo.weight"])
        h = _rms(x, t[p + "ffn_norm.weight"], eps)
        gate = F.silu(F.linear(h, t[p + "feed_forward.w1.weight"]))
        x = x + F.linear(gate * F.linear(h, t[p + "feed_forward.w3.weight"]), t[p + "feed_forward.w2.weight"])
    x = _rms(x, t["language_model.model.norm.weight"], eps)
    return F.linear(x, t["language_model.output.weight"]).float()
