"""Which fused-decode configs keep greedy tokens identical to the plain path, and how near a tie it is where they
part: ``python -m benchmarks.decode_identity --tune DIR/tune.json --out DIR``.

Full-size random InternVL2-2B, bf16, CUDA; the bench's caption prompt (640x480 frame, 7 tiles) decoded for 128
new tokens at batch 1 and at batch 4 (four copies, as the bench does). Config sets, in the order given (by
default: the sweep's best, then that with one kernel at a time put back to its default, then the defaults):
each set's decode graph is captured afresh on one fast backend (same ViT and prefill for all) and its tokens
are compared with the plain torch path's. For every position where some set parts from the plain path, the
plain path's own top-2 logit gap there is reported (teacher-forced on its own tokens): a gap far below bf16's
resolution of the logits says the choice is a near-tie that any change of summation order can flip.

Writes DIR/decode_identity.json; ``chosen`` is the first set that is identical at both batch sizes (what
IVL_DECODE_CONFIGS takes), or null. Not a test: random weights, one prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.random_model import random_model
from benchmarks.suite import test_frame
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.backends.torch_fast import FastTorchBackend
from ivl_ros.model.backends.triton_decode import ATTENTION, CONFIGS
from ivl_ros.model.engine import CAPTION_PROMPT, VisionLanguageEngine
from ivl_ros.model.generation import GenerationSettings


def config_sets(best: dict) -> list[tuple[str, dict]]:
    """The sweep's best, then best with each changed kernel back at its default (in the kernels' order), then the
    defaults with only the best attention, then the defaults."""
    defaults = {k: list(v) for k, v in {**CONFIGS, "attention": ATTENTION}.items()}  # the code's, not the env's
    changed = [k for k, v in best.items() if list(v) != defaults.get(k)]
    sets = [("best", dict(best))]
    for k in changed:
        sets.append((f"best, {k} default", {**best, k: defaults[k]}))
    if "attention" in changed and len(changed) > 2:
        sets.append(("defaults, best attention", {**defaults, "attention": best["attention"]}))
    sets.append(("defaults", defaults))
    return sets


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


@torch.inference_mode()
def top2_gaps(plain: TorchBackend, prep, tokens: list[int]) -> list[dict]:
    """Along the plain path's own tokens (batch 1): the gap between its two largest logits and the logits' spread."""
    ids = np.asarray([prep.prompt_ids], dtype=np.int64)
    session = plain.session(ids, np.ones_like(ids), prep.pixel_values)
    logits = session.prefill()
    out = []
    for t in tokens:
        row = logits[0].astype(np.float64)
        top = np.sort(row)[-2:]
        out.append({"gap": float(top[1] - top[0]), "top": float(top[1]), "std": float(row.std())})
        logits = session.step(np.asarray([t], dtype=np.int64))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tune", type=Path, required=True, help="tune.json of benchmarks.h200_decode_kernels")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    best = json.loads(args.tune.read_text())["tune"]["best"]
    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    plain = TorchBackend(loaded)
    plain_engine = VisionLanguageEngine(plain, loaded.tokenizer, loaded.spec, "random")
    prep = plain_engine.prepare(test_frame(), CAPTION_PROMPT, max_tiles=6)
    settings = GenerationSettings(max_new_tokens=args.tokens)
    ref = {
        1: [a.token_ids for a in plain_engine.run([prep], settings)],
        args.batch: [a.token_ids for a in plain_engine.run([prep] * args.batch, settings)],
    }
    gaps = top2_gaps(plain, prep, ref[1][0])
    fast = FastTorchBackend(loaded)
    fast_engine = VisionLanguageEngine(fast, loaded.tokenizer, loaded.spec, "random")
    result: dict = {"tokens": args.tokens, "batch": args.batch, "sets": []}
    for name, configs in config_sets(best):
        os.environ["IVL_DECODE_CONFIGS"] = json.dumps(configs)
        fast._states.clear()  # the next generate captures a decode graph with these configs
        torch.cuda.empty_cache()
        row: dict = {"name": name, "configs": configs}
        for batch in (1, args.batch):
            got = [a.token_ids for a in fast_engine.run([prep] * batch, settings)]
            where = [first_difference(g, r) for g, r in zip(got, ref[batch], strict=True)]
            row[f"b{batch}"] = {
                "identical": [w is None for w in where],
                "first_difference": where,
                "plain_top2_gap_there": [None if w is None or w >= len(gaps) else gaps[w] for w in where],
                "fast_token_there": [None if w is None else g[w : w + 1] for w, g in zip(where, got, strict=True)],
            }
        row["decode_mode"] = fast.decode_mode
        row["identical"] = all(all(row[f"b{b}"]["identical"]) for b in (1, args.batch))
        result["sets"].append(row)
        print(json.dumps({k: row[k] for k in ("name", "identical", "b1", f"b{args.batch}")}), flush=True)
    chosen = next((r for r in result["sets"] if r["identical"]), None)
    result["chosen"] = None if chosen is None else chosen["configs"]
    result["chosen_name"] = None if chosen is None else chosen["name"]
    spread = np.asarray([g["gap"] for g in gaps])
    result["plain_top2_gap"] = {
        "min": float(spread.min()),
        "median": float(np.median(spread)),
        "logit_std_median": float(np.median([g["std"] for g in gaps])),
        "per_position": gaps,
    }
    (args.out / "decode_identity.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"chosen: {result['chosen_name']} {result['chosen']}")
    print(f"plain top-2 gap: min {spread.min():.4f}, median {np.median(spread):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
