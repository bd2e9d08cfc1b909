"""Command-line options of finetune/lora.py, with upstream's defaults and batch semantics.

Batch variables work as in upstream's shell scripts (and the seed README): ``GPUS`` processes, each
running ``PER_DEVICE_BATCH_SIZE`` samples per forward pass, accumulating ``GRADIENT_ACC`` passes per
optimizer step, where ``GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS`` (integer division)
unless it is given. Each may come from a flag or the environment variable of the same name; flags win.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from ivl_ros.errors import OptionError
from ivl_ros.model.options import (
    ATTENTION_MODES,
    DEVICE_HELP,
    DTYPES,
    MAX_TILES_LIMIT,
    SEED_MAX,
    float_range,
    int_range,
)

EPILOG = """\
batch semantics (flags or environment variables; flags win):
  GPUS                   processes (one per GPU); > 1 re-launches this script under torchrun (DDP)
  PER_DEVICE_BATCH_SIZE  samples per forward pass on each GPU
  BATCH_SIZE             samples per optimizer step over all GPUs (effective batch)
  GRADIENT_ACC           forward passes accumulated per step; default BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS

model: --model, else $IVL_MODEL, else the embedded demo model (models/ivl-demo), as every ivl_ros command.

examples:
  python finetune/lora.py --data habitat                       # Habitat LoRA, upstream lora.sh settings
  GPUS=2 PER_DEVICE_BATCH_SIZE=4 python finetune/lora.py --data habitat
  python finetune/lora.py --data my/meta.json --check-data     # only validate the data
  python finetune/lora.py --data habitat --resume              # continue from the last checkpoint
  python finetune/merge.py --adapter runs/lora-habitat --out models/InternVL2-2B-habitat
