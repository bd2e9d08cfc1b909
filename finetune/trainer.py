"""The training loop: data order, accumulation, DDP, checkpoints, signals, logs.

A small explicit loop rather than the transformers Trainer, because resuming must replay the exact data
order and RNG stream (loss sequence identical on CPU), SIGINT/SIGTERM must save before exiting on every
rank, and the loss must be averaged per micro-batch as upstream's Trainer 4.37 did (the v5 Trainer averages
over all tokens of the accumulated batch instead; hf_native pitfall 8).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from finetune import checkpoints
from finetune.batching import collate, length_grouped_order, micro_batches, shuffled_order
from finetune.data import DataError, Sample, check_data, resolve_data, training_samples
from finetune.model import (
    CausalLoss,
    apply_lora,
    load_for_training,
    trainable_state,
    trainable_to_float32,
    unfreeze_full,
)
from finetune.options import TrainConfig
from finetune.preprocess import build_example, estimated_length
from finetune.runlog import RunLog

TRAINING_CONFIG = "ivl_finetune.json"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop saves a checkpoint at the end of the current step and exits."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def agreed(self, d: Dist, device: torch.device) -> int:
        if d.world == 1:
            return self.signum
        t = torch.tensor([self.signum], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())


class MicroBatchSet(torch.utils.data.Dataset):
    """Item k = the collated micro-batch ``batches[k]`` (so workers build whole batches)."""

    def __init__(self, batches: list[list[int]], samples: list[Sample], build, pad_id: int, seed: int,
                 epoch: int) -> None:
        self.batches, self.samples, self.build, self.pad_id = batches, samples, build, pad_id
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict:
        # Augmentation randomness is a function of (seed, epoch, sample), never of the global RNG:
        # the same batch gets the same pixels whether or not the run was resumed.
        examples = [self.build(self.samples[i], rng=random.Random(f"{self.seed}-{self.epoch}-{i}"))
                    for i in self.batches[k]]
        return collate(examples, self.pad_id)


def _device(cfg: TrainConfig, d: Dist) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and d.world > 1:
        name = f"cuda:{d.local_rank}"
    dev = torch.device(name)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def _dtype(cfg: TrainConfig, dev: torch.device) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if dev.type == "cuda" else "float32"


def load_data(cfg: TrainConfig, log) -> tuple[list[Sample], list[str]]:
    meta = resolve_data(cfg.data)
    report = check_data(meta)
    for w in report.warnings:
        log(f"warning: {w}")
    bad = [str(p) for p in report.problems]
    if bad and not cfg.skip_bad_samples:
        shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise DataError(f"{len(bad)} problem(s) in the training data (fix them, or pass --skip-bad-samples):\n  "
                        f"{shown}\n(run with --check-data for the full list)")
    samples = training_samples(report)
    if not samples:
        raise DataError(f"{meta}: no usable training samples")
    return samples, bad


def optimizer_for(module: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW as upstream (betas 0.9/0.999, eps 1e-8); no weight decay on biases and norm weights (1-D)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def run_training(cfg: TrainConfig) -> int:
    """Train; returns the process exit code (0 done, 128+signal when interrupted after saving)."""
    d = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    dev = _device(cfg, d)
    out = Path(cfg.output_dir)
    log = print if d.main else (lambda *_: None)
    if d.world != cfg.gpus:
        raise DataError(f"GPUS={cfg.gpus} but {d.world} processes are running")
    stop = StopFlag()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    samples, bad = load_data(cfg, log)
    out.mkdir(parents=True, exist_ok=True)
    if bad and d.main:
        (out / "bad_samples.txt").write_text("\n".join(bad) + "\n")
        log(f"skipping {len(bad)} bad sample(s) (listed in {out / 'bad_samples.txt'}):")
        for line in bad[:20]:
            log(f"  {line}")

    dtype = _dtype(cfg, dev)
    attention = None if cfg.attention == "auto" else cfg.attention
    loaded = load_for_training(cfg.model, str(dev), dtype, attention, cfg.gradient_checkpointing)
    vlm, tok, spec = loaded.model, loaded.tokenizer, loaded.spec
    vlm.config.name_or_path = str(Path(cfg.model).resolve())
    peft_model = None
    if cfg.full:
        unfreeze_full(vlm, backbone=cfg.unfreeze_backbone)
    else:
        peft_model = apply_lora(vlm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.vision_lora_r,
                                cfg.unfreeze_mlp)
    trainable_to_float32(vlm)
    n_train = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in vlm.parameters())
    log(f"trainable parameters: {n_train:,} of {n_total:,} ({100 * n_train / n_total:.2f}%)")
    vlm.train()
    loss_module = CausalLoss(vlm)
    model = loss_module
    if d.world > 1:
        unused = bool(cfg.full or cfg.vision_lora_r or cfg.unfreeze_mlp)  # text-only batches skip ViT/MLP
        model = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=unused)

    def build(sample, rng):
        return build_example(sample, tok, spec, cfg.max_dynamic_patch, cfg.max_seq_length, rng)

    lengths = [estimated_length(s, tok, spec, cfg.max_dynamic_patch) for s in samples] if cfg.group_by_length \
        else None
    group = cfg.per_device_batch_size * d.world * cfg.gradient_acc

    def epoch_steps(epoch: int) -> list[list[list[int]]]:
        seed = cfg.seed + epoch
        order = length_grouped_order(lengths, group, seed) if lengths else shuffled_order(len(samples), seed)
        mbs = micro_batches(order, cfg.per_device_batch_size, d.world, d.rank)
        return [mbs[i:i + cfg.gradient_acc] for i in range(0, len(mbs), cfg.gradient_acc)]

    steps_per_epoch = len(epoch_steps(0))
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    optimizer = optimizer_for(loss_module, cfg)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)
    trainable = [p for p in loss_module.parameters() if p.requires_grad]
    names = list(trainable_state(vlm))

    global_step, start_epoch, skip = 0, 0, 0
    if cfg.resume:
        found = checkpoints.list_checkpoints(out) if cfg.resume == "last" else [Path(cfg.resume)]
        if not found:
            log(f"--resume: no checkpoint in {out}; starting from scratch")
        else:
            ck = checkpoints.load_checkpoint(found[-1], dev)
            st = ck["state"]
            batch = (d.world, cfg.per_device_batch_size, cfg.gradient_acc)
            if tuple(st["batch"]) != batch or st["seed"] != cfg.seed:
                raise DataError(f"{found[-1]}: written with (GPUS, PER_DEVICE_BATCH_SIZE, GRADIENT_ACC) = "
                                f"{tuple(st['batch'])}, seed {st['seed']}; resume with the same settings "
                                f"(now {batch}, seed {cfg.seed})")
            params = dict(vlm.named_parameters())
            with torch.no_grad():
                for n in names:
                    params[n].copy_(ck["trainable"][n])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            checkpoints.set_rng_state(ck["rng"][d.rank])
            global_step, start_epoch, skip = st["global_step"], st["epoch"], st["step_in_epoch"]
            log(f"resumed from {found[-1]} at step {global_step}")

    runlog = RunLog(out, total, global_step, enabled=d.main)
    if d.main:
        (out / TRAINING_CONFIG).write_text(json.dumps(_training_record(cfg, spec, n_train, d.world), indent=2) + "\n")
    workers = cfg.num_workers if cfg.num_workers >= 0 else (4 if dev.type == "cuda" else 0)
    use_autocast = dev.type == "cuda" and dtype == "bfloat16"
    pv_dtype = next(vlm.model.vision_tower.parameters()).dtype
    last_saved = global_step
    t_start = time.perf_counter()

    def save(epoch: int, step_in_epoch: int) -> Path | None:
        rng_all = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rng_all, checkpoints.rng_state())
        else:
            rng_all = [checkpoints.rng_state()]
        path = None
        if d.main:
            state = {"global_step": global_step, "epoch": epoch, "step_in_epoch": step_in_epoch,
                     "total_steps": total, "batch": [d.world, cfg.per_device_batch_size, cfg.gradient_acc],
                     "seed": cfg.seed, "num_samples": len(samples)}
            path = checkpoints.save_checkpoint(out, global_step, trainable_state(vlm), optimizer, scheduler, rng_all,
                                               state, cfg.save_total_limit)
        if d.world > 1:
            dist.barrier()
        return path

    epoch = start_epoch
    interrupted = 0
    while global_step < total and not interrupted:
        steps = epoch_steps(epoch)
        if skip >= len(steps):
            epoch, skip = epoch + 1, 0
            continue
        flat = [mb for step in steps[skip:] for mb in step]
        loader = torch.utils.data.DataLoader(
            MicroBatchSet(flat, samples, build, tok.pad_id, cfg.seed, epoch), batch_size=None, shuffle=False,
            num_workers=workers, generator=torch.Generator().manual_seed(cfg.seed + epoch),
            persistent_workers=False, prefetch_factor=2 if workers else None)
        batches = iter(loader)
        for step_in_epoch in range(skip, len(steps)):
            t0 = time.perf_counter()
            n_micro = len(steps[step_in_epoch])
            loss_sum = torch.zeros((), device=dev)
            n_seen = 0
            for m in range(n_micro):
                batch = next(batches)
                n_seen += batch["num_samples"]
                sync = m == n_micro - 1 or d.world == 1
                ctx = model.no_sync() if not sync else contextlib.nullcontext()
                amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
                with ctx, amp:
                    pv = batch["pixel_values"]
                    loss = model(batch["input_ids"].to(dev), batch["attention_mask"].to(dev), batch["labels"].to(dev),
                                 pv.to(dev, pv_dtype) if pv is not None else None)
                    (loss / n_micro).backward()
                loss_sum += loss.detach().float()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            mean_loss = loss_sum / n_micro
            if d.world > 1:
                dist.all_reduce(mean_loss)
                mean_loss /= d.world
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            dt = time.perf_counter() - t0
            if global_step % cfg.logging_steps == 0 or global_step == total:
                runlog.log({"step": global_step, "epoch": round(epoch + (step_in_epoch + 1) / len(steps), 4),
                            "loss": float(mean_loss), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                            "samples_per_s": n_seen * d.world / dt, "step_time_s": dt,
                            "elapsed_s": time.perf_counter() - t_start})
            done_epoch = step_in_epoch + 1 == len(steps)
            pos = (epoch + 1, 0) if done_epoch else (epoch, step_in_epoch + 1)
            interrupted = stop.agreed(d, dev)
            if global_step % cfg.save_steps == 0 or (interrupted and global_step != last_saved):
                path = save(*pos)
                last_saved = global_step
                if path:
                    runlog.write(f"saved {path}")
            if interrupted or global_step >= total:
                break
        del batches, loader
        epoch, skip = epoch + 1, 0

    runlog.close()
    stop.restore()
    if d.world > 1:
        _check_ranks_agree(d, vlm, out)
    if interrupted:
        if d.main:
            name = signal.Signals(interrupted).name
            print(f"{name}: stopped at step {global_step}/{total}; checkpoint saved in {out}. "
                  f"Continue with the same command plus --resume.", flush=True)
        _finish(d)
        return 128 + interrupted
    if d.main:
        stats = _run_stats(runlog.rows, dev, n_train, d.world, cfg)
        (out / "run_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        _write_outputs(cfg, out, vlm, peft_model, loaded, runlog)
    _finish(d)
    return 0


def _check_ranks_agree(d: Dist, vlm, out: Path) -> None:
    """DDP sanity check: every rank must hold bit-identical trainable weights (written to ddp_check.json)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in trainable_state(vlm).items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    digests = [None] * d.world
    dist.all_gather_object(digests, h.hexdigest())
    if d.main:
        (out / "ddp_check.json").write_text(json.dumps({"ranks": digests, "agree": len(set(digests)) == 1}) + "\n")
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks diverged: trainable weight digests {digests}")


