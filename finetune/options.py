"""Command-line options of finetune/lora.py, with upstream's defaults and batch semantics.

Batch variables work as in upstream's shell scripts (and the seed README): ``GPUS`` processes, each
running ``PER_DEVICE_BATCH_SIZE`` samples per forward pass, accumulating ``GRADIENT_ACC`` passes per
optimizer step, where ``GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS`` (integer division)
unless it is given. Each may come from a flag or the environment variable of the same name; flags win.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass

from ivl_ros.errors import OptionError

DEFAULT_MODEL = "models/InternVL2-2B"

EPILOG = """\
batch semantics (flags or environment variables; flags win):
  GPUS                   processes (one per GPU); > 1 re-launches this script under torchrun (DDP)
  PER_DEVICE_BATCH_SIZE  samples per forward pass on each GPU
  BATCH_SIZE             samples per optimizer step over all GPUs (effective batch)
  GRADIENT_ACC           forward passes accumulated per step; default BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS

examples:
  python finetune/lora.py --data habitat                       # Habitat LoRA, upstream lora.sh settings
  GPUS=2 PER_DEVICE_BATCH_SIZE=4 python finetune/lora.py --data habitat
  python finetune/lora.py --data my/meta.json --check-data     # only validate the data
  python finetune/lora.py --data habitat --resume              # continue from the last checkpoint
  python finetune/merge.py --adapter runs/lora-habitat --out models/InternVL2-2B-habitat
