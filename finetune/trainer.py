"""The training loop: data order, accumulation, DDP, checkpoints, signals, logs.

A small explicit loop rather than the transformers Trainer, because resuming must replay the exact data
order and RNG stream (loss sequence identical on CPU), SIGINT/SIGTERM must save before exiting on every
rank, and the loss must be averaged per micro-batch as upstream's Trainer 4.37 did (the v5 Trainer averages
over all tokens of the accumulated batch instead; hf_native pitfall 8).

``Trainer`` holds the run: ``resume`` restores the newest intact checkpoint, ``train`` walks the epochs,
``step`` runs one optimizer step over its micro-batches (``forward`` is the one place that turns a collated
batch into a loss), ``save`` writes a checkpoint. An error while training saves a checkpoint before it
propagates, so at most the failing step is lost.

Micro-batches (PER_DEVICE_BATCH_SIZE samples) are the unit the loss is averaged over, as upstream. How they
run is the *layout*: padded (one micro-batch per forward, each row padded to the longest) or packed (the
default: several micro-batches of a step end to end in one forward, no padding; finetune/memory.py sizes it
from the GPU's free memory and checkpoints only the layers that memory needs). The layout is recorded in
each checkpoint and kept on resume (it decides the order dropout draws its masks in).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from finetune import checkpoints
from finetune.batching import collate, length_grouped_order, micro_batches, pack, shuffled_order
from finetune.checkpoints import CheckpointDamaged
from finetune.data import DataError, Sample, check_data, resolve_data, training_samples
from finetune.memory import GIB, ForwardPlan, choose_plan, even_split
from finetune.model import (
    CausalLoss,
    apply_lora,
    load_for_training,
    lora_inputs_in_compute_dtype,
    set_checkpointed_layers,
    trainable_state,
    trainable_to_float32,
    training_sdpa_backends,
    unfreeze_full,
    use_packed_attention,
)
from finetune.options import TrainConfig
from finetune.preprocess import SAMPLE_FAILURES, build_example, sample_token_counts
from finetune.runlog import RunLog
from finetune.video import FrameSampling

TRAINING_CONFIG = "ivl_finetune.json"
# A data-loader worker that has not delivered a batch in this long is taken as stuck (a batch of 16 seven-tile
# samples takes about a second to build on one core).
LOADER_TIMEOUT_S = 600
BAD_SAMPLES = "bad_samples.txt"


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


@dataclass(frozen=True)
class Layout:
    """How micro-batches run: ``packed`` end to end (``per_forward`` of a step in one forward) or padded (one)."""

    packed: bool
    per_forward: int = 1

    def to_json(self) -> dict:
        return {"packed": self.packed, "micro_batches_per_forward": self.per_forward}

    @classmethod
    def from_json(cls, raw: dict | None) -> Layout:
        if raw is None:  # checkpoints of the padded-only trainer
            return cls(False, 1)
        return cls(bool(raw["packed"]), int(raw["micro_batches_per_forward"]))

    def forwards(self, micro: list[list[int]]) -> list[list[list[int]]]:
        """The forward passes of one step: groups of its micro-batches."""
        return [micro[i : i + self.per_forward] for i in range(0, len(micro), self.per_forward)]


class ForwardSet(torch.utils.data.Dataset):
    """Item k = the input of forward pass k: ``forwards[k] = (micro-batches, micro-batches in its step)``,
    collated padded (one micro-batch) or packed (so workers build whole batches).

    A sample whose image cannot be read is never raised inside a worker (the DataLoader would wrap it in a
    traceback): with ``skip_bad`` it is left out and listed in the batch's ``skipped``, otherwise the batch
    carries an ``error`` that the training loop raises. A micro-batch whose samples all fail takes the next
    good sample instead, so every rank still runs every micro-batch of every step.
    """

    def __init__(
        self,
        forwards: list[tuple[list[list[int]], int]],
        samples: list[Sample],
        build,
        pad_id: int,
        seed: int,
        epoch: int,
        skip_bad: bool = False,
        packed: bool = False,
        pixel_dtype: torch.dtype | None = None,
    ) -> None:
        self.forwards, self.samples, self.build, self.pad_id = forwards, samples, build, pad_id
        self.seed, self.epoch, self.skip_bad, self.packed = seed, epoch, skip_bad, packed
        self.pixel_dtype = pixel_dtype

    def __len__(self) -> int:
        return len(self.forwards)

    def _example(self, i: int):
        # Randomness (augmentation, video frames) is a function of (seed, epoch, sample), never of the global
        # RNG: the same batch gets the same pixels whether or not the run was resumed.
        return self.build(self.samples[i], rng=random.Random(f"{self.seed}-{self.epoch}-{i}"))

    def __getitem__(self, k: int) -> dict:
        micro, n_micro = self.forwards[k]
        built, skipped = [], []
        for batch in micro:
            examples = []
            for i in batch:
                try:
                    examples.append(self._example(i))
                except SAMPLE_FAILURES as exc:
                    if not self.skip_bad:
                        return {"error": f"{self.samples[i].where}: {exc}"}
                    skipped.append(f"{self.samples[i].where}: {exc}")
            if not examples:
                examples = self._stand_in(batch[-1], skipped)
            if not examples:
                return {"error": "no sample of the training data can be read", "skipped": skipped}
            built.append(examples)
        if self.packed:
            return {**pack(built, n_micro, self.pixel_dtype), "skipped": skipped}
        if len(built) != 1:
            raise ValueError("the padded layout runs one micro-batch per forward")
        return {**collate(built[0], self.pad_id), "skipped": skipped}

    def _stand_in(self, after: int, skipped: list[str]) -> list:
        """The first sample after ``after`` (wrapping around) that builds, for a micro-batch left empty."""
        n = len(self.samples)
        for j in ((after + step) % n for step in range(1, n + 1)):
            try:
                return [self._example(j)]
            except SAMPLE_FAILURES as exc:
                skipped.append(f"{self.samples[j].where}: {exc}")
        return []


def sample_builder(tokenizer, spec, max_dynamic_patch: int, max_seq_length: int, sampling: FrameSampling):
    """``build(sample, rng=...) -> Example``, picklable (a partial of a module function, no trainer inside), so
    that data-loader workers can start from a fresh interpreter (``loader_context``)."""
    return functools.partial(
        build_example,
        tokenizer=tokenizer,
        spec=spec,
        max_dynamic_patch=max_dynamic_patch,
        max_seq_length=max_seq_length,
        sampling=sampling,
    )


def loader_context(device_type: str, workers: int):
    """How data-loader workers start: on CUDA from a fork server (a clean interpreter), elsewhere forked (None).

    A worker forked from the training process inherits its threads' locks and library state (CUDA, the autograd
    engine's device threads, OpenMP pools, the allocator's); on the H200 the first batch of a run never came
    back from 8 forked workers once the trainer had run a forward and backward before creating its loader (the
    memory probe of the automatic checkpointing plan; which of the two mattered is not isolated:
    benchmarks/results/finetune_h200.json), and came at once from fork-server workers. Those have none of that
    state, at the cost of pickling the dataset (samples and the ``sample_builder``) once per loader.
    The server imports this module (torch, the preprocessing) once, so that each epoch's workers start warm: without
    it every worker imported them again, about 6 s at each epoch's start on the H200.
    """
    if workers == 0 or device_type != "cuda":
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once the server runs: it has them already
    return context


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
        raise DataError(
            f"{len(bad)} problem(s) in the training data (fix them, or pass --skip-bad-samples):\n  "
            f"{shown}\n(run with --check-data for the full list)"
        )
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


def packs(packing: str) -> bool:
    """--packing on|off|auto -> whether a step's samples are packed end to end. auto: packed everywhere (the loss
    is checked equal to the padded reference on the CPU; on the H200 it is the fastest layout measured,
    benchmarks/results/finetune_h200.json)."""
    return packing in ("on", "auto")


class Trainer:
    """One training run (every rank builds one): model, optimizer, data order, position, checkpoints."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.d = init_distributed("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
        self.dev = _device(cfg, self.d)
        self.out = Path(cfg.output_dir)
        self.log = print if self.d.main else (lambda *_: None)
        if self.d.world != cfg.gpus:
            raise DataError(f"GPUS={cfg.gpus} but {self.d.world} processes are running")
        self.stop = StopFlag()
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.samples, bad = load_data(cfg, self.log)
        self.out.mkdir(parents=True, exist_ok=True)
        if bad:
            self._note_bad(bad, "skipping {n} bad sample(s) (listed in {file}):", mode="w")
        self._build_model()
        self._build_schedule()
        self.global_step, self.epoch, self.skip = 0, 0, 0  # position: steps done; next (epoch, step in epoch)
        self.skipped = 0  # samples left out while training (--skip-bad-samples), this process

    # -- set-up ------------------------------------------------------------------------------------------
    def _build_model(self) -> None:
        cfg, dev = self.cfg, self.dev
        self.dtype = _dtype(cfg, dev)
        attention = None if cfg.attention == "auto" else cfg.attention
        self.loaded = load_for_training(cfg.model, str(dev), self.dtype, attention)
        vlm, self.tok, self.spec = self.loaded.model, self.loaded.tokenizer, self.loaded.spec
        vlm.config.name_or_path = str(Path(cfg.model).resolve())
        self.peft_model = None
        if cfg.full:
            unfreeze_full(vlm, backbone=cfg.unfreeze_backbone)
        else:
            self.peft_model = apply_lora(
                vlm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.vision_lora_r, cfg.unfreeze_mlp
            )
        trainable_to_float32(vlm)
        self.n_train = sum(p.numel() for p in vlm.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in vlm.parameters())
        self.log(f"trainable parameters: {self.n_train:,} of {n_total:,} ({100 * self.n_train / n_total:.2f}%)")
        vlm.train()
        self.vlm = vlm
        self.loss_module = CausalLoss(vlm)
        self.model = self.loss_module  # wrapped in DDP by _wrap_ddp once the layout is set
        self.use_autocast = dev.type == "cuda" and self.dtype == "bfloat16"
        self.pv_dtype = next(vlm.model.vision_tower.parameters()).dtype
        self.n_layers = len(vlm.model.language_model.layers)
        self.layout = Layout(packs(cfg.packing), 1)
        self.resumed_layout: Layout | None = None

    def _wrap_ddp(self) -> None:
        cfg, d, dev = self.cfg, self.d, self.dev
        if d.world > 1:
            unused = bool(cfg.full or cfg.vision_lora_r or cfg.unfreeze_mlp)  # text-only batches skip ViT/MLP
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=unused
            )

    def _build_schedule(self) -> None:
        cfg = self.cfg
        self.sampling = FrameSampling(cfg.min_num_frames, cfg.max_num_frames, cfg.video_sampling)
        self._token_counts = None
        self.lengths = [c.estimate for c in self.token_counts()] if cfg.group_by_length else None
        self.steps_per_epoch = len(self.epoch_steps(0))
        self.total = cfg.max_steps or math.ceil(cfg.epochs * self.steps_per_epoch)
        self.optimizer = optimizer_for(self.loss_module, cfg)
        from transformers import get_cosine_schedule_with_warmup

        self.scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, math.ceil(cfg.warmup_ratio * self.total), self.total
        )
        self.trainable = [p for p in self.loss_module.parameters() if p.requires_grad]
        self.names = list(trainable_state(self.vlm))
        # Auto: on a GPU up to 8 workers (leaving two cores): each tiles and normalises whole samples on the CPU,
        # and a packed forward of 16 seven-tile samples needs them at GPU speed.
        auto = min(8, max(1, (os.cpu_count() or 4) - 2)) if self.dev.type == "cuda" else 0
        self.workers = cfg.num_workers if cfg.num_workers >= 0 else auto

    def epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """This rank's steps of ``epoch``: each a list of micro-batches (lists of sample indices)."""
        cfg, d = self.cfg, self.d
        seed = cfg.seed + epoch
        group = cfg.per_device_batch_size * d.world * cfg.gradient_acc
        order = (
            length_grouped_order(self.lengths, group, seed) if self.lengths else shuffled_order(len(self.samples), seed)
        )
        mbs = micro_batches(order, cfg.per_device_batch_size, d.world, d.rank)
        return [mbs[i : i + cfg.gradient_acc] for i in range(0, len(mbs), cfg.gradient_acc)]

    @property
    def build(self):
        """``build(sample, rng=...) -> Example`` with this run's tokenizer, tiling and frame sampling."""
        return sample_builder(self.tok, self.spec, self.cfg.max_dynamic_patch, self.cfg.max_seq_length, self.sampling)

    # -- layout ------------------------------------------------------------------------------------------
    def token_counts(self) -> list:
        """Per sample: upstream's length estimate and an upper bound of its tokens (tokenizes once, on demand)."""
        if self._token_counts is None:
            self._token_counts = sample_token_counts(
                self.samples, self.tok, self.spec, self.cfg.max_dynamic_patch, self.sampling
            )
        return self._token_counts

    def set_layout(self) -> None:
        """Decide the layout (a resumed run keeps its checkpoint's) and the checkpointed layers, then wrap DDP."""
        cfg, acc = self.cfg, self.cfg.gradient_acc
        if self.resumed_layout is not None:
            self.layout = self.resumed_layout
            if self.layout != Layout(packs(cfg.packing), self.layout.per_forward):
                self.log(f"resuming with the checkpoint's batch layout ({self.layout.to_json()})")
        layers = {"on": self.n_layers, "off": 0}.get(cfg.gradient_checkpointing)
        if not self.layout.packed:
            if layers is None and self.dev.type == "cuda":  # which layers recompute changes no number
                plan = self._measured_plan(None, per_forward=1)
            else:
                plan = ForwardPlan(1, layers or 0, "padded layout")
        elif self.resumed_layout is not None and (layers is not None or self.dev.type != "cuda"):
            plan = ForwardPlan(self.layout.per_forward, layers or 0)
        elif self.dev.type != "cuda" or (layers is not None and cfg.forward_micro_batches):
            plan = ForwardPlan(even_split(acc, cfg.forward_micro_batches or acc), layers or 0)
        else:
            plan = self._measured_plan(layers)
            if self.resumed_layout is not None:
                plan = ForwardPlan(self.layout.per_forward, plan.checkpointed_layers, plan.note)
        if self.d.world > 1:  # every rank runs the same forwards; the most checkpointing any rank needs
            t = torch.tensor([plan.micro_batches_per_forward, -plan.checkpointed_layers], device=self.dev)
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            plan = ForwardPlan(int(t[0]), -int(t[1]), plan.note)
        self.layout = Layout(self.layout.packed, plan.micro_batches_per_forward)
        self.plan = plan
        use_packed_attention(self.vlm, self.layout.packed)
        if self.use_autocast:
            lora_inputs_in_compute_dtype(self.vlm)
        set_checkpointed_layers(self.vlm, plan.checkpointed_layers)
        kind = "packed" if self.layout.packed else "padded"
        self.log(f"batch layout: {kind}, {plan.describe(self.n_layers, cfg.per_device_batch_size)}")
        self._wrap_ddp()

    def _measured_plan(self, forced_layers: int | None, per_forward: int | None = None) -> ForwardPlan:
        """Measure activation memory on one real micro-batch and plan from the GPU's free memory (``per_forward``:
        micro-batches per forward fixed, e.g. 1 for the padded layout; only the checkpointed layers are planned)."""
        cfg, dev = self.cfg, self.dev
        steps = self.epoch_steps(self.epoch)
        first = steps[min(self.skip, len(steps) - 1)][0]
        probe = ForwardSet(
            [([first], 1)],
            self.samples,
            self.build,
            self.tok.pad_id,
            cfg.seed,
            self.epoch,
            cfg.skip_bad_samples,
            packed=True,
            pixel_dtype=self.pv_dtype,
        )[0]
        if "error" in probe:
            return ForwardPlan(
                1,
                self.n_layers if forced_layers is None else forced_layers,
                "no probe batch could be built; planning conservatively",
            )
        tokens = probe["input_ids"].numel()
        full = self._probe_peak(probe, 0) if forced_layers != self.n_layers else math.inf
        ckpt = self._probe_peak(probe, self.n_layers) if forced_layers != 0 else math.inf
        grads = 4 * self.n_train
        free, total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        optimizer_states = 8 * self.n_train  # AdamW's exp_avg and exp_avg_sq in fp32, created at the first step
        # a tenth of the GPU stays unplanned: allocator fragmentation, the data loader's pinned copies, cuBLAS
        available = free + cached - optimizer_states - max(2 * GIB, 0.10 * total)
        bound = min(cfg.max_seq_length, max(c.bound for c in self.token_counts()))
        per_full, per_ckpt = ((peak - grads) / tokens for peak in (full, ckpt))
        plan = choose_plan(
            available,
            per_full,
            per_ckpt,
            grads,
            self.n_layers,
            cfg.per_device_batch_size * bound,
            per_forward or cfg.gradient_acc,
            checkpointed=forced_layers,
        )
        if per_forward:
            k = per_forward
        elif cfg.forward_micro_batches:
            k = even_split(cfg.gradient_acc, cfg.forward_micro_batches)
        else:
            k = plan.micro_batches_per_forward
        measured = ", ".join(
            f"{v / 2**20:.2f} MiB/token {what}"
            for v, what in ((per_full, "without"), (per_ckpt, "with"))
            if math.isfinite(v)
        )
        note = (
            f"measured {measured} checkpointing on a {tokens}-token micro-batch; samples up to {bound} tokens; "
            f"{plan.note}"
        )
        return ForwardPlan(k, plan.checkpointed_layers, note)

    def _probe_peak(self, batch: dict, checkpointed: int) -> float:
        """Peak bytes one forward + backward of ``batch`` adds (inf if it does not fit); changes nothing."""
        dev = self.dev
        set_checkpointed_layers(self.vlm, checkpointed)
        use_packed_attention(self.vlm, True)
        if self.use_autocast:
            lora_inputs_in_compute_dtype(self.vlm)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        try:
            with torch.random.fork_rng(devices=[dev]), self._autocast(), training_sdpa_backends():
                self.loss_module(**self._inputs(batch)).backward()
            torch.cuda.synchronize(dev)
            peak = float(torch.cuda.max_memory_allocated(dev) - base)
        except torch.cuda.OutOfMemoryError:
            peak = math.inf
        for p in self.trainable:
            p.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        return peak

    def _note_bad(self, bad: list[str], headline: str, mode: str = "a") -> None:
        """Write (``w``) or append (``a``) problems to bad_samples.txt and log the first few (rank 0)."""
        if not self.d.main or not bad:
            return
        file = self.out / BAD_SAMPLES
        with open(file, mode) as fh:
            fh.write("".join(line + "\n" for line in bad))
        self.log(headline.format(n=len(bad), file=file))
        for line in bad[:20]:
            self.log(f"  {line}")

    # -- resume ------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restore the newest intact checkpoint; damaged ones are reported (file and reason) and passed over."""
        if not self.cfg.resume:
            return
        candidates = checkpoints.resume_candidates(self.cfg.resume, self.out)
        if not candidates:
            self.log(f"--resume: no checkpoint in {self.out}; starting from scratch")
            return
        damaged = []
        for path in candidates:
            try:
                ck = checkpoints.load_checkpoint(path)
                self._check_settings(ck)
                self._restore(ck)
            except CheckpointDamaged as exc:
                damaged.append(str(exc))
                self.log(f"warning: cannot resume from {path}: {exc}")
                continue
            st = ck.state
            self.global_step, self.epoch, self.skip = st["global_step"], st["epoch"], st["step_in_epoch"]
            self.resumed_layout = Layout.from_json(st.get("layout"))
            older = " (newer checkpoints are damaged, see above)" if damaged else ""
            self.log(f"resumed from {path} at step {self.global_step}{older}")
            return
        raise DataError("--resume: no intact checkpoint to resume from:\n  " + "\n  ".join(damaged))

    def _check_settings(self, ck: checkpoints.Checkpoint) -> None:
        cfg, st = self.cfg, ck.state
        batch = (self.d.world, cfg.per_device_batch_size, cfg.gradient_acc)
        if tuple(st["batch"]) != batch or st["seed"] != cfg.seed:
            raise DataError(
                f"{ck.path}: written with (GPUS, PER_DEVICE_BATCH_SIZE, GRADIENT_ACC) = "
                f"{tuple(st['batch'])}, seed {st['seed']}; resume with the same settings "
                f"(now {batch}, seed {cfg.seed})"
            )

    def _restore(self, ck: checkpoints.Checkpoint) -> None:
        """Load a checkpoint that fits this model, optimizer and world size (CheckpointDamaged if it does not)."""
        params = dict(self.vlm.named_parameters())
        checkpoints.check_fits(ck, {n: params[n] for n in self.names}, self.optimizer, self.scheduler, self.d.world)
        try:
            checkpoints.set_rng_state(ck.rng[self.d.rank])
            self.optimizer.load_state_dict(ck.optimizer)
            self.scheduler.load_state_dict(ck.scheduler)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointDamaged(f"{ck.path}: optimizer, schedule or RNG state does not load ({exc})") from None
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(ck.trainable[n])

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, epoch: int, step_in_epoch: int, rng: dict | None = None) -> Path | None:
        """Every rank calls this (RNG states are gathered); rank 0 writes. ``rng``: this rank's state to record
        instead of the current one (a save after an error records the state at the start of the failed step)."""
        d = self.d
        mine = rng if rng is not None else checkpoints.rng_state()
        rng_all = [None] * d.world
        if d.world > 1:
            dist.all_gather_object(rng_all, mine)  # between this run's own processes, never from disk
        else:
            rng_all = [mine]
        path = None
        if d.main:
            state = {
                "global_step": self.global_step,
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "total_steps": self.total,
                "batch": [d.world, self.cfg.per_device_batch_size, self.cfg.gradient_acc],
                "seed": self.cfg.seed,
                "num_samples": len(self.samples),
                "layout": self.layout.to_json(),
            }
            path = checkpoints.save_checkpoint(
                self.out,
                self.global_step,
                trainable_state(self.vlm),
                self.optimizer,
                self.scheduler,
                rng_all,
                state,
                self.cfg.save_total_limit,
            )
        if d.world > 1:
            dist.barrier()
        self.last_saved = self.global_step
        return path

    # -- training ----------------------------------------------------------------------------------------
    PADDED_INPUTS = ("input_ids", "attention_mask", "labels", "pixel_values")
    PACKED_INPUTS = ("input_ids", "position_ids", "targets", "weights", "segments", "pixel_values")

    def _inputs(self, batch: dict) -> dict:
        names = self.PACKED_INPUTS if "segments" in batch else self.PADDED_INPUTS
        out = {}
        for name in names:
            value = batch[name]
            if isinstance(value, torch.Tensor):
                value = value.to(self.dev, self.pv_dtype if name == "pixel_values" else None, non_blocking=True)
            out[name] = value
        return out

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.use_autocast else contextlib.nullcontext()

    def forward(self, batch: dict) -> torch.Tensor:
        """A collated forward batch -> its loss (the model call every throughput change goes through): the mean
        over a padded micro-batch, or a packed batch's share of its step's loss."""
        return self.model(**self._inputs(batch))

    def next_batch(self, batches) -> dict:
        """The next micro-batch; a sample that cannot be read stops every rank together (so all can save)."""
        try:
            batch = next(batches)
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise DataError(
                f"no batch from the {self.workers} data-loader worker(s) in {LOADER_TIMEOUT_S} s: they are stuck "
                "or far too slow for this data; --num-workers 0 builds batches in the training process"
            ) from None
        failed = "error" in batch
        if self.d.world > 1:
            flag = torch.tensor([int(failed)], device=self.dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() and not failed:
                raise DataError("another rank hit a sample it cannot read (its log names it)")
        if failed:
            raise DataError(f"{batch['error']} (pass --skip-bad-samples to train without such samples)")
        if batch["skipped"]:
            self.skipped += len(batch["skipped"])
            self._note_bad(batch["skipped"], "skipped {n} sample(s) whose image cannot be read (listed in {file}):")
        return batch

    def step(self, micro: list[list[int]], batches) -> dict:
        """One optimizer step over this rank's ``micro`` batches; returns the logged numbers."""
        d, dev = self.d, self.dev
        t0 = time.perf_counter()
        forwards = self.layout.forwards(micro)
        # Padded: each forward is one micro-batch's mean, averaged here; packed: already the step's share.
        scale = len(micro) if not self.layout.packed else 1
        loss_sum = torch.zeros((), device=dev)
        n_seen = n_tokens = 0
        for f in range(len(forwards)):
            batch = self.next_batch(batches)
            n_seen += batch["num_samples"]
            n_tokens += int(batch["input_ids"].numel() if self.layout.packed else batch["attention_mask"].sum())
            sync = f == len(forwards) - 1 or d.world == 1
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, self._autocast(), training_sdpa_backends():
                loss = self.forward(batch)
                (loss / scale).backward()
            loss_sum += loss.detach().float()
        self.updating = True  # from here until the step is counted, a save would record half an update
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.updating = False
        mean_loss = loss_sum / scale
        if d.world > 1:
            dist.all_reduce(mean_loss)
            mean_loss /= d.world
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        return {
            "loss": float(mean_loss),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "samples_per_s": n_seen * d.world / dt,
            "tokens_per_s": n_tokens * d.world / dt,
            "step_time_s": dt,
        }

    def _loader(self, forwards: list[tuple[list[list[int]], int]], epoch: int):
        cfg = self.cfg
        return torch.utils.data.DataLoader(
            ForwardSet(
                forwards,
                self.samples,
                self.build,
                self.tok.pad_id,
                cfg.seed,
                epoch,
                cfg.skip_bad_samples,
                packed=self.layout.packed,
                pixel_dtype=self.pv_dtype,
            ),
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(cfg.seed + epoch),
            persistent_workers=False,
            prefetch_factor=2 if self.workers else None,
            pin_memory=self.dev.type == "cuda" and self.layout.packed,
            multiprocessing_context=loader_context(self.dev.type, self.workers),
            timeout=LOADER_TIMEOUT_S if self.workers else 0,
        )

    def _epochs(self) -> int:
        """Run steps from the current position until done or stopped; returns the agreed signal (0: none)."""
        cfg = self.cfg
        while self.global_step < self.total:
            epoch, skip = self.epoch, self.skip
            steps = self.epoch_steps(epoch)
            if skip >= len(steps):
                self.epoch, self.skip = epoch + 1, 0
                continue
            forwards = [(group, len(step)) for step in steps[skip:] for group in self.layout.forwards(step)]
            batches = iter(self._loader(forwards, epoch))
            for step_in_epoch in range(skip, len(steps)):
                self.rng_at_step = checkpoints.rng_state()
                row = self.step(steps[step_in_epoch], batches)
                done_epoch = step_in_epoch + 1 == len(steps)
                self.epoch, self.skip = (epoch + 1, 0) if done_epoch else (epoch, step_in_epoch + 1)
                self.rng_at_step = None
                if self.global_step % cfg.logging_steps == 0 or self.global_step == self.total:
                    progress = round(epoch + (step_in_epoch + 1) / len(steps), 4)
                    self.runlog.log(
                        {
                            "step": self.global_step,
                            "epoch": progress,
                            **row,
                            "elapsed_s": time.perf_counter() - self.t_start,
                        }
                    )
                interrupted = self.stop.agreed(self.d, self.dev)
                if self.global_step % cfg.save_steps == 0 or (interrupted and self.global_step != self.last_saved):
                    self._saved(self.save(self.epoch, self.skip))
                if interrupted or self.global_step >= self.total:
                    return interrupted
        return 0

    def _saved(self, path: Path | None) -> None:
        if path:
            self.runlog.write(f"saved {path}")

    def _save_after_error(self, exc: Exception) -> None:
        """Keep the steps done so far: save at the failed step (with the RNG state it started from)."""
        collective = self.d.world == 1 or isinstance(exc, DataError)  # DataError: every rank stopped together
        if self.global_step == self.last_saved or self.updating or not collective:
            if self.global_step != self.last_saved:
                self.log(
                    f"error at step {self.global_step + 1}: no checkpoint could be saved "
                    f"(last one: step {self.last_saved})"
                )
            return
        try:
            path = self.save(self.epoch, self.skip, rng=self.rng_at_step)
        except Exception as save_exc:  # the original error is the one to report
            self.log(f"error at step {self.global_step + 1}; saving a checkpoint failed too ({save_exc})")
            return
        if path:
            self.runlog.write(
                f"error at step {self.global_step + 1}: saved {path} first; fix the cause and continue "
                "with the same command plus --resume"
            )

    def train(self) -> int:
        """Train; returns the process exit code (0 done, 128+signal when interrupted after saving)."""
        cfg, d = self.cfg, self.d
        self.resume()
        self.set_layout()
        self.runlog = RunLog(self.out, self.total, self.global_step, enabled=d.main)
        if d.main:
            record = _training_record(cfg, self.spec, self.n_train, d.world)
            (self.out / TRAINING_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
        self.last_saved = self.global_step
        self.updating = False
        self.rng_at_step: dict | None = None  # RNG state at the start of the step in progress
        self.t_start = time.perf_counter()
        try:
            interrupted = self._epochs()
        except Exception as exc:
            self._save_after_error(exc)
            raise
        finally:
            self.runlog.close()
            self.stop.restore()
        return self._finish(interrupted)

    def _finish(self, interrupted: int) -> int:
        d, out = self.d, self.out
        if d.world > 1:
            _check_ranks_agree(d, self.vlm, out)
        skipped = self.skipped
        if d.world > 1:
            total = torch.tensor([skipped], device=self.dev)
            dist.all_reduce(total)
            skipped = int(total.item())
        if skipped:
            self.log(f"skipped {skipped} sample(s) whose image could not be read (listed in {out / BAD_SAMPLES})")
        if interrupted:
            if d.main:
                name = signal.Signals(interrupted).name
                print(
                    f"{name}: stopped at step {self.global_step}/{self.total}; checkpoint saved in {out}. "
                    f"Continue with the same command plus --resume.",
                    flush=True,
                )
            _finish(d)
            return 128 + interrupted
        if d.main:
            stats = _run_stats(self.runlog.rows, self.dev, self.n_train, d.world, self.cfg)
            stats["skipped_samples"] = skipped
            stats["layout"] = {
                **self.layout.to_json(),
                "checkpointed_layers": self.plan.checkpointed_layers,
                "llm_layers": self.n_layers,
                "plan": self.plan.note,
            }
            (out / "run_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
            use_packed_attention(self.vlm, False)  # outputs carry the model's own attention implementation
            _write_outputs(self.cfg, out, self.vlm, self.peft_model, self.loaded, self.runlog)
        _finish(d)
        return 0


def run_training(cfg: TrainConfig) -> int:
    """Train; returns the process exit code (0 done, 128+signal when interrupted after saving)."""
    return Trainer(cfg).train()


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
    stats = {
        "steps": len(rows),
        "trainable_parameters": n_train,
        "world_size": world,
        "per_device_batch_size": cfg.per_device_batch_size,
        "gradient_acc": cfg.gradient_acc,
        "samples_per_step": cfg.per_device_batch_size * cfg.gradient_acc * world,
        "mean_step_time_s": sum(step_times) / len(step_times) if step_times else None,
        "mean_samples_per_s": (sum(float(r["samples_per_s"]) for r in timed) / len(timed)) if timed else None,
        "mean_tokens_per_s": _mean(timed, "tokens_per_s"),
        "first_step_time_s": float(rows[0]["step_time_s"]) if rows else None,
    }
    if dev.type == "cuda":
        stats["peak_gpu_memory_allocated_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
        stats["peak_gpu_memory_reserved_gib"] = torch.cuda.max_memory_reserved(dev) / 2**30
        stats["gpu"] = torch.cuda.get_device_name(dev)
    return stats


def _mean(rows: list[dict], key: str) -> float | None:
    values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return sum(values) / len(values) if values else None


def _finish(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def _training_record(cfg: TrainConfig, spec, n_train: int, world: int) -> dict:
    return {
        "base_model": str(Path(cfg.model).resolve()),
        "data": cfg.data,
        "trainable_parameters": n_train,
        "world_size": world,
        "config": cfg.to_json(),
        "spec": spec.to_json(),
        "lora_targets": "split q/k/v/o/gate/up/down (peft); upstream fused wqkv differs, see finetune/model.py",
    }


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
