"""Seconds from creating the trainer's data loader to its first batch, for two loaders in a row (two epochs), with
workers from a fork server that preloads the trainer's modules (what the trainer does on CUDA) and without the
preload. Each variant runs in a fresh process (the fork server and its preload are per process).

    python -m benchmarks.loader_start [--workers 2] [--samples 16]

Runs on the CPU: the numbers are worker start-up cost, which does not depend on the GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_variant(preload: bool, workers: int, samples: int, work: Path) -> list[float]:
    import multiprocessing

    import torch

    from finetune.data import check_data
    from finetune.synthetic import make_caption_dataset
    from finetune.trainer import ForwardSet, loader_context, sample_builder
    from finetune.video import FrameSampling
    from ivl_ros.model.spec import load_spec
    from ivl_ros.model.tiny import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(work / "tiny", overwrite=True)
    meta = make_caption_dataset(work / "data", samples, seed=1)["meta"]
    items = check_data(meta).samples
    _, spec, tok = load_spec(ckpt)
    build = sample_builder(tok, spec, 6, 4096, FrameSampling())
    context = loader_context("cuda", workers) if preload else multiprocessing.get_context("forkserver")
    firsts = []
    for epoch in range(2):
        data = ForwardSet([([[i, i + 1]], 1) for i in range(0, samples, 2)], items, build, tok.pad_id, 0, epoch)
        t0 = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=workers, multiprocessing_context=context, timeout=600
        )
        batches = iter(loader)
        next(batches)
        firsts.append(time.perf_counter() - t0)
        del batches, loader
    return firsts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--variant", choices=("preload", "plain"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one_variant(args.variant == "preload", args.workers, args.samples, Path(tmp))))
        return 0
    results = {}
    for variant in ("plain", "preload"):
        cmd = [sys.executable, "-m", "benchmarks.loader_start", "--variant", variant]
        cmd += ["--workers", str(args.workers), "--samples", str(args.samples)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    print(f"first batch after creating the loader, {args.workers} fork-server workers (seconds):")
    for variant, (first, second) in results.items():
        print(f"  {variant:8} epoch 1 {first:6.2f}   epoch 2 {second:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
