"""Where the first token's time goes (issue 14: TTFT 28.8 ms against 22): profiler listings of the graphs behind it.

For the bench's caption prompt on the fast backend (a 640x480 frame: 6 tiles + thumbnail, ~1836 tokens):

* ``vit``: one replay of the 7-tile ViT + projector graph (what the bench's vision row times);
* ``prefill``: one replay of a first-token graph of the same prompt length without the image (its image-context
  tokens replaced by text): embedding, the 24 prefill blocks, the last position's head; the LLM's share;
* ``first_token``: one replay of the real first-token graph (ViT + feature scatter + prefill + head);
* ``ttft_call``: one whole ``generate(max_new_tokens=1)`` call, as ``benchmarks.suite`` times TTFT (host work,
  input copies and the greedy choice included).

Each: wall ms of the replay or call (median of ``reps``, synchronised), then one more under torch.profiler:
GPU ms in total and by kernel class (``benchmarks.profiling``), the top 10 kernels, the GPU-idle share.

    python -m benchmarks.ttft_profile --out DIR     # alone; benchmarks/h200_decode_kernels.py also runs it

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

SKIP_REASON_NO_CUDA = "no CUDA device: the TTFT breakdown profiles CUDA-graph replays"


def wall_ms(run: Callable[[], object], reps: int) -> dict:
    """Median and min wall ms of ``run()`` (synchronised before and after each), after two warm-up runs."""
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1e3)
    times.sort()
    return {"median": times[len(times) // 2], "min": times[0], "reps": reps}


def _measure(run: Callable[[], object], reps: int) -> dict:
    return {"wall_ms": wall_ms(run, reps), **profile_cuda(run)}


def text_prompt_ids(prompt_ids: list[int], image_token_id: int) -> list[int]:
    """The prompt with its image-context tokens replaced by ordinary text ids (same length, no image)."""
    return [t if t != image_token_id else 1000 + i % 7 for i, t in enumerate(prompt_ids)]


@torch.inference_mode()
def ttft_breakdown(fast, engine, prep, reps: int = 20) -> dict:
    """The four listings above for ``prep`` (a PreparedPrompt of ``engine``, whose backend is ``fast``, a
    FastTorchBackend); a part that cannot run says why under ``skipped``."""
    from ivl_ros.model.backends.torch_fast import cache_length
    from ivl_ros.model.engine import GenerationSettings

    if not torch.cuda.is_available():
        return {"skipped": SKIP_REASON_NO_CUDA}
    if not fast.use_graphs:
        return {"skipped": "the fast backend runs without CUDA graphs here"}
    out: dict = {"prompt_tokens": len(prep.prompt_ids), "tiles": prep.num_tiles, "vit_mode": fast.vit_mode}
    n = len(prep.prompt_ids)
    st = fast.state(1, cache_length(n + 1))
    ones = np.ones((1, n), dtype=np.int64)

    def graph_of(ids: list[int], pixel_values, tiles: int):
        """The captured first-token graph entry (graph, inputs, logits) of this prompt; captured on first use."""
        session = fast.session(np.asarray([ids], dtype=np.int64), ones, pixel_values)
        session._prefill(st, graphs=True)
        return st.prefills.get((n, True, tiles))

    if prep.pixel_values is None:
        out["vit"] = out["first_token"] = {"skipped": "the prompt has no image"}
    else:
        tiles = int(prep.pixel_values.shape[0])  # the key of both graphs
        fast.image_features(prep.pixel_values)  # captures the ViT graph for this tile count
        vit = fast._vit_graphs.get(tiles)
        out["vit"] = _measure(vit[0].replay, reps) if vit else {"skipped": "no ViT graph was captured"}
        first = graph_of(prep.prompt_ids, prep.pixel_values, tiles)
        out["first_token"] = _measure(first[0].replay, reps) if first else {"skipped": "first-token graph failed"}
    text = graph_of(text_prompt_ids(prep.prompt_ids, engine.spec.image_token_id), None, 0)
    out["prefill"] = _measure(text[0].replay, reps) if text else {"skipped": "prefill graph capture failed"}
    one = GenerationSettings(max_new_tokens=1)
    out["ttft_call"] = _measure(lambda: engine.run([prep], one), reps)
    return out


def print_breakdown(result: dict) -> None:
    """The breakdown as a table: per part wall, GPU ms, ms by class, then its top kernels."""
    if "skipped" in result:
        print(f"TTFT breakdown skipped: {result['skipped']}", flush=True)
        return
    print(f"\nTTFT breakdown ({result['prompt_tokens']} tokens, {result['tiles']} tiles, ViT {result['vit_mode']})")
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
    sys.stdout.flush()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reps", type=int, default=20)
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
    result = ttft_breakdown(fast, engine, engine.prepare(test_frame(), CAPTION_PROMPT, max_tiles=6), args.reps)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ttft_profile.json").write_text(json.dumps(result, indent=2) + "\n")
    print_breakdown(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
