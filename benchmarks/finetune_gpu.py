"""Short LoRA run of the full-size InternVL2-2B architecture (random weights, no download) on one GPU.

Builds an upstream-layout checkpoint with InternVL2-2B's geometry (ViT 1024/24 layers/16 heads/MLP 4096,
448 px tiles, patch 14; LLM 2048/24 layers/16 heads/8 KV heads/FFN 8192, vocab 92553) from the tiny
factory's parts: the tiny sentencepiece tokenizer has ~1k pieces, so the LLM vocab is overridden to the real
92553 rows (embedding and LM head sizes as in the real model). Then trains with finetune/lora.py (LoRA r 128,
bf16, PER_DEVICE_BATCH_SIZE 4, max 6 tiles: 1344x896 images give 6 tiles + thumbnail) and writes the
throughput numbers.

    python benchmarks/finetune_gpu.py --work /tmp/ftgpu --out benchmarks/results/finetune_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from ivl_ros.model.tiny import INTERNVL2_2B_GEOMETRY as INTERNVL2_2B

REAL_VOCAB = INTERNVL2_2B["llm"]["vocab_size"]


def build_full_size(out: Path) -> Path:
    import sentencepiece as spm
    import torch

    from ivl_ros.model.checkpoint import save_upstream_tensors
    from ivl_ros.model.tiny import random_upstream_tensors, tiny_config, train_tiny_sentencepiece, write_tokenizer_files

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True)
    proto = train_tiny_sentencepiece(1024)
    config = tiny_config(spm.SentencePieceProcessor(model_proto=proto).get_piece_size(), INTERNVL2_2B)
    config["llm_config"]["vocab_size"] = REAL_VOCAB
    config["torch_dtype"] = config["llm_config"]["torch_dtype"] = "bfloat16"
    write_tokenizer_files(out, proto)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_upstream_tensors(out, random_upstream_tensors(config, dtype=torch.bfloat16))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--work", default="/tmp/ftgpu")
    ap.add_argument("--out", default="benchmarks/results/finetune_h100.json")
    ap.add_argument("--samples", type=int, default=112)
    ap.add_argument("--max-steps", type=int, default=6)
    args = ap.parse_args()
    from finetune.lora import main as lora_main
    from finetune.synthetic import make_caption_dataset

    work = Path(args.work)
    t0 = time.perf_counter()
    ckpt = build_full_size(work / "internvl2-2b-random")
    t_build = time.perf_counter() - t0
    meta = make_caption_dataset(work / "data", args.samples, seed=0, size=(1344, 896))["meta"]
    run = work / "run"
    cmd = ["--data", str(meta), "--model", str(ckpt), "--output-dir", str(run), "--lora-r", "128",
           "--per-device-batch-size", "4", "--batch-size", "16", "--gpus", "1", "--max-dynamic-patch", "6",
           "--max-steps", str(args.max_steps), "--save-steps", "100000", "--dtype", "bfloat16"]
    t1 = time.perf_counter()
    rc = lora_main(cmd)
    t_train = time.perf_counter() - t1
    if rc != 0:
        return rc
    stats = json.loads((run / "run_stats.json").read_text())
    result = {
        "what": "LoRA r128 on the full-size InternVL2-2B architecture (random weights, LLM vocab 92553), bf16, "
                "gradient checkpointing, PER_DEVICE_BATCH_SIZE 4, GRADIENT_ACC 4 (BATCH_SIZE 16, GPUS 1), "
                "single-image samples of 1344x896 -> 6 tiles + thumbnail = 7 tiles = 1792 image tokens each",
        "command": "python finetune/lora.py " + " ".join(cmd),
        "stats": stats, "checkpoint_build_s": round(t_build, 1), "train_wall_s": round(t_train, 1),
        "log": (run / "train_log.csv").read_text().splitlines(),
        "host": platform.node(),
    }
    import torch
    import transformers

    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "python": platform.python_version()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
