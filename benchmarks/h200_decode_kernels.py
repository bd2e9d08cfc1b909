"""One GPU call for issue 14: fast-path checks, the decode kernel sweep, and the per-kernel table.

    python benchmarks/h200_decode_kernels.py --out DIR

1. the sweep of ``benchmarks.kernels.CANDIDATES`` (rows per program, K chunk, warps per matrix kernel;
   attention variants, checked against the two-kernel attention) on a batch-1 state holding the bench
   prompt (1836 tokens of a 640x480 frame);
2. the per-kernel table with the default configs and with the fastest ones;
3. ``benchmarks.check_fast`` checks with the fastest configs (device tiling bit-exact, first-token
   graph bit-exact, token identity with the plain path for the bench's caption and 128-token decodes at
   batch 1 and 4);
4. the TTFT breakdown (``benchmarks.ttft_profile``): profiler listings of one 7-tile ViT replay, one prefill
   replay at the caption prompt's length, one first-token replay and one whole first-token call
   (``--skip-ttft`` leaves it out; without CUDA it is skipped with the reason printed); with
   ``--compare-compiled-prefill`` also the first-token graph with the compiled prefill, timed and checked
   against the eager one.

Writes DIR/tune.json (``best`` is what IVL_DECODE_CONFIGS takes) and prints a table last. Exit 1 if a check
failed, so that a benchmark chained after it does not measure a wrong path.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.check_fast import run_checks
from benchmarks.command import copy_bandwidth
from benchmarks.kernels import kernel_table, tune
from benchmarks.random_model import random_model
from benchmarks.suite import test_frame
from benchmarks.ttft_profile import print_breakdown, ttft_breakdown
from ivl_ros.model.backends.greedy import GreedyState
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.backends.torch_fast import FastTorchBackend, cache_length
from ivl_ros.model.backends.triton_decode import FusedDecoder
from ivl_ros.model.engine import CAPTION_PROMPT, GenerationSettings, PreparedPrompt, VisionLanguageEngine


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-checks", action="store_true")
    p.add_argument("--skip-ttft", action="store_true", help="no TTFT profiler breakdown")
    p.add_argument(
        "--compare-compiled-prefill",
        action="store_true",
        help="in the TTFT breakdown, also the first-token graph with the compiled prefill (one more compile)",
    )
    p.add_argument(
        "--text-only",
        action="store_true",
        help="no ViT (no compile): the bench prompt's length with its image-context tokens replaced by "
        "text; instead of check_fast, 128 greedy tokens fused vs plain on that prompt",
    )
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import PIL
    import transformers
    import triton

    result: dict = {
        "device": torch.cuda.get_device_name(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
        },
    }
    print(result, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    copy = copy_bandwidth(torch.device("cuda"))
    result["copy_tb_s"] = copy / 1e12

    fast = FastTorchBackend(loaded)
    engine = VisionLanguageEngine(fast, loaded.tokenizer, loaded.spec, "random")
    prep = engine.prepare(test_frame(), CAPTION_PROMPT, max_tiles=6)
    if args.text_only:
        text_ids = [t if t != loaded.spec.image_token_id else 1000 + i % 7 for i, t in enumerate(prep.prompt_ids)]
        prep = PreparedPrompt(prep.question, text_ids, None, 0)
    ids = np.asarray([prep.prompt_ids], dtype=np.int64)
    length = cache_length(ids.shape[1] + 128)
    st = GreedyState.allocate(fast.lm, 1, length, fast.device, fast.dtype, fast.vocab)
    with torch.inference_mode():
        fast.session(ids, np.ones_like(ids), prep.pixel_values)._prefill(st, graphs=False)
        started = time.perf_counter()
        sweep = tune(fast.lm, st, lambda **kw: FusedDecoder(fast.lm, 1, length, fast.device, **kw))
        result["tune_s"] = time.perf_counter() - started
        result["tune"] = sweep
        tables = {}
        for label, configs in (("default", None), ("best", {k: tuple(v) for k, v in sweep["best"].items()})):
            st.slot.fill_(ids.shape[1])
            tables[label] = kernel_table(FusedDecoder(fast.lm, 1, length, fast.device, configs=configs), st, copy)
        result["tables"] = tables
    del st
    # The checks run with the chosen configs: they are what the benchmark after this script will use.
    os.environ["IVL_DECODE_CONFIGS"] = json.dumps(sweep["best"])
    ok = True
    if args.text_only:
        plain = VisionLanguageEngine(TorchBackend(loaded), loaded.tokenizer, loaded.spec, "random")
        many = GenerationSettings(max_new_tokens=128)
        ref = plain.run([prep], many)[0].token_ids
        got = [engine.run([prep], many)[0].token_ids for _ in range(2)]
        same = [g == ref for g in got]
        result["checks"] = {
            "text_prompt_tokens": len(prep.prompt_ids),
            "decode_128_identical": same,
            "decode_mode": fast.decode_mode,
            "ref": ref,
            "got": got[0],
        }
        ok = fast.decode_mode == "triton+graph"
        print(
            f"128 tokens after a {len(prep.prompt_ids)}-token text prompt, fused ({fast.decode_mode}) == plain: {same}",
            flush=True,
        )
    elif not args.skip_checks:
        started = time.perf_counter()
        ok, result["checks"] = run_checks(loaded, fast)
        result["checks_s"] = time.perf_counter() - started
    result["checks_ok"] = ok
    if not args.skip_ttft:
        try:
            result["ttft_profile"] = ttft_breakdown(
                fast, engine, prep, compare_compiled_prefill=args.compare_compiled_prefill
            )
        except Exception as exc:  # a profiler failure must not lose the sweep and the checks
            logging.exception("TTFT breakdown failed")
            result["ttft_profile"] = {"skipped": f"failed: {type(exc).__name__}: {exc}"[:300]}
    (args.out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\ncopy {copy / 1e12:.2f} TB/s; context {ids.shape[1] + 1}; best configs {sweep['best']}")

    def cell(c: dict) -> str:
        if "ms" in c:
            return f"{c['config']}: {c['ms'] * 1000:.1f}us"
        if "error" in c:
            return f"{c['config']}: error"
        return f"{c['config']}: differs (rel {c['rel_diff_to_two_kernel']:.1e}, repeatable {c['repeatable']})"

    for name, cands in sweep["candidates"].items():
        print(f"  {name}: {', '.join(cell(c) for c in cands)}")
    for label, t in tables.items():
        print(
            f"\n{label} configs: step {t['step_ms']:.3f} ms ({1000 / t['step_ms']:.0f} tok/s), "
            f"{t['step_pct_of_copy']:.0f}% of copy; parts {t['sum_of_parts_ms']:.3f} ms"
        )
        for r in t["rows"]:
            print(
                f"  {r['kernel']:<42} {r['ms'] * 1000:7.1f} us x{r['launches_per_step']:<3} {r['gb_s']:6.0f} GB/s "
                f"{r['pct_of_copy']:4.0f}%  {r['step_ms']:.3f} ms/step"
            )
    if "ttft_profile" in result:
        print_breakdown(result["ttft_profile"])
    print("CHECKS", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
