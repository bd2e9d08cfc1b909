"""The packed layout learns what the padded one does: same loss sequence, same adapter, exact resume.

The padded layout is the reference (transformers' own forward over right-padded rows with an attention mask,
one micro-batch per forward, every layer checkpointed: the trainer as it was). The packed layout puts several
micro-batches end to end, runs attention per sample, skips autograd for the frozen vision tower and computes
the loss chunk by chunk. LoRA dropout is 0 where sequences are compared: dropout draws its masks in a
different order in the two layouts (same distribution, different draws).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.finetune.conftest import train_args

COMMON = ("--batch-size", "4", "--per-device-batch-size", "2", "--learning-rate", "1e-3", "--max-steps", "4")
PADDED = ("--no-packing", "--gradient-checkpointing", "on")


def _losses(run: Path) -> list[float]:
    with open(run / "train_log.csv", newline="") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def _train(meta, model, out: Path, *extra: str) -> Path:
    from finetune.lora import main

    assert main(train_args(meta, model, out, *COMMON, *extra)) == 0
    return out


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory, tiny_checkpoint, mixed_data) -> Path:
    return _train(
        mixed_data, tiny_checkpoint, tmp_path_factory.mktemp("padded") / "run", "--lora-dropout", "0", *PADDED
    )


@pytest.mark.parametrize(
    "extra",
    [(), ("--forward-micro-batches", "1", "--gradient-checkpointing", "on")],
    ids=["two-micro-batches-per-forward", "one-per-forward-checkpointed"],
)
def test_packed_matches_padded(tmp_path, tiny_checkpoint, mixed_data, padded_run, extra, capsys):
    run = _train(mixed_data, tiny_checkpoint, tmp_path / "packed", "--lora-dropout", "0", *extra)
    assert "batch layout: packed" in capsys.readouterr().out
    ref, got = _losses(padded_run), _losses(run)
    assert len(got) == len(ref) == 4
    for a, b in zip(ref, got, strict=True):
        assert abs(a - b) <= 1e-5 * abs(a), (ref, got)
    a = load_file(str(padded_run / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)


def test_checkpointing_changes_nothing_with_dropout(tmp_path, tiny_checkpoint, mixed_data):
    """Recomputed layers replay the same dropout masks, so the checkpointed-layer choice is free."""
    off = _train(mixed_data, tiny_checkpoint, tmp_path / "off", "--gradient-checkpointing", "off")
    on = _train(mixed_data, tiny_checkpoint, tmp_path / "on", "--gradient-checkpointing", "on")
    assert _losses(on) == _losses(off)


def test_resume_keeps_the_checkpoints_layout(tmp_path, tiny_checkpoint, mixed_data, padded_run, capsys):
    """A run written in the padded layout continues padded (dropout order), even under the packed default."""
    import shutil

    from finetune.lora import main

    run = tmp_path / "run"
    args = train_args(mixed_data, tiny_checkpoint, run, *COMMON, "--lora-dropout", "0", "--save-total-limit", "4")
    args[args.index("--save-steps") + 1] = "1"
    assert main([*args, *PADDED]) == 0
    for name in ("checkpoint-3", "checkpoint-4"):  # as if stopped after step 2
        shutil.rmtree(run / name)
    for name in ("adapter_model.safetensors", "adapter_config.json", "run_stats.json"):
        (run / name).unlink()
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out
    assert "resuming with the checkpoint's batch layout" in out and "batch layout: padded" in out
    assert _losses(run) == _losses(padded_run)
    a = load_file(str(padded_run / "adapter_model.safetensors"))
    b = load_file(str(run / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _packed_batch(tiny_checkpoint, mixed_data, n: int):
    from finetune.batching import pack
    from finetune.data import check_data
    from finetune.preprocess import build_example
    from ivl_ros.model.spec import load_spec

    _, spec, tok = load_spec(tiny_checkpoint)
    samples = check_data(mixed_data).samples[:n]
    examples = [build_example(s, tok, spec, 6, 4096, random.Random(0)) for s in samples]
    return examples, pack


def test_attention_stays_inside_each_sample(tiny_checkpoint, mixed_data):
    """Per-sample attention equals transformers' own packed-sequence attention (a block-causal mask built from
    position ids that restart at 0), and the loss of samples packed together equals their losses alone; one
    segment over the whole row (the second sample sees the first) changes it."""
    from finetune.model import CausalLoss, load_for_training, use_packed_attention

    examples, pack = _packed_batch(tiny_checkpoint, mixed_data, 2)
    vlm = load_for_training(str(tiny_checkpoint), "cpu", "float32", "sdpa").model
    loss_module = CausalLoss(vlm)

    def loss(batch, segments=None) -> float:
        keys = ("input_ids", "position_ids", "targets", "weights", "pixel_values")
        with torch.no_grad():
            return float(loss_module(**{k: batch[k] for k in keys}, segments=segments or batch["segments"]))

    # weights 1/(2 n_m): each sample its own micro-batch of a 2-micro-batch step, packed or alone
    together = pack([[examples[0]], [examples[1]]], 2)
    use_packed_attention(vlm, True)
    both = loss(together)
    alone = loss(pack([[examples[0]]], 2)) + loss(pack([[examples[1]]], 2))
    leaky = loss(together, segments=((0, together["input_ids"].shape[1]),))
    use_packed_attention(vlm, False)  # transformers' sdpa path: the mask from the restarting position ids
    library = loss(together)
    assert abs(both - alone) <= 1e-5 * abs(alone)
    assert abs(both - library) <= 1e-5 * abs(library)
    assert abs(leaky - both) > 1e-4 * abs(both)


@pytest.mark.parametrize("weight_trains", [False, True])
def test_chunked_cross_entropy_matches_torch(weight_trains):
    from finetune.model import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(11, 16, generator=gen, requires_grad=True)
    weight = torch.randn(37, 16, generator=gen, requires_grad=weight_trains)
    targets = torch.randint(0, 37, (11,), generator=gen)
    weights = torch.rand(11, generator=gen)
    got = linear_cross_entropy(hidden, weight, targets, weights, chunk=3)  # 4 chunks, the last one short
    got.backward()
    # reference: float64 torch cross entropy of the same values
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = (F.cross_entropy(h64 @ w64.t(), targets, reduction="none") * weights.double()).sum()
    ref.backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-5, atol=1e-6)
    if weight_trains:
        torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-5, atol=1e-6)
    else:
        assert weight.grad is None


def test_pack_layout_and_weights(tiny_checkpoint, mixed_data):
    examples, pack = _packed_batch(tiny_checkpoint, mixed_data, 3)
    batch = pack([[examples[0], examples[1]], [examples[2]]], 2)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["segments"] == (
        (0, lengths[0]),
        (lengths[0], lengths[0] + lengths[1]),
        (lengths[0] + lengths[1], sum(lengths)),
    )
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    for (start, end), e in zip(batch["segments"], examples, strict=True):
        assert batch["targets"][start : end - 1].tolist() == e.labels[1:]  # next-token labels, inside the sample
        assert int(batch["targets"][end - 1]) == -100  # a sample's last token predicts nothing
    sup = [sum(t != -100 for t in e.labels[1:]) for e in examples]
    first = batch["weights"][: sum(lengths[:2])]
    assert torch.allclose(first[first != 0], torch.full_like(first[first != 0], 1 / (2 * (sup[0] + sup[1]))))
    assert abs(float(batch["weights"].sum()) - 1.0) < 1e-6  # 2 micro-batches, each mean / 2
    tiles = sum(e.pixel_values.shape[0] for e in examples if e.pixel_values is not None)
    assert (batch["pixel_values"].shape[0] if batch["pixel_values"] is not None else 0) == tiles


def test_forward_plan():
    from finetune.memory import GIB, choose_plan, even_split

    assert [even_split(4, m) for m in (1, 2, 3, 4, 9)] == [1, 2, 2, 4, 4]
    assert even_split(5, 2) == 2 and even_split(6, 4) == 3
    # 1 GiB per 1k tokens without checkpointing, a tenth with: one micro-batch of 8k tokens
    plan = choose_plan(40 * GIB, GIB / 1000, GIB / 10000, 0, 24, 8000, 4)
    assert (plan.micro_batches_per_forward, plan.checkpointed_layers) == (4, 0)  # 32 GiB fit
    plan = choose_plan(20 * GIB, GIB / 1000, GIB / 10000, 0, 24, 8000, 4)
    assert (plan.micro_batches_per_forward, plan.checkpointed_layers) == (2, 0)  # 2 x 8 GiB, split 2 + 2
    plan = choose_plan(6 * GIB, GIB / 1000, GIB / 10000, 0, 24, 8000, 4)
    # 8 - c * 0.3 <= 6 (GiB per micro-batch): c = 7 layers; then 2 micro-batches would need 11.8 GiB
    assert (plan.micro_batches_per_forward, plan.checkpointed_layers) == (1, 7)
    plan = choose_plan(0.5 * GIB, GIB / 1000, GIB / 10000, 0, 24, 8000, 4)
    assert (plan.micro_batches_per_forward, plan.checkpointed_layers) == (1, 24) and "may not fit" in plan.note
