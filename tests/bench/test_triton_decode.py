"""Each fused decode kernel (ivl_ros/model/backends/triton_decode.py) against torch on fresh random inputs.

On a CUDA machine with Triton these run at the real InternVL2-2B shapes. Without a GPU they run on CPU
tensors through Triton's interpreter when ``TRITON_INTERPRET=1`` is set (smaller shapes: it executes every
program in Python); otherwise they are skipped (CI has neither a GPU nor Triton).
Outputs are poisoned (NaN, or a sentinel) before each launch, so an element a kernel forgets to write fails.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

pytestmark = pytest.mark.gpu

try:
    import triton  # noqa: F401

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False

if torch.cuda.is_available() and HAVE_TRITON:
    DEVICE = "cuda"
elif HAVE_TRITON and os.environ.get("TRITON_INTERPRET") == "1":
    DEVICE = "cpu"
else:
    DEVICE = None

if DEVICE is None:
    pytest.skip("needs a CUDA GPU with Triton, or Triton with TRITON_INTERPRET=1 on the CPU", allow_module_level=True)

from ivl_ros.model.backends import triton_decode as td  # noqa: E402

# Real shapes on the GPU; small ones for the interpreter.
if DEVICE == "cuda":
    HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, CACHE = 2048, 16, 8, 128, 8192, 92553, 2048
else:
    HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB, CACHE = 256, 4, 2, 64, 512, 1003, 256
BF16 = torch.bfloat16
EPS = 1e-5


def _rand(*shape, scale=1.0, dtype=BF16):
    return (torch.randn(shape, device=DEVICE) * scale).to(dtype)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    assert not torch.isnan(got).any(), "unwritten (NaN) or NaN output"
    return float((got - ref).norm() / ref.norm())


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return w.double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def _rope_tables(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64, device=DEVICE) / HEAD_DIM))
    freqs = torch.arange(length, dtype=torch.float64, device=DEVICE)[:, None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(BF16).contiguous(), emb.sin().to(BF16).contiguous()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


@pytest.mark.parametrize("batch,gather", [(1, False), (1, True), (3, False)])
def test_qkv_rope_cache_write(batch, gather):
    torch.manual_seed(batch * 10 + gather)
    embed = _rand(VOCAB, HIDDEN)
    ids = torch.randint(0, VOCAB, (batch,), device=DEVICE)
    x = embed[ids] if gather else _rand(batch, HIDDEN)
    nw = (1 + 0.1 * torch.randn(HIDDEN, device=DEVICE)).to(BF16)
    rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    w = _rand(rows, HIDDEN, scale=HIDDEN**-0.5)
    cos, sin = _rope_tables(CACHE)
    positions = torch.randint(0, CACHE - 1, (batch,), device=DEVICE)
    slot = torch.tensor([int(positions.max()) + 1], device=DEVICE)
    valid = torch.zeros((batch, CACHE), dtype=torch.bool, device=DEVICE)
    q = torch.full((batch, HEADS * HEAD_DIM), float("nan"), dtype=BF16, device=DEVICE)
    kc = torch.full((batch, KV_HEADS, CACHE, HEAD_DIM), 7.0, dtype=BF16, device=DEVICE)
    vc = torch.full_like(kc, 7.0)
    rows_per, chunk, warps = td.CONFIGS["qkv"]
    grid = ((HEADS + 2 * KV_HEADS) * (HEAD_DIM // 2) // rows_per,)
    td.qkv_rope_kernel[grid](
        embed if gather else x,
        ids,
        nw,
        w,
        w,
        cos,
        sin,
        positions,
        slot,
        valid.view(torch.int8),
        q,
        kc,
        vc,
        batch,
        CACHE,
        EPS,
        K=HIDDEN,
        HEADS=HEADS,
        KV_HEADS=KV_HEADS,
        D=HEAD_DIM,
        BLOCK_B=td._next_pow2(batch),
        BLOCK_N=rows_per,
        BLOCK_K=min(chunk, HIDDEN),
        GATHER=gather,
        HAS_BIAS=False,
        num_warps=warps,
    )
    qkv = _rms(x, nw) @ w.double().T
    nq, nkv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    c, s = cos[positions].double()[:, None], sin[positions].double()[:, None]
    ref_q = _rotate(qkv[:, :nq].view(batch, HEADS, HEAD_DIM), c, s)
    ref_k = _rotate(qkv[:, nq : nq + nkv].view(batch, KV_HEADS, HEAD_DIM), c, s)
    ref_v = qkv[:, nq + nkv :].view(batch, KV_HEADS, HEAD_DIM)
    s0 = int(slot)
    assert _rel(q.view(batch, HEADS, HEAD_DIM), ref_q) < 1e-2
    assert _rel(kc[:, :, s0], ref_k) < 1e-2
    assert _rel(vc[:, :, s0], ref_v) < 1e-2
    others = torch.ones(CACHE, dtype=torch.bool, device=DEVICE)
    others[s0] = False
    assert bool((kc[:, :, others] == 7.0).all()) and bool((vc[:, :, others] == 7.0).all())  # only the slot written
    assert valid[:, s0].all() and int(valid.sum()) == batch


def _attention_inputs(batch: int, slot: int, seed: int):
    torch.manual_seed(seed)
    q = _rand(batch, HEADS * HEAD_DIM)
    kc = _rand(batch, KV_HEADS, CACHE, HEAD_DIM)
    vc = _rand(batch, KV_HEADS, CACHE, HEAD_DIM)
    valid = torch.zeros((batch, CACHE), dtype=torch.bool, device=DEVICE)
    valid[:, : slot + 1] = True
    for b in range(1, batch):
        pad = min(7 * b, slot)  # left padding of the other rows (the current slot stays valid)
        valid[b, :pad] = False
        kc[b, :, :pad] = float("nan")  # a padded slot may hold anything: it must not reach the output
        vc[b, :, :pad] = float("nan")
    kc[:, :, slot + 1 :] = float("nan")  # beyond the slot: never read
    vc[:, :, slot + 1 :] = float("nan")
    return q, kc, vc, torch.tensor([slot], device=DEVICE), valid


def _attention_reference(q, kc, vc, valid):
    batch = q.shape[0]
    groups = HEADS // KV_HEADS
    qh = q.double().view(batch, KV_HEADS, groups, HEAD_DIM)
    k, v = torch.nan_to_num(kc.double()), torch.nan_to_num(vc.double())
    scores = torch.einsum("bkgd,bkld->bkgl", qh, k) / math.sqrt(HEAD_DIM)
    scores = scores.masked_fill(~valid[:, None, None], float("-inf"))
    return torch.einsum("bkgl,bkld->bkgd", torch.softmax(scores, -1), v).reshape(batch, HEADS * HEAD_DIM)


def _check_attention(batch: int, slot: int, config: tuple[int, int, int], merge_block: int | None, seed: int):
    q, kc, vc, slot_t, valid = _attention_inputs(batch, slot, seed)
    plan = td.AttentionPlan(config, batch, HEADS, KV_HEADS, HEAD_DIM, CACHE, DEVICE, merge_block=merge_block)
    outs = []
    for _ in range(3):  # the merge is deterministic: a race would show as a difference between repeats
        for part in (plan.part_o, plan.part_m, plan.part_l):
            part.fill_(float("nan"))  # a merge that reads a chunk no program wrote this launch gives NaN
        out = torch.full((batch, HEADS * HEAD_DIM), float("nan"), dtype=BF16, device=DEVICE)
        plan.launch(q, kc, vc, valid, slot_t, out)
        assert int(plan.counters.abs().sum()) == 0  # reset for the next launch
        outs.append(out.clone())
    assert _rel(outs[0], _attention_reference(q, kc, vc, valid)) < 1e-2
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize(
    "batch,merge,merge_block", [(1, 1, None), (1, 0, None), (4, 1, None), (1, 1, 2), (2, 0, 2), (3, 0, None)]
)
def test_attention_over_valid_cache(batch, merge, merge_block):
    """The default chunk, a long context (the bench's 1837 keys on the GPU); merge_block 2: the merge loops over
    its chunks in several steps."""
    _, chunk, warps = td.ATTENTION
    _check_attention(batch, CACHE - 212, (merge, chunk, warps), merge_block, seed=batch + 2 * merge)


@pytest.mark.parametrize("merge", [1, 0])
@pytest.mark.parametrize("chunk", [16, 32, 64])
@pytest.mark.parametrize("where", ["one key", "chunk end", "next chunk", "full - 1", "full"])
def test_attention_context_edges(where, chunk, merge):
    """Context lengths 1, a chunk boundary (the slot last in its chunk, then first in the next) and 2047/2048 of
    a 2048-slot cache (CACHE - 1 and CACHE here), for each merge."""
    slot = {"one key": 0, "chunk end": chunk - 1, "next chunk": chunk, "full - 1": CACHE - 2, "full": CACHE - 1}[where]
    _check_attention(2 if where == "next chunk" else 1, slot, (merge, chunk, 4), None, seed=slot + chunk + merge)


def test_attention_plan_rejects_a_chunk_not_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        td.AttentionPlan((1, 48, 4), 1, HEADS, KV_HEADS, HEAD_DIM, CACHE, DEVICE)


@pytest.mark.parametrize("name,gather", [("o", False), ("o", True), ("down", False)])
@pytest.mark.parametrize("batch", [1, 2])
def test_matvec_residual(name, gather, batch):
    torch.manual_seed(batch + 5 * gather + len(name))
    k = FFN if name == "down" else HEADS * HEAD_DIM
    w = _rand(HIDDEN, k, scale=k**-0.5)
    x = _rand(batch, k)
    embed = _rand(VOCAB, HIDDEN)
    ids = torch.randint(0, VOCAB, (batch,), device=DEVICE)
    res = _rand(batch, HIDDEN)
    before = (embed[ids] if gather else res).clone()
    out = res if not gather else torch.full((batch, HIDDEN), float("nan"), dtype=BF16, device=DEVICE)
    rows, chunk, warps = td.CONFIGS[name]
    td.matvec_residual_kernel[(-(-HIDDEN // rows),)](
        w,
        x,
        embed if gather else res,
        ids,
        out,
        batch,
        HIDDEN,
        K=k,
        BLOCK_B=td._next_pow2(batch),
        BLOCK_N=rows,
        BLOCK_K=min(chunk, k),
        GATHER=gather,
        num_warps=warps,
    )
    ref = before.double() + x.double() @ w.double().T
    assert _rel(out, ref) < 1e-2


@pytest.mark.parametrize("batch", [1, 3])
def test_gate_up_silu(batch):
    torch.manual_seed(40 + batch)
    x = _rand(batch, HIDDEN)
    nw = (1 + 0.1 * torch.randn(HIDDEN, device=DEVICE)).to(BF16)
    w = _rand(2 * FFN, HIDDEN, scale=HIDDEN**-0.5)
    out = torch.full((batch, FFN), float("nan"), dtype=BF16, device=DEVICE)
    rows, chunk, warps = td.CONFIGS["gate_up"]
    td.gate_up_kernel[(-(-FFN // rows),)](
        x,
        nw,
        w,
        out,
        batch,
        FFN,
        EPS,
        K=HIDDEN,
        BLOCK_B=td._next_pow2(batch),
        BLOCK_N=rows,
        BLOCK_K=min(chunk, HIDDEN),
        num_warps=warps,
    )
    gu = _rms(x, nw) @ w.double().T
    ref = torch.nn.functional.silu(gu[:, :FFN]) * gu[:, FFN:]
    assert _rel(out, ref) < 1e-2


def _head_and_choose(x, nw, w, batch, step, min_new, eos, pad, finished, slot0):
    rows, chunk, warps = td.CONFIGS["head"]
    programs = -(-VOCAB // rows)
    bb = td._next_pow2(batch)
    best_val = torch.full((programs, bb), float("nan"), device=DEVICE)
    best_idx = torch.full((programs, bb), -1, dtype=torch.int32, device=DEVICE)
    longs = lambda v: torch.tensor([v], device=DEVICE)  # noqa: E731
    st_step, st_min, st_eos, st_pad, st_slot = longs(step), longs(min_new), longs(eos), longs(pad), longs(slot0)
    ids = torch.full((batch,), -1, dtype=torch.long, device=DEVICE)
    positions = torch.arange(batch, device=DEVICE) + 100
    out = torch.full((batch, 16), -1, dtype=torch.long, device=DEVICE)
    fin = finished.clone()
    td.head_argmax_kernel[(programs,)](
        x,
        nw,
        w,
        best_val,
        best_idx,
        st_step,
        st_min,
        st_eos,
        batch,
        VOCAB,
        EPS,
        K=HIDDEN,
        BLOCK_B=bb,
        BLOCK_N=rows,
        BLOCK_K=min(chunk, HIDDEN),
        num_warps=warps,
    )
    td.choose_kernel[(1,)](
        best_val,
        best_idx,
        programs,
        ids,
        positions,
        st_slot,
        st_step,
        fin.view(torch.int8),
        out,
        st_eos,
        st_pad,
        batch,
        16,
        BLOCK_B=bb,
        BLOCK_P=td.CHOOSE_BLOCK,
        num_warps=1,
    )
    return ids, positions, out, fin, int(st_slot), int(st_step)


@pytest.mark.parametrize("batch", [1, 3])
def test_head_argmax_and_greedy_choice(batch):
    torch.manual_seed(60 + batch)
    x = _rand(batch, HIDDEN)
    nw = (1 + 0.1 * torch.randn(HIDDEN, device=DEVICE)).to(BF16)
    w = _rand(VOCAB, HIDDEN, scale=HIDDEN**-0.5)
    top = (_rms(x, nw) @ w.double().T)[0].argmax()
    w[17] = w[int(top)] * 1.5  # a clear winner for row 0 ...
    w[VOCAB - 1] = w[17]  # ... tied at a higher index: the lower index must win, as torch.argmax
    logits = _rms(x, nw) @ w.double().T
    eos, pad = 17, 5
    finished = torch.zeros(batch, dtype=torch.bool, device=DEVICE)
    ids, positions, out, fin, slot, step = _head_and_choose(x, nw, w, batch, 2, 0, eos, pad, finished, 9)
    got = [int(t) for t in ids]
    # bf16 logits may reorder values closer than bf16 rounding: accept any token within that of the maximum.
    for b in range(batch):
        assert logits[b, got[b]] >= logits[b].max() - 2**-7 * logits[b].abs().max()
    assert got[0] == eos  # not the duplicate at VOCAB - 1
    assert out[:, 2].tolist() == got and bool((out[:, :2] == -1).all()) and bool((out[:, 3:] == -1).all())
    assert fin.tolist() == [g == eos for g in got]
    assert positions.tolist() == [100 + b + 1 for b in range(batch)] and slot == 10 and step == 3
    # Before min_new_tokens the stop token is banned (its duplicate row now wins); a finished row gets the pad.
    finished = torch.zeros(batch, dtype=torch.bool, device=DEVICE)
    finished[batch - 1] = batch > 1
    ids, _, out, fin, _, _ = _head_and_choose(x, nw, w, batch, 2, 3, eos, pad, finished, 9)
    assert int(ids[0]) == VOCAB - 1
    if batch > 1:
        assert int(ids[batch - 1]) == pad and bool(fin[batch - 1])


@pytest.fixture(scope="module")
def bf16_engines(tiny_checkpoint):
    """The plain and the fused engine on the embedded demo model (trained: its greedy choices have margins far
    above bf16 rounding, unlike a random model's), in bf16; the tiny random checkpoint if the demo is absent."""
    from ivl_ros.model.backends.torch_fast import FastTorchBackend
    from ivl_ros.model.defaults import DEMO_MODEL_DIR
    from ivl_ros.model.engine import VisionLanguageEngine

    path = DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "model.safetensors").is_file() else tiny_checkpoint
    plain = VisionLanguageEngine.load(path, device=DEVICE, dtype="bfloat16", fast=False)
    backend = FastTorchBackend(plain.backend.loaded, fused=True, graphs=DEVICE == "cuda")
    backend.fused_max_batch = 4  # the batch test below runs the fused kernels too
    fast = VisionLanguageEngine(backend, plain.tokenizer, plain.spec, plain.model_id)
    return plain, fast


def test_fused_decode_gives_the_plain_path_tokens(bf16_engines, sample_frame):
    from ivl_ros.model.engine import GenerationSettings

    plain, fast = bf16_engines
    settings = GenerationSettings(max_new_tokens=16, min_new_tokens=4)
    for question in ("Provide a one-sentence caption for the provided image.", "Where?"):
        ref = plain.ask(sample_frame, question, settings=settings).token_ids
        assert fast.ask(sample_frame, question, settings=settings).token_ids == ref
    states = list(fast.backend._states.values())
    assert states and all(st.fused is not None for st in states)  # the fused kernels ran, not a fallback
    if DEVICE == "cuda":
        assert fast.backend.decode_mode == "triton+graph"


def test_fused_decode_batch_with_padding(bf16_engines, sample_frame):
    from ivl_ros.model.engine import GenerationSettings

    plain, fast = bf16_engines
    images = [sample_frame, None, sample_frame[::-1]]
    questions = ["Describe.", "What is in front of the robot?", "Where?"]
    settings = GenerationSettings(max_new_tokens=10, min_new_tokens=2)
    a = plain.ask_batch(images, questions, max_tiles=2, settings=settings)
    b = fast.ask_batch(images, questions, max_tiles=2, settings=settings)
    assert [x.token_ids for x in b] == [x.token_ids for x in a]
