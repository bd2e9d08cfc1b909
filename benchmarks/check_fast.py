"""A GPU check of the fast path against the plain path (not timing): ``python -m benchmarks.check_fast``.

Full-size random InternVL2-2B in bf16 on CUDA. Prints, and fails on:

* device tiling: the tiles of the bench frame and of random frames equal the CPU (Pillow) tiles bit for bit;
* the compiled+graph ViT's relative difference to the eager ViT (bf16 rounding of fused passes; < 2e-2);
* the one-replay first-token graph: logits bit-identical to running its pieces (ViT graph, scatter, prefill)
  one by one;
* which attention kernels the ViT and the prefill actually run (profiler kernel names; reported, not checked);
* token identity with the plain path (transformers' model, dynamic cache, host loop) on the bench caption
  (8..30 tokens), with the fused Triton decode when Triton is installed. (The benchmark itself compares the
  token ids of its 128-token decodes at batch 1 and 4 across backends.)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.random_model import random_model
from benchmarks.suite import test_frame
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.backends.torch_fast import FastTorchBackend, cache_length
from ivl_ros.model.engine import CAPTION_PROMPT, CAPTION_SETTINGS, VisionLanguageEngine
from ivl_ros.model.tiling import pixel_values_for

ATTENTION_KERNEL_WORDS = ("flash", "fmha", "attention", "attn", "sdpa", "cudnn", "softmax")


@torch.inference_mode()
def attention_kernels(fast: FastTorchBackend, prep, st) -> dict:
    """CUDA kernel names with attention-like names (and their time) in one eager ViT pass and one eager prefill."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.as_tensor(np.asarray([prep.prompt_ids], dtype=np.int64), device=fast.device)
    pv = torch.as_tensor(prep.pixel_values).to(fast.device, fast.dtype)
    embeds = fast.language_model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=fast.device)[None]
    key_valid = torch.ones_like(ids, dtype=torch.bool)
    found = {}
    for what, run in (
        ("vit", lambda: TorchBackend.image_features(fast, pv)),
        ("prefill", lambda: fast.lm.prefill(embeds, positions, key_valid, st.cache, all_valid=True)),
    ):
        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        rows = [e for e in prof.key_averages() if any(w in e.key.lower() for w in ATTENTION_KERNEL_WORDS)]
        found[what] = {e.key[:120]: round(e.device_time_total / 1000.0, 3) for e in rows}  # ms
    return found


def run_checks(loaded, fast: FastTorchBackend | None = None) -> tuple[bool, dict]:
    """Every check above on ``loaded`` (with ``fast``, or a new fast backend); (all passed, details)."""
    plain, fast = TorchBackend(loaded), fast or FastTorchBackend(loaded)
    spec = loaded.spec
    wanted_fused = fast.use_fused
    out: dict = {"fused_decode": wanted_fused, "device_tiling": fast.tiler is not None}
    ok = True

    def report(line: str, passed: bool, hard: bool = True) -> None:
        """``hard``: a failure means a broken path. Token identity on random weights is soft: a near-tie of
        two bf16 logits can flip a greedy choice without any bug (the details say where)."""
        nonlocal ok
        ok &= passed or not hard
        print(f"{'ok  ' if passed else ('FAIL' if hard else 'DIFF')} {line}", flush=True)

    frame = test_frame()
    rng = np.random.default_rng(0)
    frames = [frame] + [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (720, 1280), (333, 517), (1080, 1920))
    ]
    same = []
    for f in frames:
        cpu = pixel_values_for(Image.fromarray(f), spec.tile_size, 6, spec.use_thumbnail)
        dev = fast.pixel_values_for(Image.fromarray(f), spec.tile_size, 6, spec.use_thumbnail)
        same.append(bool(np.array_equal(torch.as_tensor(dev).cpu().numpy().view(np.uint32), cpu.view(np.uint32))))
    out["tiling_bit_identical"] = same
    report(f"device tiles == Pillow tiles bit for bit on {len(frames)} frames: {same}", all(same))

    for tiles in (1, 7):
        pv = torch.randn((tiles, 3, spec.tile_size, spec.tile_size), generator=torch.Generator().manual_seed(tiles))
        ref = plain.image_features(pv).float()
        got = fast.image_features(pv).float()
        rel = float((got - ref).norm() / ref.norm())
        out[f"vit_rel_err_{tiles}"] = rel
        report(f"vit {tiles} tiles ({fast.vit_mode}+graph): rel diff to eager {rel:.2e}", rel < 2e-2)

    plain_engine = VisionLanguageEngine(plain, loaded.tokenizer, spec, "random")
    fast_engine = VisionLanguageEngine(fast, loaded.tokenizer, spec, "random")
    prep = fast_engine.prepare(frame, CAPTION_PROMPT, max_tiles=6)
    ids = np.asarray([prep.prompt_ids], dtype=np.int64)
    session = fast.session(ids, np.ones_like(ids), prep.pixel_values)
    with torch.inference_mode():
        st = fast.state(1, cache_length(ids.shape[1] + 1))
        graphed = [session._prefill(st, graphs=True).clone() for _ in range(2)]
        pieces = session._prefill(st, graphs=False).clone()
    same_logits = all(torch.equal(pieces, g) for g in graphed)
    out["first_token_graph_bit_identical"] = same_logits
    report(
        f"first-token graph ({ids.shape[1]} tokens, {prep.num_tiles} tiles, one replay) logits bit-identical "
        f"to its pieces run one by one: {same_logits}",
        same_logits,
    )

    out["attention_kernels"] = attention_kernels(fast, prep, st)
    print(f"info attention kernels run: {out['attention_kernels']}", flush=True)

    a = plain_engine.caption(frame, settings=CAPTION_SETTINGS).token_ids
    b = [fast_engine.caption(frame, settings=CAPTION_SETTINGS).token_ids for _ in range(2)]
    out["caption_tokens"] = len(a)
    out["caption_identical"] = [x == a for x in b]
    report(
        f"caption tokens fast == plain: {[x == a for x in b]} ({len(a)} tokens; {a} vs {b[0]})",
        all(x == a for x in b),
        hard=False,
    )
    out["decode_mode"] = fast.decode_mode
    report(f"decode ran as {fast.decode_mode}", fast.decode_mode == "triton+graph" or not wanted_fused)
    return ok, out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    ok, _ = run_checks(loaded)
    print("CHECK", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
