"""LoRA finetuning throughput on one GPU: the old and the new batch settings in one run, with MFU and a profile.

The model is the full-size InternVL2-2B architecture with random weights (no download): an upstream-layout
checkpoint with its geometry (ViT 1024/24 layers/16 heads/MLP 4096, 448 px tiles, patch 14; LLM 2048/24
layers/16 heads/8 KV heads/FFN 8192, vocab 92553) built from the tiny factory's parts (the tiny tokenizer has
~1k pieces; the LLM vocab is set to the real 92553 rows, so the embedding and LM head have their real size).
The data are generated captions of 1344x896 images: 6 tiles + thumbnail = 7 tiles = 1792 image tokens each.

Every setting trains with the upstream recipe (LoRA r 128, bf16, PER_DEVICE_BATCH_SIZE 4, GRADIENT_ACC 4):
  old         --no-packing --gradient-checkpointing on --num-workers 4
                                 (the trainer's first settings: one padded micro-batch per forward, every layer
                                  checkpointed, 4 data-loader workers)
  new-padded  --no-packing       (one padded micro-batch per forward; the checkpointed layers planned from the
                                  measured free memory; up to 8 workers)
  new-packed  --packing on       (packed micro-batches; forward size and checkpointed layers planned from the
                                  measured free memory; up to 8 workers)
First a parity check on the GPU (tiny model, dropout 0): the loss sequences of the settings. Each setting then
runs in its own process, as ``python finetune/lora.py`` would (a stall cannot take the others' numbers with it:
past --stack-dump-s the process prints every thread's stack, past --setting-timeout it is stopped); after its
timed steps one more step runs under torch.profiler: GPU time by kernel class and the idle share.

    python benchmarks/finetune_gpu.py --work /tmp/ftgpu --out benchmarks/results/finetune_h200.json

MFU counts the model FLOPs a sample needs (``flops_per_sample``: frozen ViT and projector forward, LLM forward,
LLM backward to the activations only (the frozen weights get no gradient), LoRA forward + backward, LM head on
supervised positions; recomputation is not counted) against the bf16 dense matmul rate measured on this kind of
GPU (H200: 788 TFLOP/s, 8192^3 torch.matmul, KINDS.md), and against the datasheet's 989.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

# Both settings run with it (set before torch starts): fewer fragmentation failures at large batches.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from benchmarks.profiling import CLASS_LABELS, kernel_listing
from ivl_ros.model.tiny import INTERNVL2_2B_GEOMETRY as INTERNVL2_2B

REAL_VOCAB = INTERNVL2_2B["llm"]["vocab_size"]
MEASURED_BF16_TFLOPS = 788.0  # H200, 8192^3 bf16 torch.matmul on random data (device KINDS.md, 2026-10-28)
DATASHEET_BF16_TFLOPS = 989.0
RECIPE = [
    "--lora-r",
    "128",
    "--per-device-batch-size",
    "4",
    "--batch-size",
    "16",
    "--gpus",
    "1",
    "--max-dynamic-patch",
    "6",
    "--save-steps",
    "100000",
    "--dtype",
    "bfloat16",
]
SETTINGS = {
    "old": ["--no-packing", "--gradient-checkpointing", "on", "--num-workers", "4"],
    "new-padded": ["--no-packing"],
    "new-packed": ["--packing", "on"],
}
TILES_PER_SAMPLE = 7


def build_full_size(out: Path, device: str) -> Path:
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
    save_upstream_tensors(out, random_upstream_tensors(config, dtype=torch.bfloat16, device=device))
    return out


def flops_per_sample(tokens: float, tiles: int, supervised: float, lora_params: int) -> dict[str, float]:
    """Model FLOPs of one sample (multiply-add = 2), by part; see the module docstring for what counts."""
    v, t = INTERNVL2_2B["vision"], INTERNVL2_2B["llm"]
    d, inter, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    vit_tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    vit_params = layers * (4 * d * d + 2 * d * inter)
    patch = 2 * 3 * v["patch_size"] ** 2 * d * (vit_tokens - 1)
    vit = tiles * (2 * vit_params * vit_tokens + layers * 4 * vit_tokens**2 * d + patch)
    h, ffn, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    kv = t["num_key_value_heads"] * h // t["num_attention_heads"]
    projector = tiles * 256 * 2 * (4 * d * h + h * h)
    llm_params = n * (h * (h + 2 * kv) + h * h + 3 * h * ffn)
    attention = n * 2 * tokens**2 * h  # causal: half of 2 (QK^T) + 2 (PV) per score
    llm_forward = 2 * llm_params * tokens + attention
    llm_backward = 2 * llm_params * tokens + 2 * attention  # input gradients only (frozen weights)
    lora = 6 * lora_params * tokens
    head = 4 * REAL_VOCAB * h * supervised
    parts = {
        "vit_forward": vit,
        "projector_forward": projector,
        "llm_forward": llm_forward,
        "llm_backward_inputs": llm_backward,
        "lora_forward_backward": lora,
        "lm_head": head,
    }
    parts["total"] = sum(parts.values())
    return parts


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_step(trainer) -> dict:
    """One more optimizer step of ``trainer`` under torch.profiler: GPU time by kernel class, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    from finetune.model import use_packed_attention

    # train() hands the model back with its own attention (for saving); a packed batch needs the per-sample one
    # (without it the H200 run's profiled packed step attended across all 16 samples and ran out of memory).
    use_packed_attention(trainer.vlm, trainer.layout.packed)
    steps = trainer.epoch_steps(trainer.epoch)
    micro = steps[min(trainer.skip, len(steps) - 1)]
    forwards = [(group, len(micro)) for group in trainer.layout.forwards(micro)]
    batches = iter(trainer._loader(forwards, trainer.epoch))
    first = next(batches)  # the data loader's start is not the step's time
    feed = iter([first, *batches])
    _sync()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.step(micro, feed)
        _sync()
    wall = time.perf_counter() - t0
    listing = kernel_listing(prof, top=25)
    busy = listing["gpu_ms"]
    return {
        "step_wall_ms": wall * 1e3,
        "gpu_busy_ms": busy,
        "gpu_idle_share": max(0.0, 1 - busy / (wall * 1e3)),
        "gpu_ms_by_class": {
            k: round(v, 2) for k, v in sorted(listing["gpu_ms_by_class"].items(), key=lambda kv: -kv[1]) if v > 0
        },
        "top_kernels": [{k: t[k] for k in ("ms", "calls", "name")} for t in listing["top_kernels"]],
    }


