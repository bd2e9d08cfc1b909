"""Where the first token's time goes (issue 14: TTFT 28.8 ms against 22): profiler listings of the graphs behind it.

For the bench's caption prompt on the fast backend (a 640x480 frame: 6 tiles + thumbnail, ~1836 tokens):

* ``vit``: one replay of the 7-tile ViT + projector graph (what the bench's vision row times);
* ``prefill``: one replay of a first-token graph of the same prompt length without the image (its image-context
  tokens replaced by text): embedding, the 24 prefill blocks, the last position's head; the LLM's share;
* ``first_token``: one replay of the real first-token graph (ViT + feature scatter + prefill + head);
* ``ttft_call``: one whole ``generate(max_new_tokens=1)`` call, as ``benchmarks.suite`` times TTFT (host work,
  input copies and the greedy choice included);
* with ``compare_compiled_prefill``: the first-token graph captured with the eager and with the compiled
  prefill (``FastTorchBackend.compile_prefill``) on the same backend, each timed and profiled as above, with
  the difference of their first-token logits and the caption tokens of each (token identity is reported, not
  required: on random weights a near-tie of two bf16 logits can flip a greedy choice without any bug).

Each: wall ms of the replay or call (median of ``reps``, synchronised), then one more under torch.profiler:
GPU ms in total and by kernel class (``benchmarks.profiling``), the top 10 kernels, the GPU-idle share.

    python -m benchmarks.ttft_profile --out DIR [--compare-compiled-prefill]   # h200_decode_kernels runs it too

Without CUDA it prints why it skips and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.profiling import CLASS_LABELS, profile_cuda
from benchmarks.timing import wall_ms

SKIP_REASON_NO_CUDA = "no CUDA device: the TTFT breakdown profiles CUDA-graph replays"


def _measure(run: Callable[[], object], reps: int) -> dict:
    """Wall ms of ``run()`` (two warm-ups, then ``reps`` synchronised runs), then one more under the profiler."""
    timed, _ = wall_ms(run, 2, reps)
    return {"wall_ms": {"median": timed.median, "min": min(timed.values), "reps": timed.n}, **profile_cuda(run)}


def text_prompt_ids(prompt_ids: list[int], image_token_id: int) -> list[int]:
    """The prompt with its image-context tokens replaced by ordinary text ids (same length, no image)."""
    return [t if t != image_token_id else 1000 + i % 7 for i, t in enumerate(prompt_ids)]


def _first_token_graph(fast, ids: list[int], pixel_values) -> tuple | None:
    """The captured first-token graph entry (graph, inputs, logits) of this batch-1 prompt on its state (the
    one a one-token generate uses); captured on first use, None if the capture failed."""
    from ivl_ros.model.backends.torch_fast import cache_length

    n = len(ids)
    st = fast.state(1, cache_length(n + 1))
    session = fast.session(np.asarray([ids], dtype=np.int64), np.ones((1, n), dtype=np.int64), pixel_values)
    session._prefill(st, graphs=True)
    tiles = 0 if pixel_values is None else int(pixel_values.shape[0])
    return st.prefills.get((n, True, tiles))


def compiled_prefill_comparison(fast, engine, prep, reps: int) -> dict:
    """The first-token graph of ``prep`` with the eager and with the compiled prefill (see the module doc)."""
    from ivl_ros.model.engine import CAPTION_SETTINGS

    if not fast.use_compile:
        return {"skipped": "the fast backend does not compile here"}
    was = fast.compile_prefill
    out: dict = {}
    logits = {}
    try:
        for mode in ("eager", "compiled"):
            fast.compile_prefill = mode == "compiled"
            fast.forget_prefill_graphs()
            started = time.perf_counter()
            entry = _first_token_graph(fast, prep.prompt_ids, prep.pixel_values)
            if entry is None:
                out[mode] = {"skipped": "first-token graph capture failed"}
                continue
            row = {"capture_s": time.perf_counter() - started, "ran_as": fast.prefill_mode}
            row.update(_measure(entry[0].replay, reps))
            entry[0].replay()
            logits[mode] = entry[2].float().clone()
            row["caption_tokens"] = engine.run([prep], CAPTION_SETTINGS)[0].token_ids
            out[mode] = row
    finally:
        fast.compile_prefill = was
        fast.forget_prefill_graphs()
    if len(logits) == 2:
        ref, got = logits["eager"], logits["compiled"]
        out["logits_rel_diff"] = float((got - ref).norm() / ref.norm())
        out["first_token_same"] = bool(torch.equal(got.argmax(-1), ref.argmax(-1)))
        out["caption_tokens_same"] = out["eager"]["caption_tokens"] == out["compiled"]["caption_tokens"]
    return out


@torch.inference_mode()
def ttft_breakdown(fast, engine, prep, reps: int = 20, compare_compiled_prefill: bool = False) -> dict:
    """The listings above for ``prep`` (a PreparedPrompt of ``engine``, whose backend is ``fast``, a
    FastTorchBackend); a part that cannot run says why under ``skipped``."""
    from ivl_ros.model.engine import GenerationSettings

    if not torch.cuda.is_available():
        return {"skipped": SKIP_REASON_NO_CUDA}
    if not fast.use_graphs:
        return {"skipped": "the fast backend runs without CUDA graphs here"}
    out: dict = {
        "prompt_tokens": len(prep.prompt_ids),
        "tiles": prep.num_tiles,
        "vit_mode": fast.vit_mode,
        "prefill_mode": "compiled" if fast.compile_prefill else "eager",
    }

    if prep.pixel_values is None:
        out["vit"] = out["first_token"] = {"skipped": "the prompt has no image"}
    else:
        fast.image_features(prep.pixel_values)  # captures the ViT graph for this tile count
        vit = fast._vit_graphs.get(int(prep.pixel_values.shape[0]))
        out["vit"] = _measure(vit[0].replay, reps) if vit else {"skipped": "no ViT graph was captured"}
        first = _first_token_graph(fast, prep.prompt_ids, prep.pixel_values)
        out["first_token"] = _measure(first[0].replay, reps) if first else {"skipped": "first-token graph failed"}
    text = _first_token_graph(fast, text_prompt_ids(prep.prompt_ids, engine.spec.image_token_id), None)
    out["prefill"] = _measure(text[0].replay, reps) if text else {"skipped": "prefill graph capture failed"}
    one = GenerationSettings(max_new_tokens=1)
    out["ttft_call"] = _measure(lambda: engine.run([prep], one), reps)
    if compare_compiled_prefill:
        try:
            out["compiled_prefill"] = compiled_prefill_comparison(fast, engine, prep, reps)
        except Exception as exc:  # the comparison must not lose the breakdown above
            out["compiled_prefill"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
    return out


def print_breakdown(result: dict) -> None:
    """The breakdown as a table: per part wall, GPU ms, ms by class, then its top kernels."""
    if "skipped" in result:
        print(f"TTFT breakdown skipped: {result['skipped']}", flush=True)
        return
    print(
        f"\nTTFT breakdown ({result['prompt_tokens']} tokens, {result['tiles']} tiles, ViT {result['vit_mode']}, "
        f"prefill {result['prefill_mode']})"
    )
    print(f"  {'part':<12} {'wall ms':>8} {'GPU ms':>8} {'idle':>5}  " + " ".join(f"{c:>16}" for c in CLASS_LABELS))
    for part in ("vit", "prefill", "first_token", "ttft_call"):
        r = result.get(part, {})
        if "skipped" in r:
            print(f"  {part:<12} skipped: {r['skipped']}")
            continue
        classes = " ".join(f"{r['gpu_ms_by_class'][c]:16.3f}" for c in CLASS_LABELS)
        print(f"  {part:<12} {r['wall_ms']['median']:8.3f} {r['gpu_ms']:8.3f} {r['gpu_idle_share']:5.0%}  {classes}")
    for part in ("vit", "prefill", "first_token"):
        r = result.get(part, {})
        if "top_kernels" not in r:
            continue
        print(f"  top kernels, {part}:")
        for k in r["top_kernels"]:
            print(f"    {k['ms']:8.3f} ms x{k['calls']:<4} {k['class']:<16} {k['name'][:110]}")
    cmp = result.get("compiled_prefill")
    if cmp is not None:
        print("  first-token graph, eager vs compiled prefill:")
        for mode in ("eager", "compiled"):
            r = cmp.get(mode, cmp)
            if "skipped" in r:
                print(f"    {mode:<9} skipped: {r['skipped']}")
                continue
            classes = ", ".join(f"{c} {r['gpu_ms_by_class'][c]:.2f}" for c in CLASS_LABELS)
            print(
                f"    {mode:<9} (ran {r['ran_as']}) replay {r['wall_ms']['median']:.3f} ms, GPU {r['gpu_ms']:.3f} ms "
                f"({classes}); capture {r['capture_s']:.1f} s"
            )
        if "logits_rel_diff" in cmp:
            print(
                f"    logits rel diff {cmp['logits_rel_diff']:.2e}, first token same: {cmp['first_token_same']}, "
                f"caption tokens same: {cmp['caption_tokens_same']}"
            )
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--compare-compiled-prefill", action="store_true", help="also eager vs compiled prefill")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"TTFT breakdown skipped: {SKIP_REASON_NO_CUDA}", flush=True)
        return 0
    import tempfile

    from benchmarks.random_model import random_model
    from benchmarks.suite import test_frame
    from ivl_ros.model.backends.torch_fast import FastTorchBackend
    from ivl_ros.model.engine import CAPTION_PROMPT, VisionLanguageEngine

    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    fast = FastTorchBackend(loaded)
    engine = VisionLanguageEngine(fast, loaded.tokenizer, loaded.spec, "random")
    prep = engine.prepare(test_frame(), CAPTION_PROMPT, max_tiles=6)
    result = ttft_breakdown(fast, engine, prep, args.reps, args.compare_compiled_prefill)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ttft_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print_breakdown(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