def _run_stats(rows: list[dict], dev: torch.device, n_train: int, world: int, cfg: TrainConfig) -> dict:
    """Throughput summary of this run (first step left out of the means: it includes warm-up)."""
    timed = rows[1:] or rows
    step_times = [float(r["step_time_s"]) for r in timed]
    stats = {"steps": len(rows), "trainable_parameters": n_train, "world_size": world,
             "per_device_batch_size": cfg.per_device_batch_size, "gradient_acc": cfg.gradient_acc,
             "samples_per_step": cfg.per_device_batch_size * cfg.gradient_acc * world,
             "mean_step_time_s": sum(step_times) / len(step_times) if step_times else None,
             "mean_samples_per_s": (sum(float(r["samples_per_s"]) for r in timed) / len(timed)) if timed else None,
             "first_step_time_s": float(rows[0]["step_time_s"]) if rows else None}
    if dev.type == "cuda":
        stats["peak_gpu_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        stats["peak_gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
        stats["gpu"] = torch.cuda.get_device_name(dev)
    return stats


def _finish(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _training_record(cfg: TrainConfig, spec, n_train: int, world: int) -> dict:
    return {"base_model": str(Path(cfg.model).resolve()), "data": cfg.data, "trainable_parameters": n_train,
            "world_size": world, "config": cfg.to_json(), "spec": spec.to_json(),
            "lora_targets": "split q/k/v/o/gate/up/down (peft); upstream fused wqkv differs, see finetune/model.py"}


def _write_outputs(cfg: TrainConfig, out: Path, vlm, peft_model, loaded, runlog: RunLog) -> None:
    png = runlog.plot(out / "loss_curve.png")
    if peft_model is not None:
        peft_model.save_pretrained(str(out))
        print(f"adapter written to {out} (merge: python finetune/merge.py --adapter {out} --out DIR)")
    else:
        from finetune.writer import write_full_checkpoint

        target = out / "model"
        write_full_checkpoint(vlm, loaded, target, layout="upstream", max_dynamic_patch=cfg.max_dynamic_patch)
        print(f"full checkpoint written to {target}")
    if png:
        print(f"loss curve: {png}")