"""


@dataclass
class TrainConfig:
    data: str
    model: str = DEFAULT_MODEL
    output_dir: str = ""
    full: bool = False
    lora_r: int = 128
    lora_alpha: int = 0  # 0: 2 * r, as upstream
    lora_dropout: float = 0.05
    vision_lora_r: int = 0
    unfreeze_mlp: bool = False
    unfreeze_backbone: bool = False
    learning_rate: float = 4e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = 0
    max_dynamic_patch: int = 6
    max_seq_length: int = 4096
    group_by_length: bool = True
    gpus: int = 1
    batch_size: int = 16
    per_device_batch_size: int = 4
    gradient_acc: int = 4
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"
    attention: str = "auto"
    gradient_checkpointing: str = "auto"  # auto (from measured free memory) | on | off
    packing: bool = True  # padding-free packed forwards (False: the padded layout, one micro-batch per forward)
    forward_micro_batches: int = 0  # micro-batches of a step packed into one forward pass (0: auto)
    min_num_frames: int = 8  # video samples: frames drawn per build, uniformly in [min, max] (upstream's)
    max_num_frames: int = 32
    video_sampling: str = "rand"  # rand | middle (one frame per equal interval)
    num_workers: int = 4
    save_steps: int = 200
    save_total_limit: int = 2
    resume: str | None = None
    skip_bad_samples: bool = False
    logging_steps: int = 1

    def to_json(self) -> dict:
        return asdict(self)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_batch(gpus: int | None, batch: int | None, per_device: int | None, acc: int | None
                  ) -> tuple[int, int, int, int]:
    """(GPUS, BATCH_SIZE, PER_DEVICE_BATCH_SIZE, GRADIENT_ACC) from flags, then env, then defaults."""
    gpus = gpus if gpus is not None else _env_int("GPUS") or 1
    per_device = per_device if per_device is not None else _env_int("PER_DEVICE_BATCH_SIZE") or 4
    batch = batch if batch is not None else _env_int("BATCH_SIZE") or 16
    acc = acc if acc is not None else _env_int("GRADIENT_ACC")
    for name, v in (("GPUS", gpus), ("PER_DEVICE_BATCH_SIZE", per_device), ("BATCH_SIZE", batch)):
        if v < 1:
            raise OptionError(f"{name} must be >= 1, got {v}")
    if acc is None:
        acc = batch // per_device // gpus  # bash integer division, as upstream's scripts
        if acc < 1:
            raise OptionError(f"GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS = {batch} / {per_device} / "
                              f"{gpus} is 0; raise BATCH_SIZE to at least {per_device * gpus}")
    elif acc < 1:
        raise OptionError(f"GRADIENT_ACC must be >= 1, got {acc}")
    return gpus, batch, per_device, acc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python finetune/lora.py",
        description="LoRA (or full) finetuning of InternVL2 on InternVL-format chat data, upstream recipe "
                    "(2nd-finetune lora.sh defaults). Writes a peft adapter; merge it with finetune/merge.py.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="a name from finetune/datasets.json (e.g. habitat) or a path to a meta json")
    g.add_argument("--check-data", action="store_true",
                   help="only validate every meta/jsonl entry, print file:line: problem, exit 1 if any")
    g.add_argument("--skip-bad-samples", action="store_true",
                   help="train on the valid samples and list the bad ones (default: refuse to start)")
    g.add_argument("--max-dynamic-patch", type=int, default=6, help="max tiles per image (default 6)")
    g.add_argument("--max-seq-length", type=int, default=4096, help="truncate samples to this many tokens")
    g.add_argument("--no-group-by-length", dest="group_by_length", action="store_false",
                   help="plain shuffle instead of length-grouped batches")
    g.add_argument("--num-workers", type=int, default=None,
                   help="data loader workers (default: up to 8 on GPU, 0 on CPU)")
    g.add_argument("--min-num-frames", type=int, default=8, help="video: fewest frames drawn per sample (default 8)")
    g.add_argument("--max-num-frames", type=int, default=32, help="video: most frames drawn per sample (default 32)")
    g.add_argument("--video-sampling", default="rand", choices=["rand", "middle"],
                   help="video: a random or the middle frame of each equal interval (default rand)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=os.environ.get("MODEL", DEFAULT_MODEL),
                   help=f"base checkpoint, upstream or converted layout (default $MODEL or {DEFAULT_MODEL})")
    g.add_argument("--output-dir", default="", help="default runs/lora-<data name> (runs/full-<name> with --full)")
    g.add_argument("--full", action="store_true", help="full finetune (upstream full.sh: LLM + MLP trained, ViT "
                                                       "frozen) instead of LoRA; writes a full checkpoint")
    g.add_argument("--lora-r", type=int, default=128, help="LLM LoRA rank (default 128)")
    g.add_argument("--lora-alpha", type=int, default=0, help="LoRA alpha (default 2 * r)")
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--vision-lora-r", type=int, default=0, help="also LoRA on the ViT with this rank (0: off)")
    g.add_argument("--unfreeze-mlp", action="store_true", help="also train the MLP projector (saved in the adapter)")
    g.add_argument("--unfreeze-backbone", action="store_true",
                   help="with --full: train the ViT too (upstream freeze_backbone False; for models trained "
                   "from scratch)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="base weights dtype (auto: bfloat16 on GPU, float32 on CPU)")
    g.add_argument("--attention", default="auto", choices=["auto", "sdpa", "eager", "exact"])
    g.add_argument("--gradient-checkpointing", default="auto", choices=["auto", "on", "off"],
                   help="activation checkpointing: auto (only the layers memory needs, measured on the GPU; off on "
                   "CPU), on (every layer), off")
    g.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_const", const="off")
    g.add_argument("--no-packing", dest="packing", action="store_false",
                   help="pad each micro-batch to its longest sample instead of packing samples end to end")
    g.add_argument("--forward-micro-batches", type=int, default=0,
                   help="micro-batches of a step packed into one forward pass (0: as many as the GPU's free "
                   "memory holds; on CPU all of them)")

    g = p.add_argument_group("optimisation (upstream lora.sh defaults)")
    g.add_argument("--learning-rate", type=float, default=4e-5)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=float, default=0.03)
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many optimizer steps (0: epochs)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--gpus", type=int, default=None, help="GPUS (env GPUS, default 1)")
    g.add_argument("--batch-size", type=int, default=None, help="BATCH_SIZE (env, default 16)")
    g.add_argument("--per-device-batch-size", type=int, default=None, help="PER_DEVICE_BATCH_SIZE (env, default 4)")
    g.add_argument("--gradient-acc", type=int, default=None,
                   help="GRADIENT_ACC (env; default BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS)")

    g = p.add_argument_group("checkpoints and logs")
    g.add_argument("--save-steps", type=int, default=200, help="checkpoint every N optimizer steps")
    g.add_argument("--save-total-limit", type=int, default=2, help="keep the last K checkpoints")
    g.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from the last checkpoint in --output-dir (or from the given checkpoint dir)")
    g.add_argument("--logging-steps", type=int, default=1)
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    gpus, batch, per_device, acc = resolve_batch(args.gpus, args.batch_size, args.per_device_batch_size,
                                                 args.gradient_acc)
    for name in ("lora_r", "max_dynamic_patch", "max_seq_length", "save_steps", "save_total_limit", "min_num_frames"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_num_frames < args.min_num_frames or args.forward_micro_batches < 0:
        raise OptionError("--max-num-frames must be >= --min-num-frames and --forward-micro-batches >= 0")
    if args.unfreeze_backbone and not args.full:
        raise OptionError("--unfreeze-backbone goes with --full (for LoRA on the ViT use --vision-lora-r)")
    name = args.data if "/" not in args.data and not args.data.endswith(".json") else \
        os.path.splitext(os.path.basename(args.data))[0]
    output = args.output_dir or os.path.join("runs", f"{'full' if args.full else 'lora'}-{name}")
    return TrainConfig(
        data=args.data, model=args.model, output_dir=output, full=args.full, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha or 2 * args.lora_r, lora_dropout=args.lora_dropout,
        vision_lora_r=args.vision_lora_r, unfreeze_mlp=args.unfreeze_mlp,
        unfreeze_backbone=args.unfreeze_backbone, learning_rate=args.learning_rate,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm,
        epochs=args.epochs, max_steps=args.max_steps, max_dynamic_patch=args.max_dynamic_patch,
        max_seq_length=args.max_seq_length, group_by_length=args.group_by_length, gpus=gpus, batch_size=batch,
        per_device_batch_size=per_device, gradient_acc=acc, seed=args.seed, device=args.device, dtype=args.dtype,
        attention=args.attention, gradient_checkpointing=args.gradient_checkpointing, packing=args.packing,
        forward_micro_batches=args.forward_micro_batches, min_num_frames=args.min_num_frames,
        max_num_frames=args.max_num_frames, video_sampling=args.video_sampling,
        num_workers=args.num_workers if args.num_workers is not None else -1, save_steps=args.save_steps,
        save_total_limit=args.save_total_limit, resume=args.resume, skip_bad_samples=args.skip_bad_samples,
        logging_steps=args.logging_steps)