"""

GROUPS = ("data", "model", "optimisation (upstream lora.sh defaults)", "checkpoints and logs")
DATA, MODEL, OPTIM, LOGS = GROUPS
# Flags whose value may also come from an environment variable of the same name (upstream's shell scripts).
BATCH_ENV = {
    "gpus": "GPUS",
    "batch_size": "BATCH_SIZE",
    "per_device_batch_size": "PER_DEVICE_BATCH_SIZE",
    "gradient_acc": "GRADIENT_ACC",
}


def device_or_auto(text: str) -> str:
    """``auto`` (cuda when available) or a device name."""
    if text == "auto":
        return text
    from ivl_ros.model.options import device_name

    return device_name(text)


def option(
    default,
    help: str,
    group: str,
    *,
    type=None,
    choices: tuple[str, ...] = (),
    flag: str = "",
    required: bool = False,
    nargs: str | None = None,
    const=None,
):
    """A TrainConfig field together with its command-line option (the default is written only here)."""
    meta = {
        "help": help,
        "group": group,
        "type": type,
        "choices": choices,
        "flag": flag,
        "required": required,
        "nargs": nargs,
        "const": const,
    }
    if required:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on (recorded in ivl_finetune.json); each field is a flag of lora.py."""

    data: str = option(
        None, "a name from finetune/datasets.json (e.g. habitat) or a path to a meta json", DATA, required=True
    )
    skip_bad_samples: bool = option(
        False, "train on the valid samples and list the bad ones (default: refuse to start)", DATA
    )
    max_dynamic_patch: int = option(6, "max tiles per image", DATA, type=int_range(1, MAX_TILES_LIMIT))
    max_seq_length: int = option(4096, "truncate samples to this many tokens", DATA, type=int_range(1))
    group_by_length: bool = option(True, "plain shuffle instead of length-grouped batches", DATA)
    num_workers: int = option(-1, "data loader workers (-1: up to 8 on GPU, 0 on CPU)", DATA, type=int_range(-1))
    min_num_frames: int = option(
        8, "video: fewest frames drawn per sample (upstream's bounds)", DATA, type=int_range(1)
    )
    max_num_frames: int = option(32, "video: most frames drawn per sample", DATA, type=int_range(1))
    video_sampling: str = option(
        "rand", "video: a random or the middle frame of each equal interval", DATA, choices=("rand", "middle")
    )

    model: str = option(
        "", "base checkpoint, upstream or converted layout (default: $IVL_MODEL or the embedded demo model)", MODEL
    )
    output_dir: str = option("", "default runs/lora-<data name> (runs/full-<name> with --full)", MODEL)
    full: bool = option(
        False,
        "full finetune (upstream full.sh: LLM + MLP trained, ViT frozen) instead of LoRA; writes a full checkpoint",
        MODEL,
    )
    lora_r: int = option(128, "LLM LoRA rank", MODEL, type=int_range(1))
    lora_alpha: int = option(0, "LoRA alpha (0: 2 * r, as upstream)", MODEL, type=int_range(0))
    lora_dropout: float = option(0.05, "LoRA dropout", MODEL, type=float_range(0.0, 1.0))
    vision_lora_r: int = option(0, "also LoRA on the ViT with this rank (0: off)", MODEL, type=int_range(0))
    unfreeze_mlp: bool = option(False, "also train the MLP projector (saved in the adapter)", MODEL)
    unfreeze_backbone: bool = option(
        False, "with --full: train the ViT too (upstream freeze_backbone False; for models trained from scratch)", MODEL
    )
    device: str = option("auto", f"auto (cuda if available), {DEVICE_HELP}", MODEL, type=device_or_auto)
    # No float16: training in it would need a loss scaler.
    dtype: str = option(
        "auto",
        "base weights dtype (auto: bfloat16 on GPU, float32 on CPU)",
        MODEL,
        choices=("auto", *(d for d in DTYPES if d != "float16")),
    )
    attention: str = option(
        "auto", "attention kernels (auto: the loader's default)", MODEL, choices=("auto", *ATTENTION_MODES)
    )
    gradient_checkpointing: str = option(
        "auto",
        "activation checkpointing: auto (only the layers memory needs, "
        "measured on the GPU; off on CPU), on (every layer), off",
        MODEL,
        choices=("auto", "on", "off"),
    )
    packing: str = option(
        "auto",
        "pack a step's samples end to end, padding-free: on | off (pad each micro-batch, "
        "the reference layout) | auto (on: the same loss as the reference, and the fastest layout "
        "measured on the H200)",
        MODEL,
        choices=("auto", "on", "off"),
    )
    forward_micro_batches: int = option(
        0,
        "micro-batches of a step packed into one forward pass (0: as many as the GPU's free memory allows, measured)",
        MODEL,
        type=int_range(0),
    )

    learning_rate: float = option(
        4e-5, "peak learning rate (cosine schedule)", OPTIM, type=float_range(0.0, lo_open=True)
    )
    weight_decay: float = option(0.01, "AdamW weight decay", OPTIM, type=float_range(0.0))
    warmup_ratio: float = option(0.03, "share of the steps spent warming up", OPTIM, type=float_range(0.0, 1.0))
    max_grad_norm: float = option(1.0, "gradient clipping norm", OPTIM, type=float_range(0.0, lo_open=True))
    epochs: float = option(1.0, "passes over the data", OPTIM, type=float_range(0.0, lo_open=True))
    max_steps: int = option(0, "stop after this many optimizer steps (0: epochs)", OPTIM, type=int_range(0))
    seed: int = option(42, "seed of initialisation, data order and augmentation", OPTIM, type=int_range(0, SEED_MAX))
    gpus: int = option(1, "GPUS", OPTIM, type=int_range(1))
    batch_size: int = option(16, "BATCH_SIZE", OPTIM, type=int_range(1))
    per_device_batch_size: int = option(4, "PER_DEVICE_BATCH_SIZE", OPTIM, type=int_range(1))
    gradient_acc: int = option(
        0, "GRADIENT_ACC (0: BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS)", OPTIM, type=int_range(0)
    )

    save_steps: int = option(200, "checkpoint every N optimizer steps", LOGS, type=int_range(1))
    save_total_limit: int = option(2, "keep the last K checkpoints", LOGS, type=int_range(1))
    resume: str | None = option(
        None,
        "continue from the last checkpoint in --output-dir (or from the given checkpoint dir)",
        LOGS,
        nargs="?",
        const="last",
    )
    logging_steps: int = option(1, "log every N optimizer steps", LOGS, type=int_range(1))

    def to_json(self) -> dict:
        return asdict(self)


DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise OptionError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_batch(
    gpus: int | None, batch: int | None, per_device: int | None, acc: int | None
) -> tuple[int, int, int, int]:
    """(GPUS, BATCH_SIZE, PER_DEVICE_BATCH_SIZE, GRADIENT_ACC) from flags, then env, then defaults."""
    gpus = gpus if gpus is not None else _env_int("GPUS") or DEFAULTS["gpus"]
    per_device = (
        per_device if per_device is not None else _env_int("PER_DEVICE_BATCH_SIZE") or DEFAULTS["per_device_batch_size"]
    )
    batch = batch if batch is not None else _env_int("BATCH_SIZE") or DEFAULTS["batch_size"]
    acc = acc if acc is not None else _env_int("GRADIENT_ACC") or None
    for name, v in (("GPUS", gpus), ("PER_DEVICE_BATCH_SIZE", per_device), ("BATCH_SIZE", batch)):
        if v < 1:
            raise OptionError(f"{name} must be >= 1, got {v}")
    if acc is None:
        acc = batch // per_device // gpus  # bash integer division, as upstream's scripts
        if acc < 1:
            raise OptionError(
                f"GRADIENT_ACC = BATCH_SIZE / PER_DEVICE_BATCH_SIZE / GPUS = {batch} / {per_device} / "
                f"{gpus} is 0; raise BATCH_SIZE to at least {per_device * gpus}"
            )
    elif acc < 1:
        raise OptionError(f"GRADIENT_ACC must be >= 1, got {acc}")
    return gpus, batch, per_device, acc


def _add_field(group: argparse._ArgumentGroup, f) -> None:
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    if f.type in (bool, "bool"):
        if f.default:  # on by default: the flag turns it off
            group.add_argument("--no-" + flag[2:], dest=f.name, action="store_false", help=meta["help"])
        else:
            group.add_argument(flag, action="store_true", help=meta["help"])
        return
    kwargs: dict = {"help": meta["help"]}
    if f.name in BATCH_ENV:
        # None: not given, so resolve_batch looks at the environment variable, then the default.
        kwargs["default"] = None
        kwargs["help"] = f"{meta['help']} (env {BATCH_ENV[f.name]}, default {f.default})"
    elif meta["required"]:
        kwargs["required"] = True
    else:
        kwargs["default"] = f.default
        if f.default not in ("", None):
            kwargs["help"] += f" (default {f.default})"
    if meta["type"] is not None:
        kwargs["type"] = meta["type"]
    if meta["choices"]:
        kwargs["choices"] = meta["choices"]
    if meta["nargs"]:
        kwargs["nargs"], kwargs["const"] = meta["nargs"], meta["const"]
    group.add_argument(flag, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """lora.py's options, one per TrainConfig field (plus --check-data), grouped as in --help."""
    p = argparse.ArgumentParser(
        prog="python finetune/lora.py",
        description="LoRA (or full) finetuning of InternVL2 on InternVL-format chat data, upstream recipe "
        "(2nd-finetune lora.sh defaults). Writes a peft adapter; merge it with finetune/merge.py.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    groups[DATA].add_argument(
        "--check-data",
        action="store_true",
        help="only validate every meta/jsonl entry, print file:line: problem, exit 1 if any",
    )
    for f in fields(TrainConfig):
        _add_field(groups[f.metadata["group"]], f)
    groups[MODEL].add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_const",
        const="off",
        help="same as --gradient-checkpointing off",
    )
    groups[MODEL].add_argument(
        "--no-packing", dest="packing", action="store_const", const="off", help="same as --packing off"
    )
    return p


def config_from_args(args: argparse.Namespace, log=print) -> TrainConfig:
    """The run's TrainConfig: batch sizes resolved (flags, env, defaults), the model by the default-model rule."""
    from ivl_ros.model.defaults import resolve_model_path

    gpus, batch, per_device, acc = resolve_batch(
        args.gpus, args.batch_size, args.per_device_batch_size, args.gradient_acc or None
    )
    if args.max_num_frames < args.min_num_frames:
        raise OptionError(
            f"--max-num-frames ({args.max_num_frames}) must be >= --min-num-frames ({args.min_num_frames})"
        )
    if args.unfreeze_backbone and not args.full:
        raise OptionError("--unfreeze-backbone goes with --full (for LoRA on the ViT use --vision-lora-r)")
    name = (
        args.data
        if "/" not in args.data and not args.data.endswith(".json")
        else os.path.splitext(os.path.basename(args.data))[0]
    )
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    values.update(
        model=str(resolve_model_path(args.model or None, log=log)),
        output_dir=args.output_dir or os.path.join("runs", f"{'full' if args.full else 'lora'}-{name}"),
        lora_alpha=args.lora_alpha or 2 * args.lora_r,
        gpus=gpus,
        batch_size=batch,
        per_device_batch_size=per_device,
        gradient_acc=acc,
    )
    return TrainConfig(**values)
