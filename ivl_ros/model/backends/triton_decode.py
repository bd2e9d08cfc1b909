# Triton is installed on GPU machines only (not in CI), and `kernel[grid](...)` launches are beyond the checker:
# pyright: reportMissingImports=false, reportIndexIssue=false
"""Fused Triton kernels for one greedy decode step of the InternLM2/Llama decoder (built for batch 1).

A decode step reads every LLM weight once (3.4 GB for InternVL2-2B in bf16) and does little arithmetic
per byte, so its speed is the rate at which it streams weights. Stock kernels stop near 65% of the
device's copy rate on these shapes (cuBLAS GEMV on a 2048-wide input, plus separate norm/rope/attention
kernels between the matrix products). Here each block is five launches, every one a weight stream with
the small work fused around it:

1. ``rmsnorm -> q/k/v matrix -> RoPE -> cache write``: each program owns a pair of rows (d, d + D/2)
   of one head, which is exactly what rotate-half RoPE mixes;
2. attention of the new token over the *valid* cache length only (flash-decoding: the cache is cut
   into short chunks, one program per (row, kv head, chunk) that loads the chunk's keys and values once
   for both query heads of the group, programs past the current slot stop at once; the last program of a
   (row, kv head) to finish merges the chunks, or a small second kernel does, in one pass);
3. ``o matrix + residual`` (in place on the residual stream);
4. ``rmsnorm -> gate/up matrix -> SiLU(gate) * up``: a program owns gate row i and up row i;
5. ``down matrix + residual``.

Then ``final norm -> LM head -> per-program argmax`` and one small kernel that reduces the argmax and does
the greedy bookkeeping of :func:`greedy.choose` (stop token masked before ``min_new_tokens``, finished rows
padded, token recorded, position/slot/step advanced). All of it is captured in one CUDA graph per state.

Numerics: the matrix products accumulate in float32 (cuBLAS does too, in another order). Everything the
eager path rounds to bf16 is rounded to bf16 here at the same points (norm output, projections, RoPE
products and sum, residual sums, SiLU, the product with up), so results differ from the plain path only by
the accumulation order. Attention runs in float32 with a chunked (merged) softmax, as SDPA's fused kernels do.
The argmax is taken over bf16-rounded logits with the lowest index winning ties, as ``torch.argmax`` on the
plain path's bf16 logits. Tests compare every kernel with torch on random inputs (tests/bench), on the GPU or
in Triton's CPU interpreter. Batches of a few rows run the same kernels through a 3-D batched form.

This module needs Triton (on the GPU machine; absent in CI): torch_fast imports it only when
``torch_fast.triton_available()``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# (rows per program, K chunk, warps) per matrix; the H200 sweep's best (benchmarks/h200_decode_kernels.py,
# results/h200-decode-kernels-v3.json).
# IVL_DECODE_CONFIGS='{"down": [2, 512, 8], ...}' overrides entries (for tuning on another GPU).
CONFIGS = {
    "qkv": (2, 1024, 4),  # pairs of rows per program
    "o": (2, 1024, 4),
    "gate_up": (1, 1024, 4),  # pairs (gate row, up row) per program
    "down": (2, 1024, 8),
    "head": (4, 1024, 4),
}
# Attention: (merge in the attention kernel 1/0, cache slots per program, warps). 16-slot chunks: 920 programs
# hold the 1837 keys of the bench caption at batch 1 (8 kv heads), 7 per SM, and the separate merge kernel:
# 9.8 us per layer on the H200 (32 slots with the in-kernel merge, the prediction's pick, took 14.3 us).
ATTENTION = (0, 16, 2)
MERGE_COLUMNS = 32  # head-dim columns per program of the separate merge kernel (4 programs per kv head)
MERGE_WARPS = 4  # warps of the separate merge kernel
CHOOSE_BLOCK = 1024  # per-program maxima reduced per iteration by the choose kernel


# Triton's CPU interpreter (TRITON_INTERPRET=1, used to check these kernels without a GPU) converts float32
# to bf16 by truncation; the GPU rounds to nearest even. There, round in integer arithmetic instead.
_ROUND_BY_BITS: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


def default_configs() -> dict[str, tuple[int, int, int]]:
    """CONFIGS and ATTENTION (key "attention") with the IVL_DECODE_CONFIGS overrides applied."""
    configs = {**CONFIGS, "attention": ATTENTION}
    override = os.environ.get("IVL_DECODE_CONFIGS")
    if override:
        for name, value in json.loads(override).items():
            if name not in configs or len(value) != 3:
                raise ValueError(
                    f"IVL_DECODE_CONFIGS: {name!r}: expected one of {sorted(configs)} with three "
                    f"integers, got {value!r}"
                )
            configs[name] = tuple(int(v) for v in value)
    return configs


def merge_block_for(splits: int, columns: int, groups: int, warps: int) -> int:
    """Attention chunks merged per iteration: the largest power of two (up to all chunks) whose partials (chunks x
    group x columns float32) are at most 64 values per thread of the merging program, so that long caches do not
    spill registers (the in-kernel merge runs with the attention kernel's warps, the separate one with 4)."""
    return max(1, min(_next_pow2(splits), 64 * 32 * warps // (groups * columns)))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


# -- shared pieces -------------------------------------------------------------------------------------
@triton.jit
def _inv_rms(x_ptr, x_rows, b_ok, eps, K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / sqrt(mean(x**2) + eps) per row, float32 (LlamaRMSNorm's first half)."""
    ss = tl.zeros((BLOCK_B,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + x_rows[:, None] * K + offs_k[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
        ss += tl.sum(x * x, axis=1)
    return tl.math.rsqrt(ss / K + eps)


@triton.jit
def _input_chunk(x_ptr, x_rows, b_ok, offs_k, nw_ptr, inv, K: tl.constexpr, NORM: tl.constexpr):
    """One K chunk of the matrix input (B, BK) in float32; with NORM, LlamaRMSNorm's output rounded as eager."""
    x = tl.load(x_ptr + x_rows[:, None] * K + offs_k[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
    if NORM:
        nw = tl.load(nw_ptr + offs_k).to(tl.float32)
        x = _bf16(_bf16(x * inv[:, None]) * nw[None, :])
    return x


@triton.jit
def _matvec(
    w_ptr,
    rows_a,
    rows_b,
    row_ok,
    x_ptr,
    x_rows,
    b_ok,
    nw_ptr,
    eps,
    K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PAIRED: tl.constexpr,
):
    """(B, BLOCK_N) float32 products of weight rows ``rows_a`` (and ``rows_b`` when PAIRED) with the input rows."""
    if BLOCK_B == 1:
        acc_a, acc_b = _matvec_one_row(
            w_ptr, rows_a, rows_b, row_ok, x_ptr, tl.sum(x_rows, axis=0), nw_ptr, eps, K, BLOCK_N, BLOCK_K, NORM, PAIRED
        )
    else:
        inv = tl.zeros((BLOCK_B,), tl.float32)
        if NORM:
            inv = _inv_rms(x_ptr, x_rows, b_ok, eps, K, BLOCK_B, BLOCK_K)
        acc_a = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        acc_b = tl.zeros((BLOCK_B, BLOCK_N), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = _input_chunk(x_ptr, x_rows, b_ok, offs_k, nw_ptr, inv, K, NORM)
            wa = tl.load(
                w_ptr + rows_a[:, None] * K + offs_k[None, :],
                mask=row_ok[:, None],
                other=0.0,
                eviction_policy="evict_first",
            ).to(tl.float32)
            acc_a += tl.sum(wa[None, :, :] * x[:, None, :], axis=2)
            if PAIRED:
                wb = tl.load(
                    w_ptr + rows_b[:, None] * K + offs_k[None, :],
                    mask=row_ok[:, None],
                    other=0.0,
                    eviction_policy="evict_first",
                ).to(tl.float32)
                acc_b += tl.sum(wb[None, :, :] * x[:, None, :], axis=2)
    return acc_a, acc_b


@triton.jit
def _matvec_one_row(
    w_ptr,
    rows_a,
    rows_b,
    row_ok,
    x_ptr,
    x_row,
    nw_ptr,
    eps,
    K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NORM: tl.constexpr,
    PAIRED: tl.constexpr,
):
    """Batch 1 (the latency case): plain 2-D tiles, products accumulated per lane and reduced once at the end,
    so the weight loop is loads and FMAs only (v1 ran batch 1 through the 3-D batched form at 55-65% of the
    plain GEMV's rate)."""
    offs = tl.arange(0, BLOCK_K)
    inv = 0.0
    if NORM:
        ss = tl.zeros((BLOCK_K,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = tl.load(x_ptr + x_row * K + k0 + offs).to(tl.float32)
            ss += x * x
        inv = tl.math.rsqrt(tl.sum(ss, axis=0) / K + eps)
    acc_a = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc_b = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs
        x = tl.load(x_ptr + x_row * K + offs_k).to(tl.float32)
        if NORM:
            x = _bf16(_bf16(x * inv) * tl.load(nw_ptr + offs_k).to(tl.float32))
        wa = tl.load(
            w_ptr + rows_a[:, None] * K + offs_k[None, :],
            mask=row_ok[:, None],
            other=0.0,
            eviction_policy="evict_first",
        ).to(tl.float32)
        acc_a += wa * x[None, :]
        if PAIRED:
            wb = tl.load(
                w_ptr + rows_b[:, None] * K + offs_k[None, :],
                mask=row_ok[:, None],
                other=0.0,
                eviction_policy="evict_first",
            ).to(tl.float32)
            acc_b += wb * x[None, :]
    return tl.sum(acc_a, axis=1)[None, :], tl.sum(acc_b, axis=1)[None, :]


@triton.jit
def _bf16(x):
    """float32 -> nearest bf16 (ties to even), kept as float32."""
    if _ROUND_BY_BITS:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    return x.to(tl.bfloat16).to(tl.float32)


@triton.jit
def _program_rows(pid, N, B, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr):
    """The weight rows of program ``pid`` (BLOCK_N consecutive ones) and the batch rows, with their masks."""
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    return rows, rows < N, offs_b, offs_b < B


@triton.jit
def _input_rows(ids_ptr, offs_b, b_ok, GATHER: tl.constexpr):
    """Row index of each batch row's input vector: its token id in the embedding table, or the row itself."""
    if GATHER:
        return tl.load(ids_ptr + offs_b, mask=b_ok, other=0).to(tl.int64)
    return offs_b.to(tl.int64)  # both branches one type: the compiler checks every return


# -- 1. rmsnorm -> qkv -> rope -> cache --------------------------------------------------------------------
@triton.jit
def qkv_rope_kernel(
    x_ptr,
    ids_ptr,
    nw_ptr,
    w_ptr,
    bias_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    slot_ptr,
    valid_ptr,
    q_ptr,
    kc_ptr,
    vc_ptr,
    B,
    L,
    eps,
    K: tl.constexpr,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    D: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATHER: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    pid = tl.program_id(0)
    HALF: tl.constexpr = D // 2
    per_head: tl.constexpr = HALF // BLOCK_N
    head = pid // per_head
    j = (pid % per_head) * BLOCK_N + tl.arange(0, BLOCK_N)  # position inside the first half of the head
    rows_a = head * D + j
    rows_b = rows_a + HALF
    row_ok = j < HALF
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    x_rows = _input_rows(ids_ptr, offs_b, b_ok, GATHER)
    a, b = _matvec(
        w_ptr, rows_a, rows_b, row_ok, x_ptr, x_rows, b_ok, nw_ptr, eps, K, BLOCK_B, BLOCK_N, BLOCK_K, True, True
    )
    if HAS_BIAS:  # added in float32 before the one rounding, as cuBLAS' bias epilogue does
        a += tl.load(bias_ptr + rows_a).to(tl.float32)[None, :]
        b += tl.load(bias_ptr + rows_b).to(tl.float32)[None, :]
    a = _bf16(a)
    b = _bf16(b)
    slot = tl.load(slot_ptr)
    if head < HEADS + KV_HEADS:
        # q * cos + rotate_half(q) * sin, each product and the sum rounded to bf16 as in eager.
        pos = tl.load(pos_ptr + offs_b, mask=b_ok, other=0)
        cos_a = tl.load(cos_ptr + pos[:, None] * D + j[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
        sin_a = tl.load(sin_ptr + pos[:, None] * D + j[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
        cos_b = tl.load(cos_ptr + pos[:, None] * D + HALF + j[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
        sin_b = tl.load(sin_ptr + pos[:, None] * D + HALF + j[None, :], mask=b_ok[:, None], other=0.0).to(tl.float32)
        ra = _bf16(_bf16(a * cos_a) - _bf16(b * sin_a))
        rb = _bf16(_bf16(b * cos_b) + _bf16(a * sin_b))
        if head < HEADS:
            q_off = offs_b[:, None] * (HEADS * D) + head * D + j[None, :]
            tl.store(q_ptr + q_off, ra.to(tl.bfloat16), mask=b_ok[:, None])
            tl.store(q_ptr + q_off + HALF, rb.to(tl.bfloat16), mask=b_ok[:, None])
        else:
            c_off = ((offs_b[:, None] * KV_HEADS + (head - HEADS)) * L + slot) * D + j[None, :]
            tl.store(kc_ptr + c_off, ra.to(tl.bfloat16), mask=b_ok[:, None])
            tl.store(kc_ptr + c_off + HALF, rb.to(tl.bfloat16), mask=b_ok[:, None])
    else:
        c_off = ((offs_b[:, None] * KV_HEADS + (head - HEADS - KV_HEADS)) * L + slot) * D + j[None, :]
        tl.store(vc_ptr + c_off, a.to(tl.bfloat16), mask=b_ok[:, None])
        tl.store(vc_ptr + c_off + HALF, b.to(tl.bfloat16), mask=b_ok[:, None])
    if pid == 0:
        tl.store(valid_ptr + offs_b * L + slot, tl.full((BLOCK_B,), 1, tl.int8), mask=b_ok)


# -- 2. attention over the valid cache -------------------------------------------------------------------
# Version 3. At batch 1 the attention is 24 short reads of ~7.5 MB (8 kv heads x ~1837 keys x K and V) whose
# time v2 spent in a chain of dependent steps rather than in moving bytes: slot -> valid flags -> K/V (masked
# by the flags) -> partials -> merge. Here the K/V loads depend on the slot only (the flags are loaded beside
# them and applied to the scores), programs past the slot stop before loading anything, and the merge covers
# only the chunks that hold keys. Short chunks (16-32 slots) put 500-1000 programs in flight for 132 SMs.
# Scores are kept in log2 units (q pre-scaled by log2(e) / sqrt(D)), so the softmax is exp2 throughout.
@triton.jit
def _attn_merge(
    po_ptr,
    pm_ptr,
    pl_ptr,
    out_ptr,
    bk,
    b,
    kvh,
    n_chunks,
    d0,
    SPLITS: tl.constexpr,
    HEADS: tl.constexpr,
    G: tl.constexpr,
    D: tl.constexpr,
    DB: tl.constexpr,
    MB: tl.constexpr,
):
    """Merge the first ``n_chunks`` per-chunk (max, sum, weighted values) of one (row, kv head), columns
    [d0, d0 + DB) of every query head of the group, MB chunks at a time, into the bf16 output."""
    offs_g = tl.arange(0, G)
    offs_d = d0 + tl.arange(0, DB)
    top = tl.full((G,), float("-inf"), tl.float32)
    total = tl.zeros((G,), tl.float32)
    acc = tl.zeros((G, DB), tl.float32)
    # The loop runs to SPLITS (a compile-time constant), not n_chunks (loaded in the kernel: Triton's interpreter
    # takes no tensor as a loop bound); blocks past n_chunks are fully masked and load nothing.
    for s0 in range(0, SPLITS, MB):
        offs_s = s0 + tl.arange(0, MB)
        s_ok = offs_s < n_chunks
        ml_off = (bk * SPLITS + offs_s[:, None]) * G + offs_g[None, :]  # (MB, G)
        # .cg: partials another program just wrote must not come from this SM's L1.
        m = tl.load(pm_ptr + ml_off, mask=s_ok[:, None], other=float("-inf"), cache_modifier=".cg")
        lsum = tl.load(pl_ptr + ml_off, mask=s_ok[:, None], other=0.0, cache_modifier=".cg")
        o = tl.load(
            po_ptr + ml_off[:, :, None] * D + offs_d[None, None, :],
            mask=s_ok[:, None, None],
            other=0.0,
            cache_modifier=".cg",
        )  # (MB, G, DB)
        new_top = tl.maximum(top, tl.max(m, axis=0))
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)
        old_scale = tl.exp2(top - safe)
        scale = tl.where(m == float("-inf"), 0.0, tl.exp2(m - safe[None, :]))
        total = total * old_scale + tl.sum(lsum * scale, axis=0)
        acc = acc * old_scale[:, None] + tl.sum(o * scale[:, :, None], axis=0)
        top = new_top
    out = acc / total[:, None]
    heads = kvh * G + offs_g
    tl.store(out_ptr + b * (HEADS * D) + heads[:, None] * D + offs_d[None, :], _bf16(out).to(tl.bfloat16))


@triton.jit
def attention_kernel(
    q_ptr,
    kc_ptr,
    vc_ptr,
    valid_ptr,
    slot_ptr,
    po_ptr,
    pm_ptr,
    pl_ptr,
    count_ptr,
    out_ptr,
    L,
    qk_scale,
    SPLITS: tl.constexpr,
    CHUNK: tl.constexpr,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    D: tl.constexpr,
    MB: tl.constexpr,
    MERGE: tl.constexpr,
):
    """One program per (row, kv head, chunk of CHUNK cache slots up to the slot): the chunk's keys and values are
    loaded once and serve every query head of the group. ``qk_scale`` = log2(e) / sqrt(D).

    With MERGE, the last program of a (row, kv head) to finish merges its chunks (an atomic counter, reset by
    that program for the next launch); otherwise :func:`attention_merge_kernel` does.
    """
    bk = tl.program_id(0)  # row * KV_HEADS + kv head
    split = tl.program_id(1)
    b = bk // KV_HEADS
    kvh = bk % KV_HEADS
    G: tl.constexpr = HEADS // KV_HEADS
    slot = tl.load(slot_ptr)
    start = split * CHUNK
    if start <= slot:  # chunks wholly past the slot hold no key of this step: no loads, no partials, no count
        offs_d = tl.arange(0, D)
        pos = start + tl.arange(0, CHUNK)
        in_range = pos <= slot
        base = bk.to(tl.int64) * L * D
        kv_off = base + pos[:, None] * D + offs_d[None, :]
        k = tl.load(kc_ptr + kv_off, mask=in_range[:, None], other=0.0).to(tl.float32)
        v = tl.load(vc_ptr + kv_off, mask=in_range[:, None], other=0.0).to(tl.float32)
        ok = in_range & (tl.load(valid_ptr + b * L + pos, mask=in_range, other=0) != 0)
        v = tl.where(ok[:, None], v, 0.0)  # a padded slot may hold anything (NaN too): 0 * NaN would leak
        for g in tl.static_range(G):
            q = tl.load(q_ptr + b * (HEADS * D) + (kvh * G + g) * D + offs_d).to(tl.float32) * qk_scale
            s = tl.where(ok, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (CHUNK,), log2 units
            m = tl.max(s, axis=0)
            p = tl.exp2(s - tl.where(m == float("-inf"), 0.0, m))
            ml_off = (bk * SPLITS + split) * G + g
            tl.store(pm_ptr + ml_off, m)
            tl.store(pl_ptr + ml_off, tl.sum(p, axis=0))
            tl.store(po_ptr + ml_off * D + offs_d, tl.sum(v * p[:, None], axis=0))
        if MERGE:
            tl.debug_barrier()
            done = tl.atomic_add(count_ptr + bk, 1, sem="acq_rel")
            last = slot // CHUNK
            if done == last:
                _attn_merge(po_ptr, pm_ptr, pl_ptr, out_ptr, bk, b, kvh, last + 1, 0, SPLITS, HEADS, G, D, D, MB)
                tl.atomic_xchg(count_ptr + bk, 0, sem="acq_rel")


@triton.jit
def attention_merge_kernel(
    po_ptr,
    pm_ptr,
    pl_ptr,
    out_ptr,
    slot_ptr,
    SPLITS: tl.constexpr,
    CHUNK: tl.constexpr,
    HEADS: tl.constexpr,
    KV_HEADS: tl.constexpr,
    D: tl.constexpr,
    DB: tl.constexpr,
    MB: tl.constexpr,
):
    """One program per (row, kv head, DB columns of the head): one pass over the chunks that hold keys."""
    bk = tl.program_id(0)
    n_chunks = tl.load(slot_ptr) // CHUNK + 1
    _attn_merge(
        po_ptr,
        pm_ptr,
        pl_ptr,
        out_ptr,
        bk,
        bk // KV_HEADS,
        bk % KV_HEADS,
        n_chunks,
        tl.program_id(1) * DB,
        SPLITS,
        HEADS,
        HEADS // KV_HEADS,
        D,
        DB,
        MB,
    )


class AttentionPlan:
    """Launch geometry and scratch of the decode attention for one (batch, cache length) state.

    ``config`` is ATTENTION's form: (merge in the attention kernel 1/0, cache slots per program, warps).
    """

    def __init__(
        self,
        config: tuple[int, int, int],
        batch: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        length: int,
        device: torch.device | str,
        merge_block: int | None = None,
    ) -> None:
        """``merge_block``: chunks per merge iteration (default :func:`merge_block`; tests force small ones)."""
        merge, chunk, self.warps = (int(v) for v in config)
        if chunk < 1 or chunk & (chunk - 1):
            raise ValueError(f"attention chunk must be a power of two, got {chunk}")
        self.merge_in_attention = bool(merge)
        self.chunk = chunk
        self.batch, self.heads, self.kv_heads, self.head_dim, self.length = batch, heads, kv_heads, head_dim, length
        self.splits = -(-length // chunk)
        self.merge_columns = head_dim if self.merge_in_attention else min(MERGE_COLUMNS, head_dim)
        groups = heads // kv_heads
        merge_warps = self.warps if self.merge_in_attention else MERGE_WARPS
        self.merge_block = merge_block or merge_block_for(self.splits, self.merge_columns, groups, merge_warps)
        rows = batch * kv_heads
        self.part_o = torch.empty((rows, self.splits, groups, head_dim), device=device, dtype=torch.float32)
        self.part_m = torch.empty((rows, self.splits, groups), device=device, dtype=torch.float32)
        self.part_l = torch.empty((rows, self.splits, groups), device=device, dtype=torch.float32)
        self.counters = torch.zeros((rows,), device=device, dtype=torch.int32)

    def launch(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        valid: torch.Tensor,
        slot: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """``out`` (B, heads * D) bf16 = attention of ``q`` (B, heads * D) over ``keys``/``values`` (B, kv heads,
        L, D) at the cache slots <= ``slot`` (a one-element device tensor) whose ``valid`` (B, L) flag is set."""
        rows = self.batch * self.kv_heads
        attention_kernel[(rows, self.splits)](
            q,
            keys,
            values,
            valid.view(torch.int8),
            slot,
            self.part_o,
            self.part_m,
            self.part_l,
            self.counters,
            out,
            self.length,
            math.log2(math.e) / math.sqrt(self.head_dim),
            SPLITS=self.splits,
            CHUNK=self.chunk,
            HEADS=self.heads,
            KV_HEADS=self.kv_heads,
            D=self.head_dim,
            MB=self.merge_block,
            MERGE=self.merge_in_attention,
            num_warps=self.warps,
        )
        if not self.merge_in_attention:
            attention_merge_kernel[(rows, self.head_dim // self.merge_columns)](
                self.part_o,
                self.part_m,
                self.part_l,
                out,
                slot,
                SPLITS=self.splits,
                CHUNK=self.chunk,
                HEADS=self.heads,
                KV_HEADS=self.kv_heads,
                D=self.head_dim,
                DB=self.merge_columns,
                MB=self.merge_block,
                num_warps=MERGE_WARPS,
            )


# -- 3./5. matrix + residual (o, down) ----------------------------------------------------------------------
@triton.jit
def matvec_residual_kernel(
    w_ptr,
    x_ptr,
    res_ptr,
    ids_ptr,
    out_ptr,
    B,
    N,
    K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATHER: tl.constexpr,
):
    """out[b, n] = bf16(res[b, n] + bf16(W[n] . x[b])); ``res`` rows are token ids into the embedding with GATHER.

    ``out`` may be ``res`` (each program reads and writes only its own rows).
    """
    pid = tl.program_id(0)
    rows, row_ok, offs_b, b_ok = _program_rows(pid, N, B, BLOCK_N, BLOCK_B)
    acc, _ = _matvec(
        w_ptr, rows, rows, row_ok, x_ptr, offs_b, b_ok, w_ptr, 0.0, K, BLOCK_B, BLOCK_N, BLOCK_K, False, False
    )
    res_rows = _input_rows(ids_ptr, offs_b, b_ok, GATHER)
    mask = b_ok[:, None] & row_ok[None, :]
    res = tl.load(res_ptr + res_rows[:, None] * N + rows[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_b[:, None] * N + rows[None, :], _bf16(res + _bf16(acc)).to(tl.bfloat16), mask=mask)


# -- 4. rmsnorm -> gate/up -> silu * up -------------------------------------------------------------------
@triton.jit
def gate_up_kernel(
    x_ptr,
    nw_ptr,
    w_ptr,
    out_ptr,
    B,
    F,
    eps,
    K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows, row_ok, offs_b, b_ok = _program_rows(pid, F, B, BLOCK_N, BLOCK_B)
    g, u = _matvec(
        w_ptr, rows, rows + F, row_ok, x_ptr, offs_b, b_ok, nw_ptr, eps, K, BLOCK_B, BLOCK_N, BLOCK_K, True, True
    )
    g = _bf16(g)
    act = _bf16(g / (1.0 + tl.exp(-g)))
    out = _bf16(act * _bf16(u))
    mask = b_ok[:, None] & row_ok[None, :]
    tl.store(out_ptr + offs_b[:, None] * F + rows[None, :], out.to(tl.bfloat16), mask=mask)


# -- final norm -> head -> argmax ---------------------------------------------------------------------------
@triton.jit
def head_argmax_kernel(
    x_ptr,
    nw_ptr,
    w_ptr,
    best_val_ptr,
    best_idx_ptr,
    step_ptr,
    min_new_ptr,
    eos_ptr,
    B,
    V,
    eps,
    K: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Per program: the largest bf16 logit of its rows and its lowest index, per batch row -> (programs, B)."""
    pid = tl.program_id(0)
    rows, row_ok, offs_b, b_ok = _program_rows(pid, V, B, BLOCK_N, BLOCK_B)
    logits, _ = _matvec(
        w_ptr, rows, rows, row_ok, x_ptr, offs_b, b_ok, nw_ptr, eps, K, BLOCK_B, BLOCK_N, BLOCK_K, True, False
    )
    logits = _bf16(logits)
    banned = (rows == tl.load(eos_ptr)) & (tl.load(step_ptr) < tl.load(min_new_ptr))
    logits = tl.where((row_ok & ~banned)[None, :], logits, float("-inf"))
    best = tl.max(logits, axis=1)
    where = tl.argmax(logits, axis=1, tie_break_left=True)
    tl.store(best_val_ptr + pid * BLOCK_B + offs_b, best)
    tl.store(best_idx_ptr + pid * BLOCK_B + offs_b, pid * BLOCK_N + where)


@triton.jit
def choose_kernel(
    best_val_ptr,
    best_idx_ptr,
    P: tl.constexpr,
    ids_ptr,
    pos_ptr,
    slot_ptr,
    step_ptr,
    finished_ptr,
    out_ptr,
    eos_ptr,
    pad_ptr,
    B,
    OUT_LEN,
    BLOCK_B: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """Reduce the per-program maxima (first index wins ties) and do greedy.choose + the position/slot advance.

    Launched as one program of one warp: the read-modify-writes of slot/step/positions then happen in lockstep.
    """
    offs_b = tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    top = tl.full((BLOCK_B,), float("-inf"), tl.float32)
    top_idx = tl.zeros((BLOCK_B,), tl.int32)
    for p0 in range(0, P, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        ok = offs_p < P
        vals = tl.load(
            best_val_ptr + offs_p[:, None] * BLOCK_B + offs_b[None, :], mask=ok[:, None], other=float("-inf")
        )
        idx = tl.load(best_idx_ptr + offs_p[:, None] * BLOCK_B + offs_b[None, :], mask=ok[:, None], other=0)
        chunk_top = tl.max(vals, axis=0)
        first = tl.argmax(vals, axis=0, tie_break_left=True)
        chunk_idx = tl.sum(tl.where(tl.arange(0, BLOCK_P)[:, None] == first[None, :], idx, 0), axis=0)
        better = chunk_top > top  # earlier chunks hold lower indices: only a strictly larger value wins
        top_idx = tl.where(better, chunk_idx, top_idx)
        top = tl.where(better, chunk_top, top)
    step = tl.load(step_ptr)
    eos = tl.load(eos_ptr)
    finished = tl.load(finished_ptr + offs_b, mask=b_ok, other=1) != 0
    nxt = tl.where(finished, tl.load(pad_ptr), top_idx.to(tl.int64))
    tl.store(out_ptr + offs_b * OUT_LEN + step, nxt, mask=b_ok)
    tl.store(finished_ptr + offs_b, (finished | (nxt == eos)).to(tl.int8), mask=b_ok)
    tl.store(ids_ptr + offs_b, nxt, mask=b_ok)
    tl.store(pos_ptr + offs_b, tl.load(pos_ptr + offs_b, mask=b_ok) + 1, mask=b_ok)
    tl.store(slot_ptr, tl.load(slot_ptr) + 1)
    tl.store(step_ptr, step + 1)


# -- the decoder -------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    ln2: torch.Tensor
    wgu: torch.Tensor
    wdown: torch.Tensor


class FusedDecoder:
    """The fused decode step for one (batch, cache length) state of a :class:`StaticLM`.

    Holds the step's scratch buffers (residual stream, q, attention output, MLP activation, attention
    partials in an :class:`AttentionPlan`, argmax partials) and the RoPE table of the cache's positions;
    ``step(st)`` launches the kernels on ``st`` (a :class:`greedy.GreedyState`) and is what gets captured in
    the CUDA graph.
    """

    def __init__(
        self, lm, batch: int, length: int, device: torch.device, configs: dict[str, tuple[int, int, int]] | None = None
    ) -> None:
        """``configs``: per kernel (see CONFIGS, ATTENTION), overriding :func:`default_configs`."""
        self.lm = lm
        self.configs = {**default_configs(), **(configs or {})}
        self.batch = batch
        self.length = length
        self.block_b = _next_pow2(batch)
        self.heads, self.kv_heads, self.head_dim = lm.heads, lm.kv_heads, lm.head_dim
        self.hidden = int(lm.embed.weight.shape[1])
        self.vocab = int(lm.lm_head.weight.shape[0])
        self.eps = float(lm.norm.variance_epsilon)
        self.layers = [
            _Layer(
                blk.input_layernorm.weight,
                lm.wqkv[i],
                lm.bqkv[i],
                blk.self_attn.o_proj.weight,
                blk.post_attention_layernorm.weight,
                lm.wgu[i],
                blk.mlp.down_proj.weight,
            )
            for i, blk in enumerate(lm.blocks)
        ]
        self.ffn = int(self.layers[0].wgu.shape[0]) // 2
        self._check_supported(lm)
        dt = lm.embed.weight.dtype
        b = batch
        self.x = torch.empty((b, self.hidden), device=device, dtype=dt)
        self.q = torch.empty((b, self.heads * self.head_dim), device=device, dtype=dt)
        self.attn = torch.empty((b, self.heads * self.head_dim), device=device, dtype=dt)
        self.act = torch.empty((b, self.ffn), device=device, dtype=dt)
        self.attention_plan = AttentionPlan(
            self.configs["attention"], b, self.heads, self.kv_heads, self.head_dim, length, device
        )
        head_rows = self.configs["head"][0]
        self.head_programs = -(-self.vocab // head_rows)
        self.best_val = torch.empty((self.head_programs, self.block_b), device=device, dtype=torch.float32)
        self.best_idx = torch.empty((self.head_programs, self.block_b), device=device, dtype=torch.int32)
        cos, sin = lm.rope(torch.arange(length, device=device)[None], dt)  # (1, 1, L, D), the eager path's values
        self.cos = cos[0, 0].contiguous()
        self.sin = sin[0, 0].contiguous()

    def _check_supported(self, lm) -> None:
        d, g = self.head_dim, self.heads // self.kv_heads
        if d & (d - 1) or g & (g - 1):
            raise ValueError(f"fused decode needs power-of-two head_dim and query groups, got {d} and {g}")
        for name in CONFIGS:
            k = self.ffn if name == "down" else self.hidden
            if k % self._config(name, k)[1]:
                raise ValueError(f"fused decode: {name} input width {k} is not a multiple of a power of two chunk")
        if (d // 2) % self.configs["qkv"][0]:
            raise ValueError(f"fused decode: head_dim {d} does not split into {self.configs['qkv'][0]}-row pairs")
        for blk in lm.blocks:
            if blk.self_attn.o_proj.bias is not None or blk.mlp.down_proj.bias is not None:
                raise ValueError("fused decode: o/down projections with bias are not supported")
        if lm.embed.weight.dtype != torch.bfloat16:
            raise ValueError(f"fused decode runs bf16 models, this one is {lm.embed.weight.dtype}")

    def _config(self, name: str, k: int) -> tuple[int, int, int]:
        rows, chunk, warps = self.configs[name]
        return rows, min(chunk, _next_pow2(k)), warps

    # -- launches ------------------------------------------------------------------------------------------
    def qkv(self, i: int, st, gather: bool) -> None:
        layer, cache = self.layers[i], st.cache
        rows, chunk, warps = self._config("qkv", self.hidden)
        n_heads = self.heads + 2 * self.kv_heads
        grid = (n_heads * (self.head_dim // 2) // rows,)
        qkv_rope_kernel[grid](
            self.lm.embed.weight if gather else self.x,
            st.ids,
            layer.ln1,
            layer.wqkv,
            layer.bqkv if layer.bqkv is not None else layer.wqkv,
            self.cos,
            self.sin,
            st.positions,
            st.slot,
            cache.valid.view(torch.int8),
            self.q,
            cache.keys[i],
            cache.values[i],
            self.batch,
            self.length,
            self.eps,
            K=self.hidden,
            HEADS=self.heads,
            KV_HEADS=self.kv_heads,
            D=self.head_dim,
            BLOCK_B=self.block_b,
            BLOCK_N=rows,
            BLOCK_K=chunk,
            GATHER=gather,
            HAS_BIAS=layer.bqkv is not None,
            num_warps=warps,
        )

    def attention(self, i: int, st) -> None:
        cache = st.cache
        self.attention_plan.launch(self.q, cache.keys[i], cache.values[i], cache.valid, st.slot, self.attn)

    def residual(self, name: str, w: torch.Tensor, x: torch.Tensor, st, gather: bool) -> None:
        n, k = w.shape
        rows, chunk, warps = self._config(name, k)
        matvec_residual_kernel[(-(-n // rows),)](
            w,
            x,
            self.lm.embed.weight if gather else self.x,
            st.ids,
            self.x,
            self.batch,
            n,
            K=k,
            BLOCK_B=self.block_b,
            BLOCK_N=rows,
            BLOCK_K=chunk,
            GATHER=gather,
            num_warps=warps,
        )

    def gate_up(self, i: int) -> None:
        layer = self.layers[i]
        rows, chunk, warps = self._config("gate_up", self.hidden)
        gate_up_kernel[(-(-self.ffn // rows),)](
            self.x,
            layer.ln2,
            layer.wgu,
            self.act,
            self.batch,
            self.ffn,
            self.eps,
            K=self.hidden,
            BLOCK_B=self.block_b,
            BLOCK_N=rows,
            BLOCK_K=chunk,
            num_warps=warps,
        )

    def head(self, st) -> None:
        rows, chunk, warps = self._config("head", self.hidden)
        head_argmax_kernel[(self.head_programs,)](
            self.x,
            self.lm.norm.weight,
            self.lm.lm_head.weight,
            self.best_val,
            self.best_idx,
            st.step,
            st.min_new,
            st.eos,
            self.batch,
            self.vocab,
            self.eps,
            K=self.hidden,
            BLOCK_B=self.block_b,
            BLOCK_N=rows,
            BLOCK_K=chunk,
            num_warps=warps,
        )

    def choose(self, st) -> None:
        choose_kernel[(1,)](
            self.best_val,
            self.best_idx,
            self.head_programs,
            st.ids,
            st.positions,
            st.slot,
            st.step,
            st.finished.view(torch.int8),
            st.out,
            st.eos,
            st.pad,
            self.batch,
            int(st.out.shape[1]),
            BLOCK_B=self.block_b,
            BLOCK_P=CHOOSE_BLOCK,
            num_warps=1,
        )

    def step(self, st) -> None:
        """One greedy decode step on ``st``: feeds ``st.ids``, records the chosen token, advances the state."""
        for i in range(len(self.layers)):
            first = i == 0
            self.qkv(i, st, gather=first)
            self.attention(i, st)
            self.residual("o", self.layers[i].wo, self.attn, st, gather=first)
            self.gate_up(i)
            self.residual("down", self.layers[i].wdown, self.act, st, gather=False)
        self.head(st)
        self.choose(st)
