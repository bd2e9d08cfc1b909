"""A quick GPU check of the fast path's captured/compiled pieces against their eager forms (not timing).

``python -m benchmarks.check_fast``: full-size random InternVL2-2B in bf16 on CUDA;
prints the compiled+graph ViT's relative error to the eager ViT, whether the captured prefill gives
bit-identical logits to the eager prefill, and whether the fast caption's tokens equal the plain path's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.random_model import random_model
from benchmarks.suite import test_frame
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.backends.torch_fast import FastTorchBackend, cache_length
from ivl_ros.model.engine import CAPTION_PROMPT, CAPTION_SETTINGS, VisionLanguageEngine


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    plain, fast = TorchBackend(loaded), FastTorchBackend(loaded)
    ok = True
    for tiles in (1, 7):
        pv = torch.randn((tiles, 3, 448, 448), generator=torch.Generator().manual_seed(tiles))
        ref = plain.image_features(pv).float()
        got = fast.image_features(pv).float()
        rel = float((got - ref).norm() / ref.norm())
        print(f"vit {tiles} tiles ({fast.vit_mode}+graph): rel err vs eager {rel:.2e}", flush=True)
        ok &= rel < 2e-2
    plain_engine = VisionLanguageEngine(plain, loaded.tokenizer, loaded.spec, "random")
    fast_engine = VisionLanguageEngine(fast, loaded.tokenizer, loaded.spec, "random")
    frame = test_frame()
    prep = plain_engine.prepare(frame, CAPTION_PROMPT, max_tiles=6)
    ids = np.asarray([prep.prompt_ids], dtype=np.int64)
    session = fast.session(ids, np.ones_like(ids), prep.pixel_values)
    with torch.inference_mode():
        st = fast.state(1, cache_length(ids.shape[1] + 1))
        eager = session._prefill(st, graphs=False).clone()
        graphed = [session._prefill(st, graphs=True).clone() for _ in range(2)]
    same = all(torch.equal(eager, g) for g in graphed)
    print(f"prefill graph ({ids.shape[1]} tokens) logits bit-identical to eager: {same}", flush=True)
    ok &= same
    a = plain_engine.caption(frame, settings=CAPTION_SETTINGS).token_ids
    b = [fast_engine.caption(frame, settings=CAPTION_SETTINGS).token_ids for _ in range(2)]
    print(f"caption tokens fast == plain: {[x == a for x in b]} ({len(a)} tokens)", flush=True)
    print("CHECK", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