def run_setting(name: str, args: list[str]) -> dict:
    """Train with ``args`` through the Trainer (as lora.py does), then profile one more step."""
    import torch

    from finetune.options import build_parser, config_from_args
    from finetune.trainer import Trainer

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result: dict = {"setting": name, "command": "python finetune/lora.py " + " ".join(args)}
    trainer = None
    try:
        trainer = Trainer(config_from_args(build_parser().parse_args(args)))
        rc = trainer.train()
        result["train_wall_s"] = round(time.perf_counter() - t0, 1)
        if rc != 0:
            raise RuntimeError(f"training returned {rc}")
        out = Path(trainer.cfg.output_dir)
        result["stats"] = json.loads((out / "run_stats.json").read_text())
        with open(out / "train_log.csv", newline="") as fh:
            result["log"] = list(csv.DictReader(fh))
        result["profile"] = profile_step(trainer)
    except Exception as exc:  # keep the other setting's numbers; the error is in the result
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
        print(result["traceback"], flush=True)
    finally:
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def child_main(name: str, result_json: str, args_json: str, stack_dump_s: float) -> int:
    """One setting in this process (started by ``setting_in_process``): train, profile, write the result."""
    import faulthandler

    # A step that does not come back (a stall in the data loader, a kernel that never ends) shows where it waits.
    faulthandler.dump_traceback_later(stack_dump_s, repeat=True, file=sys.stderr)
    result = run_setting(name, json.loads(args_json))
    faulthandler.cancel_dump_traceback_later()
    Path(result_json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def setting_in_process(name: str, args: list[str], logs: Path, timeout: float, stack_dump_s: float) -> dict:
    """``run_setting`` in a fresh process (as a user's ``python finetune/lora.py`` runs: no CUDA state, profiler
    or data-loader workers of an earlier setting), its output in ``logs/finetune_NAME.log``."""
    import signal
    import subprocess

    log = logs / f"finetune_{name}.log"
    result_json = logs / f"finetune_{name}.result.json"
    result_json.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stack-dump-s", str(stack_dump_s)]
    cmd += ["--child", name, str(result_json), json.dumps(args)]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the data-loader workers too
            proc.wait()
            rc = None
    wall = round(time.perf_counter() - t0, 1)
    if result_json.is_file():
        result = json.loads(result_json.read_text())
        result_json.unlink()
    else:
        result = {"setting": name, "command": "python finetune/lora.py " + " ".join(args)}
        tail = log.read_text(errors="replace")[-6000:]
        why = f"stopped after {timeout:.0f} s" if rc is None else f"its process exited {rc}"
        result.update(error=f"no result: {why}", log_tail=tail)
        print(f"{name}: {why}; last lines of {log.name}:\n{tail[-3000:]}", flush=True)
    result["process_wall_s"] = wall
    result["log_file"] = log.name
    return result


def parity_check(work: Path) -> dict:
    """Tiny model on the GPU, dropout 0: old and new settings must give the same loss sequence."""
    from finetune.lora import main as lora_main
    from finetune.synthetic import make_caption_dataset
    from ivl_ros.model.tiny import make_tiny_checkpoint

    ckpt = work / "tiny"
    if not (ckpt / "config.json").is_file():
        make_tiny_checkpoint(ckpt)
    meta = make_caption_dataset(work / "tiny-data", 16, seed=3, mixed=True)["meta"]
    losses = {}
    for name, extra in SETTINGS.items():
        out = work / f"tiny-{name}"
        args = [
            "--data",
            str(meta),
            "--model",
            str(ckpt),
            "--output-dir",
            str(out),
            "--lora-r",
            "8",
            "--lora-dropout",
            "0",
            "--batch-size",
            "4",
            "--per-device-batch-size",
            "2",
            "--max-steps",
            "3",
            "--learning-rate",
            "1e-3",
            "--save-steps",
            "1000",
            *extra,
            "--num-workers",
            "0",
        ]
        if lora_main(args) != 0:
            return {"error": f"tiny {name} run failed"}
        with open(out / "train_log.csv", newline="") as fh:
            losses[name] = [float(r["loss"]) for r in csv.DictReader(fh)]
    worst = max(
        abs(a - b) / abs(a)
        for name in losses
        if name != "old"
        for a, b in zip(losses["old"], losses[name], strict=True)
    )
    return {
        "losses": losses,
        "max_relative_difference": worst,
        "what": "tiny InternVL2 (random), bf16 autocast on the GPU, LoRA r 8, dropout 0, 3 steps of 2x2 samples",
    }


def supervised_tokens(meta: Path, ckpt: Path) -> float:
    """Mean supervised tokens per sample (the LM head's positions) over the first few samples."""
    from finetune.data import check_data
    from finetune.preprocess import IGNORE_INDEX, build_example
    from ivl_ros.model.spec import load_spec

    _, spec, tok = load_spec(ckpt)
    samples = check_data(meta).samples[:4]
    counts = [sum(t != IGNORE_INDEX for t in build_example(s, tok, spec, 6, 4096).labels) for s in samples]
    return sum(counts) / len(counts)


def summarise(result: dict, supervised: float, lora_params: int) -> None:
    stats = result.get("stats")
    if not stats:
        return
    sps, tps = stats["mean_samples_per_s"], stats.get("mean_tokens_per_s") or 0.0
    tokens = tps / sps if sps else 0.0
    flops = flops_per_sample(tokens, TILES_PER_SAMPLE, supervised, lora_params)
    achieved = sps * flops["total"] / 1e12
    result["summary"] = {
        "samples_per_s": sps,
        "tokens_per_s": tps,
        "tokens_per_sample": tokens,
        "step_time_s": stats["mean_step_time_s"],
        "peak_gpu_memory_allocated_gib": stats.get("peak_gpu_memory_allocated_gib"),
        "peak_gpu_memory_reserved_gib": stats.get("peak_gpu_memory_reserved_gib"),
        "model_tflop_per_sample": flops["total"] / 1e12,
        "achieved_tflop_per_s": achieved,
        "mfu_vs_measured_788": achieved / MEASURED_BF16_TFLOPS,
        "mfu_vs_datasheet_989": achieved / DATASHEET_BF16_TFLOPS,
        "flops_per_sample_by_part_tflop": {k: round(v / 1e12, 3) for k, v in flops.items()},
        "layout": stats.get("layout"),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["settings"] if "summary" in r]
    failed = [r["setting"] for r in results["settings"] if "summary" not in r]
    if not runs:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r["setting"] for r in runs]
    sps = [r["summary"]["samples_per_s"] for r in runs]
    bars = ax1.bar(names, sps, color=["#999999" if n == "old" else "#2a7ab0" for n in names])
    for bar, r in zip(bars, runs, strict=True):
        s = r["summary"]
        peak = s["peak_gpu_memory_allocated_gib"] or 0.0
        ax1.annotate(
            f"{s['samples_per_s']:.2f}/s\nMFU {100 * s['mfu_vs_measured_788']:.0f}%\n{peak:.0f} GiB peak",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.axhline(12, ls="--", color="#c0392b", lw=1)
    ax1.text(-0.4, 12.2, "goal 12 samples/s", color="#c0392b", fontsize=8)
    ax1.set_ylim(0, max([*sps, 12]) * 1.35)
    ax1.set_ylabel("samples/s (7 tiles each)")
    ax1.set_title(
        "LoRA r128, InternVL2-2B geometry, one GPU"
        + (f"\n(no numbers: {', '.join(failed)}; see the JSON)" if failed else ""),
        fontsize=10,
    )
    classes = list(CLASS_LABELS)
    bottom = [0.0] * len(runs)
    for cls in classes:
        vals = [r.get("profile", {}).get("gpu_ms_by_class", {}).get(cls, 0.0) / 1e3 for r in runs]
        ax2.bar(names, vals, bottom=bottom, label=cls)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    idle = [
        max(0.0, r.get("profile", {}).get("step_wall_ms", 0.0) / 1e3 - b) for r, b in zip(runs, bottom, strict=True)
    ]
    ax2.bar(names, idle, bottom=bottom, label="GPU idle", color="#dddddd")
    ax2.set_ylabel("seconds per 16-sample step (profiled step)")
    ax2.set_title("where the step's time goes")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--work", default="/tmp/ftgpu")
    ap.add_argument("--out", default="benchmarks/results/finetune_h200.json")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--old-steps", type=int, default=4)
    ap.add_argument("--new-steps", type=int, default=5)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--setting-timeout", type=float, default=240.0, help="seconds before a setting's process stops")
    ap.add_argument("--stack-dump-s", type=float, default=90.0, help="a setting's process prints its stacks after this")
    ap.add_argument("--child", nargs=3, metavar=("NAME", "RESULT_JSON", "ARGS_JSON"), help=argparse.SUPPRESS)
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="check this script on the CPU: tiny model, float32, small images (numbers meaningless)",
    )
    args = ap.parse_args()
    if args.child:
        return child_main(*args.child, stack_dump_s=args.stack_dump_s)
    import torch
    import transformers

    from finetune.synthetic import make_caption_dataset

    work = Path(args.work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU dry run)"
    results: dict = {
        "what": __doc__.strip().splitlines()[0],
        "gpu": gpu,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "host": platform.node(),
        "env": {"PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")},
        "command": "python " + " ".join(sys.argv),
    }
    t0 = time.perf_counter()
    results["parity_gpu"] = parity_check(work)
    results["parity_s"] = round(time.perf_counter() - t0, 1)
    print("parity:", json.dumps(results["parity_gpu"]), flush=True)
    t0 = time.perf_counter()
    recipe = RECIPE
    if args.dry_run:
        ckpt = work / "tiny"  # made by the parity check
        recipe = [*RECIPE[: RECIPE.index("--dtype")], "--dtype", "float32", "--lora-r", "8", "--device", "cpu"]
    else:
        ckpt = build_full_size(work / "internvl2-2b-random", "cuda")
    results["checkpoint_build_s"] = round(time.perf_counter() - t0, 1)
    size = (224, 168) if args.dry_run else (1344, 896)
    meta = make_caption_dataset(work / "data", args.samples, seed=0, size=size)["meta"]
    results["settings"] = []
    for name in [n.strip() for n in args.settings.split(",") if n.strip()]:
        steps = args.old_steps if name == "old" else args.new_steps
        cmd = [
            "--data",
            str(meta),
            "--model",
            str(ckpt),
            "--output-dir",
            str(work / f"run-{name}"),
            "--max-steps",
            str(steps),
            *recipe,
            *SETTINGS[name],
        ]
        results["settings"].append(setting_in_process(name, cmd, out.parent, args.setting_timeout, args.stack_dump_s))
        (out.with_suffix(".partial.json")).write_text(json.dumps(results, indent=2) + "\n")
    supervised = supervised_tokens(meta, ckpt)
    lora = next((r["stats"]["trainable_parameters"] for r in results["settings"] if "stats" in r), 138_412_032)
    for r in results["settings"]:
        summarise(r, supervised, lora)
    done = {r["setting"]: r["summary"] for r in results["settings"] if "summary" in r}
    new_runs = {k: v for k, v in done.items() if k.startswith("new")}
    new = max(new_runs.values(), key=lambda v: v["samples_per_s"], default=None)
    if "old" in done and new:
        results["speedup"] = {k: v["samples_per_s"] / done["old"]["samples_per_s"] for k, v in new_runs.items()}
    results["goal_12_samples_per_s_met"] = bool(new and new["samples_per_s"] >= 12)
    results["flop_count"] = flops_per_sample.__doc__ + " " + __doc__.split("MFU counts", 1)[1].strip()
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    plot(results, out.with_suffix(".png"))
    print(f"\n{'setting':11} {'samples/s':>10} {'tokens/s':>10} {'step s':>7} {'MFU':>6} {'peak GiB':>9}  layout")
    for name, s in done.items():
        print(
            f"{name:11} {s['samples_per_s']:10.2f} {s['tokens_per_s']:10.0f} {s['step_time_s']:7.2f} "
            f"{100 * s['mfu_vs_measured_788']:5.1f}% {s['peak_gpu_memory_allocated_gib'] or 0:9.1f}  {s['layout']}"
        )
    for r in results["settings"]:
        if "error" in r:
            print(f"{r['setting']}: {r['error']}")
        if "profile" in r:
            p = r["profile"]
            print(
                f"{r['setting']} profiled step {p['step_wall_ms']:.0f} ms, GPU busy {p['gpu_busy_ms']:.0f} ms: "
                f"{p['gpu_ms_by_class']}"
            )
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
