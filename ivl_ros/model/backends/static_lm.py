"""The InternLM2/Llama decoder of InternVL2 as plain tensor functions over a static KV cache.

It reuses the weights of transformers' ``InternVLForConditionalGeneration`` (no copy): q/k/v and
gate/up are fused into one matrix each so that a decode step launches 2 matrix products per block
instead of 5, and the original ``nn.Linear`` weights become views of the fused ones (the plain path
keeps working on the same memory). Every shape is fixed by (batch, cache length), so one decode step
can be compiled and captured as a CUDA graph; the cache slot, positions and validity mask are device
tensors, never Python numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from transformers import InternVLForConditionalGeneration
    from transformers.models.llama.modeling_llama import LlamaRMSNorm


def _fuse(linears: list[nn.Linear]) -> tuple[nn.Parameter, nn.Parameter | None]:
    """One weight (and bias) for several linears; each linear's weight becomes a view of it."""
    weight = torch.cat([lin.weight.data for lin in linears])
    has_bias = [lin.bias is not None for lin in linears]
    bias = torch.cat([lin.bias.data for lin in linears]) if all(has_bias) else None
    if any(has_bias) and bias is None:
        raise ValueError("cannot fuse linears where only some have a bias")
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(weight[start : start + rows], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[start : start + rows], requires_grad=False)
        start += rows
    return nn.Parameter(weight, requires_grad=False), (None if bias is None else nn.Parameter(bias, False))


def rms_norm(x: torch.Tensor, norm: LlamaRMSNorm) -> torch.Tensor:
    # Same operation order as LlamaRMSNorm so that fp32 results match the plain path.
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention without repeating K/V: q (B, H, T, D), keys (B, KV, L, D), allowed (B, T, L).

    Scores are divided by sqrt(D) and soft-maxed in float32, as the project's exact (upstream) attention.
    """
    b, heads, t, d = q.shape
    kv, length = keys.shape[1], keys.shape[2]
    groups = heads // kv
    scores = torch.matmul(q.reshape(b, kv, groups * t, d), keys.transpose(-1, -2)) / math.sqrt(d)
    scores = scores.view(b, kv, groups, t, length).masked_fill(~allowed[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs.view(b, kv, groups * t, length), values)
    return out.view(b, heads, t, d)


@dataclass
class KVCache:
    """Per-layer keys/values (B, KV, L, D) and which cache slots hold real tokens (B, L)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    valid: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.valid.shape[1])


class StaticLM(nn.Module):
    """Prefill and single-token decode of the language model over a :class:`KVCache`."""

    inv_freq: torch.Tensor  # a buffer (register_buffer below)

    def __init__(self, model: InternVLForConditionalGeneration) -> None:
        super().__init__()
        lm = model.model.language_model
        cfg = lm.config
        self.embed = lm.embed_tokens
        self.norm = lm.norm
        self.lm_head = model.lm_head
        self.blocks = lm.layers
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_positions = int(cfg.max_position_embeddings)
        self.register_buffer("inv_freq", lm.rotary_emb.inv_freq.detach().float().clone(), persistent=False)
        self.rope_scale = float(getattr(lm.rotary_emb, "attention_scaling", 1.0))
        wqkv, bqkv, wgu = [], [], []
        for block in self.blocks:
            attn, mlp = block.self_attn, block.mlp
            w, b = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            wqkv.append(w)
            bqkv.append(b)
            wgu.append(_fuse([mlp.gate_proj, mlp.up_proj])[0])
        self.wqkv = nn.ParameterList(wqkv)
        self.bqkv = bqkv  # None entries for InternLM2 (no bias); a plain list since ParameterList rejects None
        self.wgu = nn.ParameterList(wgu)

    # -- pieces --------------------------------------------------------------------------------------
    def new_cache(self, batch: int, length: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        shape = (batch, self.kv_heads, length, self.head_dim)
        layers = len(self.blocks)
        return KVCache(
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
            [torch.zeros(shape, device=device, dtype=dtype) for _ in range(layers)],
            torch.zeros((batch, length), device=device, dtype=torch.bool),
        )

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (B, 1, T, D) exactly as LlamaRotaryEmbedding computes them (float32, then cast)."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        return cos.to(dtype)[:, None], sin.to(dtype)[:, None]

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        h = rms_norm(x, self.blocks[i].input_layernorm)
        qkv = F.linear(h, self.wqkv[i], self.bqkv[i])
        nq, nkv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([nq, nkv, nkv], dim=-1)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _finish_block(self, i: int, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        block = self.blocks[i]
        b, _, t, _ = attn_out.shape
        x = x + block.self_attn.o_proj(attn_out.transpose(1, 2).reshape(b, t, -1))
        h = rms_norm(x, block.post_attention_layernorm)
        gate, up = F.linear(h, self.wgu[i]).chunk(2, dim=-1)
        return x + block.mlp.down_proj(block.mlp.act_fn(gate) * up)

    # -- whole passes ----------------------------------------------------------------------------------
    def prefill(
        self, embeds: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor, cache: KVCache, all_valid: bool
    ) -> torch.Tensor:
        """Run a left-padded prompt (B, T, H), write its K/V to cache slots 0..T-1; returns normed hidden (B, T, H).

        ``all_valid`` (no padding, known on the host) lets CUDA use the causal flash kernel.
        """
        b, t, _ = embeds.shape
        causal = torch.ones((t, t), dtype=torch.bool, device=embeds.device).tril()
        # Padding queries may see themselves so that no row is fully masked (finite K/V in padding slots).
        diag = torch.eye(t, dtype=torch.bool, device=embeds.device)
        allowed = causal & (key_valid[:, None, :] | diag)
        use_sdpa = embeds.device.type == "cuda"
        cos, sin = self.rope(positions, embeds.dtype)
        x = embeds
        for i in range(len(self.blocks)):
            q, k, v = self._qkv(i, x, cos, sin)
            cache.keys[i][:, :, :t] = k
            cache.values[i][:, :, :t] = v
            if use_sdpa:
                groups = self.heads // self.kv_heads
                k_rep, v_rep = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
                if all_valid:
                    out = F.scaled_dot_product_attention(q, k_rep, v_rep, is_causal=True)
                else:
                    out = F.scaled_dot_product_attention(q, k_rep, v_rep, attn_mask=allowed[:, None])
            else:
                out = attend(q, k, v, allowed)
            x = self._finish_block(i, x, out)
        cache.valid.zero_()
        cache.valid[:, :t] = key_valid
        return rms_norm(x, self.norm)

    def decode(self, ids: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row: ids (B,), positions (B,), slot (1,) the cache column to fill; returns logits (B, V)."""
        cache.valid[:, slot] = True
        x = self.embed(ids[:, None])
        cos, sin = self.rope(positions[:, None], x.dtype)
        allowed = cache.valid[:, None, :]
        for i in range(len(self.blocks)):
            q, k, v = self._qkv(i, x, cos, sin)
            # Advanced-index assignment (index_put_) so that the compiler updates the cache in place.
            cache.keys[i][:, :, slot] = k
            cache.values[i][:, :, slot] = v
            x = self._finish_block(i, x, attend(q, cache.keys[i], cache.values[i], allowed))
        return self.lm_head(rms_norm(x, self.norm)[:, -1])
