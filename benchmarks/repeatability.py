"""Does the fast path give the same bits in separate processes? ``python -m benchmarks.repeatability --out F``.

Full-size random InternVL2-2B (seeded, so every process builds the same weights), bf16, CUDA, the bench's
caption prompt. Writes F (JSON): SHA-256 of the device tiles, the ViT features at 7 and 28 tiles, the
first-token logits at batch 1 (graph replay) and at batch 4 (eager, as the bench's batch-4 decode runs), and the
128-token greedy ids at batch 1 and 4, for the fast backend and for the plain one. Run it in several processes
and compare the files: a hash that differs between processes locates run-to-run variation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.random_model import random_model
from benchmarks.suite import test_frame
from ivl_ros.model.backends.torch_backend import TorchBackend
from ivl_ros.model.backends.torch_fast import FastTorchBackend, cache_length
from ivl_ros.model.engine import CAPTION_PROMPT, VisionLanguageEngine
from ivl_ros.model.generation import GenerationSettings


def digest(t) -> str:
    a = t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@torch.inference_mode()
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = random_model("internvl2-2b", Path(tmp))
    spec = loaded.spec
    out: dict = {}
    for name, backend in (("fast", FastTorchBackend(loaded)), ("plain", TorchBackend(loaded))):
        engine = VisionLanguageEngine(backend, loaded.tokenizer, spec, "random")
        frame = test_frame()
        prep = engine.prepare(frame, CAPTION_PROMPT, max_tiles=6)
        row: dict = {"weights": digest(next(loaded.model.parameters()))}
        if name == "fast":
            tiles = backend.pixel_values_for(Image.fromarray(frame), spec.tile_size, 6, spec.use_thumbnail)
            row["tiles"] = digest(torch.as_tensor(tiles))
        pv = torch.as_tensor(prep.pixel_values)
        row["vit_7"] = digest(backend.image_features(pv))
        row["vit_28"] = digest(backend.image_features(pv.repeat(4, 1, 1, 1)))
        for batch in (1, 4):
            ids = np.asarray([prep.prompt_ids] * batch, dtype=np.int64)
            pvs = prep.pixel_values  # on the device when the fast backend tiled there
            pvs = torch.cat([pvs] * batch) if isinstance(pvs, torch.Tensor) else np.concatenate([pvs] * batch)
            session = backend.session(ids, np.ones_like(ids), pvs)
            if name == "fast":
                st = backend.state(batch, cache_length(ids.shape[1] + 1))
                row[f"logits_b{batch}"] = digest(session._prefill(st, graphs=True))
            else:
                row[f"logits_b{batch}"] = digest(session.prefill())
            tokens = [a.token_ids for a in engine.run([prep] * batch, GenerationSettings(max_new_tokens=128))]
            row[f"tokens_b{batch}"] = digest(np.asarray(tokens))
            row[f"tokens_b{batch}_at_25"] = [t[25] for t in tokens]
        out[name] = row
        print(name, json.dumps(row), flush=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
